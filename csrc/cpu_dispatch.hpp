// What every per-CPU-level kernel file shares: the `target` attributes of the levels,
// the picker of a leaf's copy for the level in use, and the inlining helpers the
// leaves are written with (STYLE habit 5). Included by .cpp files only.
#pragma once
#include <cstdint>
#include <stdexcept>

#include "fastlr/dtype.hpp"
#include "fastlr/multi_tensor.hpp"

#if defined(__x86_64__) || defined(__i386__)
#define FASTLR_X86 1
#define FASTLR_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#define FASTLR_TARGET_AVX512 \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,prefer-vector-width=512")))
#else
#define FASTLR_X86 0
#define FASTLR_TARGET_AVX2
#define FASTLR_TARGET_AVX512
#endif

#define FASTLR_INLINE inline __attribute__((always_inline))
#define FASTLR_INLINE_LAMBDA __attribute__((always_inline))

// The copy of leaf FN<...> for CPU level LEVEL (namespaces baseline / avx2 / avx512).
#if FASTLR_X86
#define FASTLR_PICK_AT(LEVEL, FN, ...)                                           \
  ((LEVEL) == CpuLevel::avx512 ? &avx512::FN<__VA_ARGS__>                        \
   : (LEVEL) == CpuLevel::avx2 ? &avx2::FN<__VA_ARGS__>                          \
                               : &baseline::FN<__VA_ARGS__>)
#else
#define FASTLR_PICK_AT(LEVEL, FN, ...) (&baseline::FN<__VA_ARGS__>)
#endif

namespace fastlr {

// Runs body(0..n-1) in one of two identical loops chosen by `cond`, a loop-invariant
// test that the rule repeats per element (lerp's `weight < 0.5`). gcc unswitches such
// a loop itself only while the body is small (--param max-unswitch-insns) and, under
// -ftrapping-math, does not if-convert it, so the bfloat16/float16 Adam and centered
// RMSprop loops stayed scalar (~10 ns/el instead of ~0.5). In each copy the test is
// known, folds away, and the loop vectorizes. Performance only: same operations.
template <class F>
FASTLR_INLINE void split_on(bool cond, int64_t n, F& body) {
  if (cond) {
    for (int64_t i = 0; i < n; ++i) body(i);
  } else {
    for (int64_t i = 0; i < n; ++i) body(i);
  }
}

// Calls F<storage type>::run(list, offsets, a) for the dtype of the call.
template <template <class> class F, class Args>
void by_dtype(DType dtype, const TensorList& list, int64_t* offsets, const Args& a) {
  switch (dtype) {
    case DType::float32: return F<float>::run(list, offsets, a);
    case DType::float64: return F<double>::run(list, offsets, a);
    case DType::bfloat16: return F<bf16>::run(list, offsets, a);
    case DType::float16: return F<f16>::run(list, offsets, a);
  }
  throw std::invalid_argument("unknown dtype code");
}

}  // namespace fastlr
