#!/usr/bin/env bash
# One device run: build fastlr with its CUDA kernels for sm_90, run the CUDA tests, then
# the host-overhead and GPU benchmarks. Logs go to $OUT (the device tool's return folder)
# or ./gpu-out.
set -uo pipefail
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi -L; python3 -c "import torch; print('torch', torch.__version__, torch.cuda.is_available())"
start=$(date +%s)
FASTLR_CUDA=1 FASTLR_CUDA_ARCH=${FASTLR_CUDA_ARCH:-90} timeout 300 python3 setup.py -q build_ext --inplace >"$OUT/build.log" 2>&1
echo "build rc=$? in $(( $(date +%s) - start )) s"; tail -5 "$OUT/build.log"
python3 -c "from fastlr import _cuda; print('cuda available:', _cuda.available())"
timeout ${TEST_TIMEOUT:-240} python3 -m pytest -q -p no:cacheprovider -o addopts="" -m "not slow" tests/test_cuda.py -rf --maxfail=40 >"$OUT/test_cuda.log" 2>&1
echo "tests rc=$?"; tail -45 "$OUT/test_cuda.log"
timeout 60 python3 bench/bench_cuda_host.py --reps 5 2>&1 | tee "$OUT/bench_cuda_host.txt"  # host side alone, ~10 s
timeout ${BENCH_TIMEOUT:-150} python3 bench/bench_gpu.py --reps 7 --json "$OUT/bench_gpu.json" 2>&1 | tee "$OUT/bench_gpu.txt"
echo "total $(( $(date +%s) - start )) s"
