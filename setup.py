"""Builds fastlr._C: the header-only core in csrc/fastlr, the leaf kernels (one file per
optimizer and CPU level, compiled in parallel), the dispatcher and the pybind11 bindings.
No torch at build time. FASTLR_CUDA=1 also builds fastlr._C_cuda."""
import glob
import os
import re
import sys

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))
VERSION = re.search(
    r'__version__ = "([^"]+)"', open(os.path.join(HERE, "fastlr", "_version.py")).read()
).group(1)


def _leaf_cost(path):
    name = os.path.basename(path)
    return (-("avx512" in name), -("rmsprop" in name or "sgd" in name), name)


def cpu_extension():
    # No -march=native and no -ffast-math: the wheel must run on any x86-64 (per-level
    # kernels carry their own target attributes). -fno-math-errno lets gcc vectorize
    # sqrt; -ffp-contract=off keeps every CPU level bit-identical (see update.hpp).
    # vect-epilogues-nomask=0: the last < 1 vector of a tensor runs scalar rather than in a
    # second, narrower vector loop; it was a third of every leaf's code, for a few elements.
    compile_args = ["-O3", "-fno-math-errno", "-ffp-contract=off", "-fvisibility=hidden",
                    "--param", "vect-epilogues-nomask=0"]
    link_args = []
    if sys.platform != "darwin" and os.environ.get("FASTLR_OPENMP", "1") != "0":
        compile_args.append("-fopenmp")
        link_args.append("-fopenmp")
    return Pybind11Extension(
        "fastlr._C",
        # the largest translation units first, so parallel jobs finish together
        # (quant8.cpp, with every 8-bit optimizer at three CPU levels, is the largest)
        sources=["csrc/quant8.cpp"] + sorted(glob.glob("csrc/kernels/*.cpp"), key=_leaf_cost)
        + ["csrc/schedulefree.cpp", "csrc/bindings.cpp", "csrc/bindings_schedulefree.cpp", "csrc/kernels.cpp", "csrc/roofline.cpp"],
        include_dirs=["csrc"],
        # headers, so that an in-place rebuild notices a changed rule or schedule
        depends=sorted(glob.glob("csrc/*.hpp") + glob.glob("csrc/fastlr/*.hpp")
                       + glob.glob("csrc/kernels/*.hpp")),
        define_macros=[("FASTLR_VERSION", f'"{VERSION}"')],
        extra_compile_args=compile_args,
        extra_link_args=link_args,
        cxx_std=17,
    )


# ----------------------------------------------------------------------- CUDA ---
# FASTLR_CUDA=1 with nvcc on PATH also builds fastlr._C_cuda: csrc/cuda/*.cu compiled
# by nvcc (one process per file, in parallel), linked with the static CUDA runtime and
# no libtorch. FASTLR_CUDA_ARCH picks the targets (default "80;90": A100, H100/H200).
CUDA_SOURCES = sorted(glob.glob("csrc/cuda/*.cu"))


def cuda_wanted():
    import shutil

    return os.environ.get("FASTLR_CUDA", "0") == "1" and shutil.which("nvcc") is not None


def cuda_extension():
    return Pybind11Extension(
        "fastlr._C_cuda",
        sources=["csrc/cuda/bindings.cpp"],
        include_dirs=["csrc"],
        depends=CUDA_SOURCES + glob.glob("csrc/cuda/*.h*") + glob.glob("csrc/fastlr/*.hpp"),
        define_macros=[("FASTLR_VERSION", f'"{VERSION}"')],
        extra_compile_args=["-O2", "-fvisibility=hidden"],
        cxx_std=17,
    )


class build_ext_cuda(build_ext):
    def build_extension(self, ext):
        if ext.name == "fastlr._C_cuda":
            self._compile_cuda(ext)
        super().build_extension(ext)

    def _compile_cuda(self, ext):
        import subprocess
        from concurrent.futures import ThreadPoolExecutor

        archs = [a for a in os.environ.get("FASTLR_CUDA_ARCH", "80;90").replace(",", ";").split(";") if a]
        gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
        # -fmad=false: the CPU kernels' operation order (update.hpp; no FMA contraction).
        flags = ["-std=c++17", "-O3", "-fmad=false", "-Icsrc", "-Xcompiler", "-fPIC,-fvisibility=hidden"]
        out_dir = os.path.join(self.build_temp, "cuda")
        os.makedirs(out_dir, exist_ok=True)
        objects = [os.path.join(out_dir, os.path.basename(s) + ".o") for s in CUDA_SOURCES]
        cmds = [["nvcc", *flags, *gencode, "-c", s, "-o", o] for s, o in zip(CUDA_SOURCES, objects)]
        with ThreadPoolExecutor(max_workers=max(os.cpu_count() or 1, 1)) as pool:
            for cmd, rc in zip(cmds, pool.map(lambda c: subprocess.call(c), cmds)):
                if rc != 0:
                    raise RuntimeError("nvcc failed: " + " ".join(cmd))
        dryrun = subprocess.run(["nvcc", "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
                                capture_output=True, text=True).stderr
        lib_dirs = [d for d in re.findall(r'-L"?([^" ]+)"?', dryrun) if not d.rstrip("/").endswith("stubs")]
        ext.extra_objects = objects
        ext.library_dirs = lib_dirs
        ext.libraries = ["cudart_static", "dl", "rt", "pthread"]
        ext.define_macros.append(("FASTLR_CUDA_ARCHS", '"' + ";".join(archs) + '"'))


# Compile the translation units of an extension in parallel (FASTLR_BUILD_JOBS, default:
# every core); setuptools would compile them one after the other.
ParallelCompile("FASTLR_BUILD_JOBS", default=0).install()

# FASTLR_CUDA_ONLY=1 builds fastlr._C_cuda alone (CI's compile-only check of the CUDA
# kernels, which would otherwise compile the CPU kernels a second time)
ext_modules = [] if os.environ.get("FASTLR_CUDA_ONLY") == "1" else [cpu_extension()]
if cuda_wanted():
    ext_modules.append(cuda_extension())

# Build outputs go to .build/, not build/: a build/ folder in the checkout would be
# imported by `python -m build` in place of the build package (a namespace package).
setup(version=VERSION, ext_modules=ext_modules, cmdclass={"build_ext": build_ext_cuda},
      options={"build": {"build_base": ".build"}})
