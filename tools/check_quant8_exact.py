"""Proves that the 8-bit kernels' nearest-code search is exact: for every float32 bit
pattern in the chosen range, the code found by the kernels (an affine estimate per decade
of the map, then one compare with the next code's threshold) equals the code of the
reference search (torchao's binary search with its float32 rounding test), for both
dynamic maps and each CPU level this machine supports.

    python tools/check_quant8_exact.py            # every float in [-1, 1] (2,130,706,434)
    python tools/check_quant8_exact.py --all      # all 2**32 bit patterns (NaNs, infs, |x| > 1)

Prints one line per (map, level) with the number of mismatches; exits 1 on any.
"""
import argparse
import sys
import time

from fastlr import _C

LEVELS = {"baseline": 0, "avx2": 1, "avx512": 2}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--all", action="store_true", help="all 2**32 bit patterns")
    ap.add_argument("--levels", default=None, help="comma-separated (default: every supported level)")
    args = ap.parse_args()
    best = LEVELS[_C.detected_cpu_level()]
    levels = args.levels.split(",") if args.levels else [n for n, v in LEVELS.items() if v <= best]
    if args.all:
        ranges = [(0, 1 << 32)]
    else:  # [+0, 1.0] and [-0, -1.0] as bit patterns
        ranges = [(0, 0x3F800001), (0x80000000, 0xBF800001)]
    total = sum(hi - lo for lo, hi in ranges)
    bad_any = 0
    for signed in (True, False):
        for name in levels:
            t0 = time.time()
            bad = sum(_C.quant8_check(signed, LEVELS[name], lo, hi) for lo, hi in ranges)
            bad_any += bad
            print(f"{'signed' if signed else 'unsigned':8s} map, {name:8s}: {total:,} floats, "
                  f"{bad} mismatches ({time.time() - t0:.0f} s)", flush=True)
    sys.exit(1 if bad_any else 0)


if __name__ == "__main__":
    main()
