// Block-wise 8-bit optimizer state (Dettmers et al., "8-bit Optimizers via Block-wise
// Quantization", ICLR 2022): a state tensor is stored as one uint8 code per element and
// one float32 scale per block (the block's largest magnitude); the value of an element
// is map[code] * scale, with the signed (exp_avg) or unsigned (exp_avg_sq) dynamic map.
//
// Rounding to the nearest code is *defined* by nearest_code_reference (torchao's
// branchless binary search and its float32 rounding test, tie to the upper code). The
// kernels use an equivalent that vectorizes: the code of x is a monotone step function of
// x with 255 steps, so with the floats split into buckets by sign, exponent and top
// mantissa bits (a few thousand buckets, each holding at most one step), the code is the
// bucket's code at its start, plus or minus one where x passes the bucket's step: one
// table lookup and one compare. Quant8Table builds the buckets from the reference itself,
// and fastlr._C.quant8_check compares the two over every float32 (tools/).
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

#include "fastlr/quant8_maps.hpp"

namespace fastlr {
namespace quant8 {

// torchao's quantize_8bit_with_qmap for one float: largest code with map[code] <= x by a
// branchless binary search, then the upper neighbour when x - lo >= (hi - lo) * 0.5 (all in
// float32). NaN gives code 0.
inline uint8_t nearest_code_reference(float x, const float* map) {
  int c = (x >= map[128]) ? 128 : 0;
  for (int s = 64; s >= 1; s >>= 1) c += (x >= map[c + s]) ? s : 0;
  const int up = std::min(c + 1, 255);
  const float lo = map[c], hi = map[up];
  return static_cast<uint8_t>((x - lo >= (hi - lo) * 0.5f) ? up : c);
}

inline uint32_t bits_of(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
}
inline float float_of(uint32_t u) {
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}

// Bucket tables of one map. Magnitudes |x| (as bits) are clamped to [kLow, kHigh]: no step
// lies below 2^-26 (the smallest codes are ~3e-7) and every |x| >= 1 rounds like 1.
// Bucket of |x|: (clamped bits - kLow) >> shift; entry = code at the bucket's smallest
// magnitude (bits 0-7) | magnitude offset of the step inside the bucket (bits 8-31;
// 1 << shift when there is none). Across the step the code moves by +1 for x > 0 and by
// -1 for x < 0. NaN is handled apart (code 0, as the reference).
struct Quant8Table {
  static constexpr uint32_t kLow = 101u << 23;   // 2^-26
  static constexpr uint32_t kHigh = 127u << 23;  // 1.0
  int shift = 0;
  int buckets = 0;          // per sign, including the last one (|x| >= 1)
  const float* map = nullptr;
  alignas(64) uint32_t entry[2][(((kHigh - kLow) >> 16) + 1)];  // [sign][bucket], shift >= 16

  Quant8Table(const float* m, int shift_bits) : shift(shift_bits), map(m) {
    buckets = static_cast<int>((kHigh - kLow) >> shift) + 1;
    const uint32_t width = 1u << shift;
    for (int sign = 0; sign < 2; ++sign) {
      const uint32_t sbit = sign ? 0x80000000u : 0u;
      auto code_at = [&](uint32_t mag) { return nearest_code_reference(float_of(mag | sbit), map); };
      if (code_at(0) != code_at(kLow))
        throw std::logic_error("quant8: a code step below 2^-26");
      for (int b = 0; b < buckets; ++b) {
        const uint32_t start = kLow + (static_cast<uint32_t>(b) << shift);
        const uint32_t last = (b == buckets - 1) ? start : start + width - 1;
        const int base = code_at(start), end = code_at(last);
        uint32_t step = width;
        if (end != base) {
          if (end != base + (sign ? -1 : 1))
            throw std::logic_error("quant8: two code steps in one bucket (shift too large)");
          uint32_t lo = start, hi = last;  // code_at(lo) == base, code_at(hi) != base
          while (hi - lo > 1) {
            const uint32_t mid = lo + (hi - lo) / 2;
            (code_at(mid) == base ? lo : hi) = mid;
          }
          step = hi - start;
        }
        entry[sign][b] = static_cast<uint32_t>(base) | (step << 8);
      }
    }
  }

  // The scalar form of the vector kernels' search (same table, same arithmetic).
  uint8_t code(float x) const {
    const uint32_t u = bits_of(x);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return 0;  // NaN
    const uint32_t mag = std::min(std::max(u & 0x7FFFFFFFu, kLow), kHigh) - kLow;
    const uint32_t e = entry[u >> 31][mag >> shift];
    const bool past = (mag & ((1u << shift) - 1)) >= (e >> 8);
    return static_cast<uint8_t>((e & 0xFF) + (past ? ((u >> 31) ? -1 : 1) : 0));
  }
};

// Mantissa bits per bucket: 7 for the unsigned map (128 codes in [0.1, 1], steps 0.007
// apart), 6 for the signed one (64 per sign); the tables then hold one step at most.
inline const Quant8Table& signed_table() {
  static const Quant8Table t(kSignedMap, 17);
  return t;
}
inline const Quant8Table& unsigned_table() {
  static const Quant8Table t(kUnsignedMap, 16);
  return t;
}

}  // namespace quant8
}  // namespace fastlr
