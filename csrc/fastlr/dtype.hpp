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

#if defined(__FLT16_MANT_DIG__)
using f16 = _Float16;  // gcc >= 12 (x86-64, aarch64): F16C/FP16 conversions where the target has them
#else
#error "fastlr needs a compiler with _Float16 (gcc >= 12 or clang >= 15)"
#endif

template <class S>
using compute_t = typename std::conditional<std::is_same<S, double>::value, double, float>::type;

__attribute__((always_inline)) inline float load(float x) { return x; }
__attribute__((always_inline)) inline double load(double x) { return x; }
__attribute__((always_inline)) inline float load(f16 x) { return static_cast<float>(x); }
__attribute__((always_inline)) inline float load(bf16 x) {
  const uint32_t u = static_cast<uint32_t>(x.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

__attribute__((always_inline)) inline void store(float& dst, float x) { dst = x; }
__attribute__((always_inline)) inline void store(double& dst, double x) { dst = x; }
__attribute__((always_inline)) inline void store(f16& dst, float x) { dst = static_cast<f16>(x); }
// Round to nearest even, as torch's c10::BFloat16 does (every NaN becomes 0x7FC0).
__attribute__((always_inline)) inline void store(bf16& dst, float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  const bool is_nan = (u & 0x7FFFFFFFu) > 0x7F800000u;
  dst.bits = static_cast<uint16_t>(is_nan ? 0x7FC0u : rounded);
}

}  // namespace fastlr
