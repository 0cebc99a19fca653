// Block-wise 8-bit optimizer state (Dettmers et al., "8-bit Optimizers via Block-wise
// Quantization", ICLR 2022): a state tensor is stored as one uint8 code per element and
// one float32 scale per block (the block's largest magnitude); the value of an element
// is map[code] * scale, with the signed (exp_avg) or unsigned (exp_avg_sq) dynamic map.
//
// Rounding to the nearest code is *defined* by nearest_code_reference (torchao's
// branchless binary search and its float32 rounding test, tie to the upper code). The
// kernels find the same code without a search or a large table: an affine estimate from
// |x| that is the code or one short of it, then one exact compare with the threshold of
// the next code (AVX-512 VBMI: Quant8Words, on 16-bit words; AVX-512 without VBMI:
// Quant8Search, on floats); AVX2 and baseline with Quant8Table (a bucket lookup, then one
// compare). fastlr._C.quant8_check compares them over every float32
// (tools/check_quant8_exact.py).
#pragma once
#include <algorithm>
#include <cmath>
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

// The nearest-code search of one map. k counts codes away from the zero code z (signed
// map: z = 127, x > 0 has code z + k, x < 0 code z - k; unsigned map: z = 0, x <= 0 has
// code 0). The dynamic map is, per decade, codes evenly spaced in value, so within a
// decade ("piece") k is affine in |x|. For a = |x| clamped to [2^-31, 1]:
//   piece d      = pieces starting below a's octave + (a >= the boundary inside it);
//   estimate k   = min(trunc(a * slope[d] - offset[d]), cap[d]);
//   code         = the next code away from z if a >= thr[next code], else the estimate's.
// The offsets carry a bias of 1/16 code and the piece boundaries one of 2^-12 relative,
// so the estimate is never above the exact k and at most one below it (the constructor
// builds everything from the reference; tools/ prove it over every float).
// All tables but thr fit in a few vector registers; thr (256 floats) is looked up as byte
// planes with AVX-512 VBMI or gathered from L1. At most 16 pieces (one zmm permute).
struct Quant8Search {
  // a's octave: its biased exponent (96 .. 127) mod 32, which a vector permute takes as is
  static constexpr float kTiny = 0x1p-31f;
  const float* map = nullptr;
  bool is_signed = false;
  int zero = 0;
  alignas(64) float thr[256];           // smallest |x| (of the code's side) with that code
  alignas(64) float octave_bound[32];   // the piece boundary inside the octave, or +inf
  alignas(64) int32_t octave_piece[32]; // pieces whose boundary lies below the octave
  alignas(64) float slope[16];
  alignas(64) float offset[16];
  alignas(64) int32_t cap[16];          // the piece's last k

  Quant8Search(const float* m, bool signed_map) : map(m), is_signed(signed_map) {
    zero = static_cast<int>(std::find(m, m + 256, 0.0f) - m);
    if (zero == 256 || zero != (signed_map ? 127 : 0)) throw std::logic_error("quant8: unexpected map");
    // thr[c]: smallest magnitude (bit pattern) whose code, with c's sign, is c or beyond
    constexpr uint32_t kInf = 0x7F800000u;
    for (int c = 0; c < 256; ++c) {
      if (c == zero) {
        thr[c] = float_of(kInf);
        continue;
      }
      const uint32_t sign = c < zero ? 0x80000000u : 0u;
      auto reached = [&](uint32_t mag) {
        const int code = nearest_code_reference(float_of(mag | sign), m);
        return sign ? code <= c : code >= c;
      };
      uint32_t lo = 0, hi = kInf;  // reached(hi), not reached(lo)
      if (reached(lo) || !reached(hi)) throw std::logic_error("quant8: map not monotone");
      while (hi - lo > 1) {
        const uint32_t mid = lo + (hi - lo) / 2;
        (reached(mid) ? hi : lo) = mid;
      }
      thr[c] = float_of(hi);
    }
    // pieces: 0 below the first code; then one per decade of the positive codes but the
    // last (1.0, reached only by the compare past the top decade's last code)
    std::fill(slope, slope + 16, 0.0f);
    std::fill(offset, offset + 16, -0.5f);  // one-code pieces: trunc(0.5 + base) = base
    std::fill(cap, cap + 16, 0);
    float piece_bound[16];  // where piece d >= 1 starts (biased)
    int pieces = 1;
    const int kmax = 255 - zero;  // the positive side's last k (code 255: 1.0)
    for (int k = 1; k < kmax;) {
      const int decade = static_cast<int>(std::floor(std::log10(static_cast<double>(m[zero + k]))));
      int n = 1;
      while (k + n < kmax && std::floor(std::log10(static_cast<double>(m[zero + k + n]))) == decade) ++n;
      if (pieces == 16) throw std::logic_error("quant8: too many decades");
      const int d = pieces++;
      cap[d] = k + n - 1;
      offset[d] = static_cast<float>(-0.5 - k);
      // where the piece starts: its first code's threshold, on either side, biased up
      double start = thr[zero + k];
      if (is_signed) start = std::max(start, static_cast<double>(thr[zero - k]));
      piece_bound[d] = static_cast<float>(start * (1.0 + 1.0 / 4096));
      if (n > 1) {
        // k = trunc((a - first in-decade threshold) / spacing + 1 - 1/16 + k of the piece's
        // first code): >= that k at the piece's start, where the position is 0.2 or more
        const double h = (static_cast<double>(m[zero + k + n - 1]) - m[zero + k]) / (n - 1);
        slope[d] = static_cast<float>(1.0 / h);
        offset[d] = static_cast<float>(thr[zero + k + 1] / h - 1.0 + 1.0 / 16 - k);
      }
      k += n;
    }
    for (int o = 0; o < 32; ++o) {
      const double lo = std::ldexp(1.0, o - 31), hi = std::ldexp(1.0, o - 30);
      octave_piece[o] = 0;
      octave_bound[o] = float_of(kInf);
      for (int d = 1; d < pieces; ++d) {
        if (piece_bound[d] <= lo) {
          octave_piece[o] = d;
        } else if (piece_bound[d] < hi) {
          if (octave_bound[o] != float_of(kInf)) throw std::logic_error("quant8: two pieces start in one octave");
          octave_bound[o] = piece_bound[d];
        }
      }
    }
  }

  // The scalar form of the vector kernels' search (same tables, same steps).
  uint8_t code(float x) const {
    if (x != x) return 0;  // NaN, as the reference
    const bool neg = is_signed && (bits_of(x) >> 31);
    float a = is_signed ? std::fabs(x) : x;
    a = std::min(a > kTiny ? a : kTiny, 1.0f);
    const int o = static_cast<int>(bits_of(a) >> 23) & 31;
    const int d = octave_piece[o] + (a >= octave_bound[o] ? 1 : 0);
    int k = std::min(static_cast<int>(a * slope[d] - offset[d]), cap[d]);
    if (neg) k = std::min(k, zero - 1);  // the negative side has no -1.0
    const int est = neg ? zero - k : zero + k;
    const int next = neg ? est - 1 : est + 1;
    return static_cast<uint8_t>(a >= thr[next] ? next : est);
  }
};

inline const Quant8Search& signed_search() {
  static const Quant8Search t(kSignedMap, true);
  return t;
}
inline const Quant8Search& unsigned_search() {
  static const Quant8Search t(kUnsignedMap, false);
  return t;
}

// The AVX-512 VBMI search, on 16-bit words: w = the top half of x's bits (sign, exponent,
// 7 mantissa bits), its magnitude clamped to [2^-31, 1]. Every such bucket of floats holds
// at most one step of the map's codes (checked), so a line per octave (two where a decade
// of the map starts inside it) gives, from the bucket alone, k = floor(y / 256) with
// y = A + B·w (16-bit integer arithmetic) that is the code's distance from the zero code,
// or one short of it; then one exact compare with the next code's threshold. k must be the
// code at the bucket's start where the step lies inside the bucket, else that code or one
// less: the constructor finds integer lines meeting these constraints, bucket by bucket,
// from the reference, on both signs (the same line serves both), or throws.
// 32 lanes per instruction instead of Quant8Search's 16, and no float arithmetic.
struct Quant8Words {
  static constexpr uint16_t kLowWord = 0x3000;   // 2^-31
  static constexpr uint16_t kHighWord = 0x3F80;  // 1.0
  int zero = 0;
  alignas(64) uint16_t split[32];     // per octave (w >> 7 mod 32): w > split uses the upper line
  alignas(64) uint16_t lower_a[32], lower_b[32], upper_a[32], upper_b[32];
  alignas(64) uint32_t thr_bits[256];  // thr of Quant8Search with the code's sign: compared as bits

  explicit Quant8Words(const Quant8Search& s) : zero(s.zero) {
    const bool is_signed = s.is_signed;
    for (int c = 0; c < 256; ++c)
      thr_bits[c] = bits_of(s.thr[c]) | ((is_signed && c < zero) ? 0x80000000u : 0u);
    const int kmax = 255 - zero - 1;  // largest estimate on the positive side (next <= 255)
    // allowed [lo, hi] of k per bucket (index: w - kLowWord)
    constexpr int kBuckets = kHighWord - kLowWord + 1;
    int lo[kBuckets], hi[kBuckets];
    for (int b = 0; b < kBuckets; ++b) {
      lo[b] = 0;
      hi[b] = kmax;
      for (int side = 0; side < (is_signed ? 2 : 1); ++side) {
        const uint32_t sign = side ? 0x80000000u : 0u;
        auto k_of = [&](uint32_t mag) {
          const int c = nearest_code_reference(float_of(mag | sign), s.map);
          return side ? zero - c : c - zero;
        };
        const uint32_t start = b == 0 ? 0u : static_cast<uint32_t>(kLowWord + b) << 16;
        const uint32_t end = b == kBuckets - 1 ? 0x7F800000u : ((static_cast<uint32_t>(kLowWord + b) << 16) | 0xFFFFu);
        const int ks = k_of(start), ke = k_of(end);
        if (ke < ks || ke > ks + 1) throw std::logic_error("quant8: two code steps in one 16-bit bucket");
        // the negative side's estimate is capped at zero - 1 afterwards (no code beyond 0)
        const bool capped = side && ke == zero;
        lo[b] = std::max(lo[b], ke > ks ? ks : std::max(ks - 1, 0));
        if (!capped) hi[b] = std::min(hi[b], ks);
      }
      if (lo[b] > hi[b]) throw std::logic_error("quant8: no estimate fits a 16-bit bucket");
    }
    for (int o = 0; o < 32; ++o) {
      const int first = std::max<int>(kLowWord, (96 + o) << 7), last = std::min<int>(kHighWord, ((96 + o) << 7) + 127);
      split[o] = 0x7FFF;
      if (fit(lo, hi, first, last, lower_a[o], lower_b[o])) {
        upper_a[o] = lower_a[o];
        upper_b[o] = lower_b[o];
        continue;
      }
      bool found = false;
      for (int w = first; w < last && !found; ++w)
        if (fit(lo, hi, first, w, lower_a[o], lower_b[o]) && fit(lo, hi, w + 1, last, upper_a[o], upper_b[o])) {
          split[o] = static_cast<uint16_t>(w);
          found = true;
        }
      if (!found) throw std::logic_error("quant8: no pair of lines fits an octave");
    }
  }

  // An integer line y = A + B·w (mod 2^16, exact over [first, last]) with floor(y / 256)
  // in [lo, hi] on every bucket of [first, last]; the one with the most slack.
  static bool fit(const int* lo, const int* hi, int first, int last, uint16_t& a_out, uint16_t& b_out) {
    int best = -1;
    for (int b = 0; b <= 1024; ++b) {
      int64_t amin = INT64_MIN, amax = INT64_MAX;
      for (int w = first; w <= last && amin <= amax; ++w) {
        const int i = w - kLowWord;
        amin = std::max<int64_t>(amin, 256 * int64_t(lo[i]) - int64_t(b) * (w - first));
        amax = std::min<int64_t>(amax, 256 * int64_t(hi[i]) + 255 - int64_t(b) * (w - first));
      }
      if (amin < 0) amin = 0;
      if (amin > amax || amax - amin <= best) continue;
      best = static_cast<int>(amax - amin);
      const int64_t a = amin + (amax - amin) / 2;  // y at w = first
      // y = a + b·(w − first) = (a − b·first) + b·w, folded mod 2^16
      a_out = static_cast<uint16_t>(static_cast<uint32_t>(a - int64_t(b) * first));
      b_out = static_cast<uint16_t>(b);
    }
    return best >= 0;
  }
};

inline const Quant8Words& signed_words() {
  static const Quant8Words t(signed_search());
  return t;
}
inline const Quant8Words& unsigned_words() {
  static const Quant8Words t(unsigned_search());
  return t;
}

// The AVX2 and baseline levels' search: bucket tables of one map. On those levels one
// gather from these 40 KB and one compare beat Quant8Search's ~45 operations and 1 KB
// gather (Zen 4, AVX2, GPT-2-small AdamW 8-bit step: 2.95 vs 3.51 ns/el).
// Magnitudes |x| (as bits) are clamped to [kLow, kHigh]: no step
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
