"""Builds fastlr._C: the header-only core in csrc/fastlr plus one kernel file and the
pybind11 bindings. No torch at build time. FASTLR_CUDA=1 also builds fastlr._C_cuda."""
import glob
import os
import re
import sys

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))
VERSION = re.search(
    r'__version__ = "([^"]+)"', open(os.path.join(HERE, "fastlr", "_version.py")).read()
).group(1)


def cpu_extension():
    # No -march=native and no -ffast-math: the wheel must run on any x86-64 (per-level
    # kernels carry their own target attributes). -fno-math-errno lets gcc vectorize
    # sqrt; -ffp-contract=off keeps every CPU level bit-identical (see update.hpp).
    compile_args = ["-O3", "-fno-math-errno", "-ffp-contract=off", "-fvisibility=hidden"]
    link_args = []
    if sys.platform != "darwin" and os.environ.get("FASTLR_OPENMP", "1") != "0":
        compile_args.append("-fopenmp")
        link_args.append("-fopenmp")
    return Pybind11Extension(
        "fastlr._C",
        sources=["csrc/bindings.cpp", "csrc/kernels.cpp", "csrc/roofline.cpp"],
        include_dirs=["csrc"],
        # headers, so that an in-place rebuild notices a changed rule or schedule
        depends=sorted(glob.glob("csrc/*.hpp") + glob.glob("csrc/fastlr/*.hpp")),
        define_macros=[("FASTLR_VERSION", f'"{VERSION}"')],
        extra_compile_args=compile_args,
        extra_link_args=link_args,
        cxx_std=17,
    )


ext_modules = [cpu_extension()]

setup(version=VERSION, ext_modules=ext_modules, cmdclass={"build_ext": build_ext})
