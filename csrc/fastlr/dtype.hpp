// Storage types and their conversion to the compute type: float32/bfloat16/float16
// compute in float, float64 in double (torch's "opmath" convention).
#pragma once
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace fastlr {

enum class DType : int { float32 = 0, float64 = 1, bfloat16 = 2, float16 = 3 };

inline int dtype_size(DType d) {
  return d == DType::float64 ? 8 : d == DType::float32 ? 4 : 2;
}

struct bf16 {
  uint16_t bits;
};

// IEEE binary16 as raw bits. Not _Float16: gcc 12 does not vectorize _Float16 <-> float
// conversions (and without F16C calls libgcc's soft-float per element), so the float16
// loops stayed scalar at 2-270 ns/el. The integer/float bit manipulations below are
// branchless (selects only) and vectorize at every CPU level.
struct f16 {
  uint16_t bits;
};

template <class S>
using compute_t = typename std::conditional<std::is_same<S, double>::value, double, float>::type;

__attribute__((always_inline)) inline float load(float x) { return x; }
__attribute__((always_inline)) inline double load(double x) { return x; }
namespace detail {
__attribute__((always_inline)) inline uint32_t float_bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
}
__attribute__((always_inline)) inline float bits_float(uint32_t u) {
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}
// c ? a : b as bit masks. A ternary lets gcc sink the float operation feeding one arm
// into a branch, which it then will not if-convert under -ftrapping-math ("control flow
// in loop"): the loop stays scalar.
__attribute__((always_inline)) inline int32_t select(bool c, int32_t a, int32_t b) {
  const int32_t m = -static_cast<int32_t>(c);
  return (a & m) | (b & ~m);
}
}  // namespace detail

// Exact, bit-identical to a (float)(_Float16) cast (F16C's vcvtph2ps) for all 65536 inputs:
// NaNs keep their payload and are quieted. Every case is computed, then selected.
__attribute__((always_inline)) inline float load(f16 x) {
  using detail::bits_float;
  using detail::float_bits;
  // 32-bit signed arithmetic throughout: SSE2/AVX2 have no unsigned vector compares.
  const int32_t h = x.bits;
  const int32_t mag = h & 0x7FFF;
  const int32_t em = mag << 13;  // exponent and mantissa at float's positions
  const int32_t normal = em + ((127 - 15) << 23);  // rebias the exponent
  // Subnormal or zero: as a float with exponent 2^-14, em reads 2^-14 * (1 + m/1024);
  // subtracting 2^-14 leaves m * 2^-24, exactly.
  const int32_t subnormal =
      static_cast<int32_t>(float_bits(bits_float(em + (113 << 23)) - bits_float(113u << 23)));
  const int32_t inf_nan = em | 0x7F800000 | (static_cast<int32_t>(mag > 0x7C00) << 22);
  int32_t r = detail::select(mag < 0x0400, subnormal, normal);
  r = detail::select(mag >= 0x7C00, inf_nan, r);
  return bits_float(static_cast<uint32_t>(r) | ((static_cast<uint32_t>(h) & 0x8000u) << 16));
}
__attribute__((always_inline)) inline float load(bf16 x) {
  const uint32_t u = static_cast<uint32_t>(x.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

__attribute__((always_inline)) inline void store(float& dst, float x) { dst = x; }
__attribute__((always_inline)) inline void store(double& dst, double x) { dst = x; }
// Round to nearest even, bit-identical to a (_Float16) cast for every non-NaN float
// (subnormals, overflow to inf, +-0, +-inf); every NaN becomes 0x7E00 | sign, as torch's
// c10::Half does. Every case is computed, then selected.
__attribute__((always_inline)) inline void store(f16& dst, float x) {
  using detail::bits_float;
  using detail::float_bits;
  // 32-bit signed arithmetic on |x|'s bits: SSE2/AVX2 have no unsigned vector compares.
  const uint32_t u = float_bits(x);
  const int32_t a = static_cast<int32_t>(u & 0x7FFFFFFFu);
  // |x| < 2^-14 (half subnormal or zero): in |x| + 0.5 the float's last mantissa bit is
  // 2^-24, the half's subnormal unit, so the float addition rounds to nearest even for us.
  const int32_t subnormal =
      static_cast<int32_t>(float_bits(bits_float(static_cast<uint32_t>(a)) + 0.5f)) - (126 << 23);
  // Normal (a < 143 << 23 here): rebias, then round the 13 dropped bits to nearest even
  // (a carry may run into the exponent, up to inf).
  const int32_t normal = (a - ((127 - 15) << 23) + 0xFFF + ((a >> 13) & 1)) >> 13;
  int32_t r = detail::select(a < (113 << 23), subnormal, normal);
  // |x| >= 65536: inf, or NaN (0x7E00)
  r = detail::select(a >= (143 << 23), 0x7C00 | (static_cast<int32_t>(a > 0x7F800000) << 9), r);
  dst.bits = static_cast<uint16_t>(static_cast<uint32_t>(r) | ((u >> 16) & 0x8000u));
}
// Round to nearest even, as torch's c10::BFloat16 does (every NaN becomes 0x7FC0).
__attribute__((always_inline)) inline void store(bf16& dst, float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  // NaN test as one float compare (vcmpps): an integer test on |x|'s bits is unsigned,
  // which gcc keeps unsigned even when written signed, and AVX2 has no unsigned vector
  // compare (vpand + vpminud + vpcmpeqd per vector).
  dst.bits = static_cast<uint16_t>(x != x ? 0x7FC0u : rounded);
}

}  // namespace fastlr
