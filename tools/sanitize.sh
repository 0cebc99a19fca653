#!/usr/bin/env bash
# Builds fastlr._C with AddressSanitizer + UndefinedBehaviorSanitizer into
# .build/sanitize/ (the in-place build is left alone) and runs the kernel tests against
# that build. Any ASan/UBSan report aborts the run with a non-zero exit status.
#
#   tools/sanitize.sh                 # the default test set below
#   tools/sanitize.sh tests/test_fuzz.py -x    # any pytest arguments instead
#   PYTHON=.venv/bin/python tools/sanitize.sh  # pick the interpreter (default: python3)
#   FASTLR_SANITIZE_REUSE=1 tools/sanitize.sh  # reuse the last sanitized build
#
# How it works: a Python interpreter is not built with ASan, so the ASan runtime must
# be the first library loaded: LD_PRELOAD=$(c++ -print-file-name=libasan.so), followed
# by libstdc++ (see below). Leak
# detection is off (CPython keeps its objects alive at exit by design); UBSan is made
# fatal (-fno-sanitize-recover=all) and includes float-cast-overflow, which
# -fsanitize=undefined leaves out in gcc. The package's Python files are copied next to
# the sanitized extension in .build/sanitize/pkg, which pytest gets first on sys.path so
# that `import fastlr` finds that copy; the script checks it did.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
CXX="${CXX:-c++}"
OUT="$ROOT/.build/sanitize"
SAN="-fsanitize=address,undefined,float-cast-overflow -fno-sanitize-recover=all -fno-omit-frame-pointer -g"

LIBASAN="$("$CXX" -print-file-name=libasan.so)"
if [ ! -e "$LIBASAN" ]; then
  echo "sanitize.sh: $CXX has no libasan.so (install the compiler's ASan runtime)" >&2
  exit 2
fi

# setup.py needs pybind11 and setuptools in this interpreter (the README's venvs install
# them only in pip's isolated build environment).
if ! "$PY" -c "import pybind11, setuptools" 2>/dev/null; then
  echo "== installing pybind11 and setuptools into $("$PY" -c 'import sys; print(sys.prefix)')"
  "$PY" -m pip install -q "pybind11>=2.12" "setuptools>=77"
fi

if [ "${FASTLR_SANITIZE_REUSE:-0}" != "1" ] || [ ! -d "$OUT/lib" ]; then
  echo "== building fastlr._C with ASan+UBSan into $OUT (about 2 minutes)"
  rm -rf "$OUT/lib" "$OUT/tmp"
  mkdir -p "$OUT"
  # Recent setuptools compile C++ with CXXFLAGS, older ones with CFLAGS; LDFLAGS reaches
  # the link. The build lock is the team's (in-place builds share the CPU and setup.py).
  env -u FASTLR_CUDA CFLAGS="$SAN" CXXFLAGS="$SAN" LDFLAGS="$SAN" \
    flock /tmp/fastlr-build.lock "$PY" setup.py -q build_ext --build-lib "$OUT/lib" --build-temp "$OUT/tmp"
fi
rm -rf "$OUT/pkg"

mkdir -p "$OUT/pkg"
cp -r fastlr "$OUT/pkg/"
find "$OUT/pkg/fastlr" \( -name '*.so' -o -name '__pycache__' \) -prune -exec rm -rf {} +
cp "$OUT"/lib/fastlr/_C*.so "$OUT/pkg/fastlr/"
for obj in "$OUT"/tmp/csrc/kernels.o "$OUT"/tmp/csrc/bindings.o; do
  if [ "$(nm "$obj" | grep -c -e __asan_report -e __ubsan_handle)" -eq 0 ]; then
    echo "sanitize.sh: $obj is not instrumented" >&2
    exit 2
  fi
done

if [ "$#" -eq 0 ]; then
  # Every test that drives the kernels: NumPy kernels vs the reference and torch, bad
  # input, fuzzing, non-finite values, threads, fork, fastlr.numpy and fastlr.optim,
  # checkpoints. (test_memory.py preloads its own malloc counter: not under ASan.)
  set -- "$ROOT/tests/test_kernels.py" "$ROOT/tests/test_bad_input.py" "$ROOT/tests/test_fuzz.py" \
    "$ROOT/tests/test_nonfinite.py" "$ROOT/tests/test_threads.py" "$ROOT/tests/test_fork.py" \
    "$ROOT/tests/test_numpy_optim.py" "$ROOT/tests/test_optim.py" \
    "$ROOT/tests/test_checkpoint_errors.py" -q -p no:cacheprovider
fi

echo "== running pytest $* under ASan+UBSan"
# libstdc++ right after libasan: ASan's __cxa_throw interceptor resolves the real one at
# start-up, and python itself does not load libstdc++ (else the first C++ exception,
# e.g. a ValueError raised by the bindings, dies in "CHECK failed ... real___cxa_throw").
LIBSTDCXX="$("$CXX" -print-file-name=libstdc++.so)"
export LD_PRELOAD="$LIBASAN:$LIBSTDCXX${LD_PRELOAD:+:$LD_PRELOAD}"
# Reports go to files as well: pytest captures fd 2, and a sanitizer exits at once.
LOGS="$OUT/reports"
rm -rf "$LOGS"
mkdir -p "$LOGS"
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:exitcode=86:log_path=$LOGS/asan${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:exitcode=87:log_path=$LOGS/ubsan${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
report() {
  status=$?
  if compgen -G "$LOGS/*" >/dev/null; then
    echo "== sanitizer reports ($LOGS):" >&2
    cat "$LOGS"/* >&2
    [ "$status" -eq 0 ] && status=1
  elif [ "$status" -eq 0 ]; then
    echo "== no sanitizer reports"
  fi
  exit "$status"
}
trap report EXIT
# sys.path[0] is the sanitized copy, ahead of the checkout (the current directory).
"$PY" -c "
import sys
sys.path.insert(0, '$OUT/pkg')
import fastlr
if not fastlr._C.__file__.startswith('$OUT/pkg'):
    sys.exit('fastlr._C came from ' + fastlr._C.__file__)
import pytest
sys.exit(pytest.main(sys.argv[1:]))
" "$@"
