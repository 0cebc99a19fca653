// Storage policies and rounding: how each role of an update (param, grad, state, master)
// is loaded and stored, and the reproducible random bits of stochastic rounding.
//
// Stochastic rounding (Zamirai et al., arXiv:2010.06192) rounds x up or down to a
// neighbouring 16-bit value with probabilities proportional to the distances, so the
// rounding is unbiased: E[round(x)] = x. Its bits are counter-based, a pure function of
// (seed, step, tensor id, element index): the result does not depend on the thread
// count, the chunking, the CPU level or the face (NumPy, torch) that calls the kernel.
//   per call:    call_key = splitmix64(seed ^ splitmix64(t))    (t = completed updates)
//   per tensor:  key = splitmix64(call_key ^ splitmix64(tensor_id))   (64 bits)
//   per element: h0 = lowbias32(idx ^ key.lo), h1 = lowbias32(idx ^ key.hi)
// Each stochastically rounded store of an element takes its own bits of h0 or h1 (its
// slot: the param's first, then the states'; see RandomBits), so one 32-bit hash serves
// up to three stores. Only 32-bit
// integer multiplies, shifts and xors: the loops stay vectorized at every CPU level.
// Tensors above 2^32 elements fold idx >> 32 into the key (see for_each_key_block).
#pragma once
#include <cstdint>
#include <type_traits>

#include "fastlr/dtype.hpp"
#include "fastlr/update.hpp"

namespace fastlr {

enum class Rounding : int { nearest = 0, stochastic = 1 };

FASTLR_RULE uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Chris Wellons' lowbias32: a 32-bit bijection with near-ideal avalanche.
FASTLR_RULE uint32_t lowbias32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7FEB352Du;
  x ^= x >> 15;
  x *= 0x846CA68Bu;
  x ^= x >> 16;
  return x;
}

inline uint64_t rounding_call_key(uint64_t seed, int64_t t) {
  return splitmix64(seed ^ splitmix64(static_cast<uint64_t>(t)));
}
FASTLR_RULE uint64_t rounding_tensor_key(uint64_t call_key, int64_t tensor_id) {
  return splitmix64(call_key ^ splitmix64(static_cast<uint64_t>(tensor_id)));
}
// Key of the block of elements [hi << 32, (hi + 1) << 32) of a tensor.
FASTLR_RULE uint64_t rounding_block_key(uint64_t tensor_key, uint64_t hi) {
  return hi == 0 ? tensor_key : splitmix64(tensor_key ^ splitmix64(hi));
}

// The random bits of one element for a leaf with SLOTS stochastically rounded stores
// (slots 0..SLOTS-1): 16 bits per slot from h0 (slots 0, 1) and h1 (slots 2, 3), except
// that three slots share h0 as 11 + 11 + 10 bits, placed at the top of the 16 bits the
// store adds below its kept bits: one hash per element instead of two (the SR leaves are
// compute-bound), and a rounding bias of at most 2^-10 ulp, far below what a test or a
// training run resolves. Slots a leaf does not use cost nothing (gcc drops h1).
template <Rounding R, int SLOTS>
struct RandomBits {
  uint32_t h0, h1;
  FASTLR_RULE RandomBits(uint64_t key, uint32_t idx)
      : h0(lowbias32(idx ^ static_cast<uint32_t>(key))),
        h1(SLOTS == 3 ? 0u : lowbias32(idx ^ static_cast<uint32_t>(key >> 32))) {}
  FASTLR_RULE uint32_t slot(int k) const {
    if (SLOTS == 3)
      return k == 0 ? (h0 << 5) & 0xFFE0u : k == 1 ? (h0 >> 6) & 0xFFE0u : (h0 >> 16) & 0xFFC0u;
    return ((k < 2 ? h0 : h1) >> (16 * (k & 1))) & 0xFFFFu;
  }
};
template <int SLOTS>
struct RandomBits<Rounding::nearest, SLOTS> {
  FASTLR_RULE RandomBits(uint64_t, uint32_t) {}
  FASTLR_RULE uint32_t slot(int) const { return 0; }
};

// ---------------------------------------------------------- 16-bit stores ---
// r: 16 uniform random bits. NaN stores torch's canonical NaN, +-inf stays +-inf;
// finite values beyond the largest finite 16-bit value round to inf with the
// probability of their distance, as the unbounded format would.

// bfloat16: adding r below the kept 16 bits and truncating rounds up with probability
// (dropped bits) / 2^16. The magnitude is rounded, so the sign needs no care.
FASTLR_RULE void store_stochastic(bf16& dst, float x, uint32_t r) {
  const uint32_t u = detail::float_bits(x);
  dst.bits = static_cast<uint16_t>(x != x ? 0x7FC0u : (u + r) >> 16);  // NaN test: see store
}

// float16, branchless like store(f16&, float). Normal range: 13 random bits added
// below the half's mantissa, then truncated (a carry may run into the exponent, up to
// inf). Subnormal range (|x| < 2^-14): the half's unit is 2^-24, so floor(|x|·2^24 + u)
// with u uniform in [0, 1).
FASTLR_RULE void store_stochastic(f16& dst, float x, uint32_t r) {
  using detail::bits_float;
  using detail::float_bits;
  const uint32_t u = float_bits(x);
  const int32_t a = static_cast<int32_t>(u & 0x7FFFFFFFu);
  const int32_t normal = (a - ((127 - 15) << 23) + static_cast<int32_t>(r >> 3)) >> 13;
  const int32_t subnormal = static_cast<int32_t>(
      bits_float(static_cast<uint32_t>(a)) * 16777216.0f +
      static_cast<float>(static_cast<int32_t>(r)) * (1.0f / 65536.0f));
  int32_t h = detail::select(a < (113 << 23), subnormal, normal);
  h = detail::select(a >= (143 << 23), 0x7C00 | (static_cast<int32_t>(a > 0x7F800000) << 9), h);
  dst.bits = static_cast<uint16_t>(static_cast<uint32_t>(h) | ((u >> 16) & 0x8000u));
}

// Double-precision updates (float64 params with 32- or 16-bit state) store through float.
FASTLR_RULE void store(float& dst, double x) { dst = static_cast<float>(x); }
FASTLR_RULE void store(bf16& dst, double x) { store(dst, static_cast<float>(x)); }
FASTLR_RULE void store_stochastic(bf16& dst, double x, uint32_t r) {
  store_stochastic(dst, static_cast<float>(x), r);
}

// Store with rounding mode R; 32/64-bit destinations always round to nearest.
template <Rounding R, class T, class C>
FASTLR_RULE void store_rounded(T& dst, C x, uint32_t r) {
  if constexpr (R == Rounding::stochastic && sizeof(T) == 2) {
    store_stochastic(dst, x, r);
  } else {
    (void)r;
    store(dst, x);
  }
}

// ------------------------------------------------------- storage policies ---
// One policy per leaf: the storage type of each role and the rounding of 16-bit
// stores. Master = NoMaster, or float: a float32 master copy is updated and the param
// (bfloat16/float16) is written as the master rounded to nearest; the param is not read.

struct NoMaster {};

template <class P, class G, class S, class M, Rounding R>
struct Storage {
  using Param = P;
  using Grad = G;
  using State = S;
  using Master = M;
  using C = compute_t<P>;
  static constexpr Rounding rounding = R;
  static constexpr bool has_master = !std::is_same<M, NoMaster>::value;
};

}  // namespace fastlr
