// Memory-only kernels (see roofline.hpp). Each element of every read-write array is
// rewritten as `a | (g & zero)`, with `zero` a run-time 0 the compiler cannot fold:
// every byte an update moves is loaded and stored, the values never change, and the
// loop is two integer vector ops per stream. Stamped per CPU level like kernels.cpp so
// the roofline uses the same vector width as the kernels it bounds.
#include "roofline.hpp"

#include <stdexcept>

#include "kernels.hpp"

#if defined(__x86_64__) || defined(__i386__)
#define FASTLR_ROOF_X86 1
#define FASTLR_ROOF_AVX2 __attribute__((target("avx2,fma,f16c")))
#define FASTLR_ROOF_AVX512 \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,prefer-vector-width=512")))
#else
#define FASTLR_ROOF_X86 0
#endif

namespace fastlr {
namespace {

struct RoofScalars {
  uint64_t zero;
};

template <class U, int K>
inline __attribute__((always_inline)) void roof_loop(int64_t n, char* const* ptrs,
                                                     const void* scalars, const Segment&) {
  const U zero = static_cast<U>(static_cast<const RoofScalars*>(scalars)->zero);
  const U* __restrict g = reinterpret_cast<const U*>(ptrs[1]);
  U* __restrict a0 = reinterpret_cast<U*>(ptrs[0]);
  U* __restrict a1 = reinterpret_cast<U*>(K > 1 ? ptrs[2] : ptrs[0]);
  U* __restrict a2 = reinterpret_cast<U*>(K > 2 ? ptrs[3] : ptrs[0]);
  U* __restrict a3 = reinterpret_cast<U*>(K > 3 ? ptrs[4] : ptrs[0]);
  for (int64_t i = 0; i < n; ++i) {
    const U m = g[i] & zero;
    a0[i] = a0[i] | m;
    if (K > 1) a1[i] = a1[i] | m;
    if (K > 2) a2[i] = a2[i] | m;
    if (K > 3) a3[i] = a3[i] | m;
  }
}

#define FASTLR_ROOF_STAMP(NS, TARGET)                         \
  namespace NS {                                              \
  template <class U, int K>                                   \
  TARGET void roof(int64_t n, char* const* p, const void* s, const Segment& seg) { \
    roof_loop<U, K>(n, p, s, seg);                                 \
  }                                                           \
  }

FASTLR_ROOF_STAMP(baseline, )
#if FASTLR_ROOF_X86
FASTLR_ROOF_STAMP(avx2, FASTLR_ROOF_AVX2)
FASTLR_ROOF_STAMP(avx512, FASTLR_ROOF_AVX512)
#endif

template <class U, int K>
LeafFn pick() {
#if FASTLR_ROOF_X86
  switch (cpu_level()) {
    case CpuLevel::avx512: return &avx512::roof<U, K>;
    case CpuLevel::avx2: return &avx2::roof<U, K>;
    default: break;
  }
#endif
  return &baseline::roof<U, K>;
}

template <class U>
LeafFn pick_k(int k) {
  switch (k) {
    case 1: return pick<U, 1>();
    case 2: return pick<U, 2>();
    case 3: return pick<U, 3>();
    case 4: return pick<U, 4>();
  }
  throw std::invalid_argument("roofline: 1 to 4 read-write arrays");
}

volatile uint64_t g_zero = 0;  // read at run time so `g & zero` cannot be folded away

}  // namespace

void roofline(DType, const TensorList& list, int64_t* offsets) {
  const int k = list.roles - 1;  // params + states; role 1 (grads) is read-only
  LeafFn leaf;
  switch (list.elem_size[0]) {
    case 8: leaf = pick_k<uint64_t>(k); break;
    case 4: leaf = pick_k<uint32_t>(k); break;
    default: leaf = pick_k<uint16_t>(k); break;
  }
  const RoofScalars s{g_zero};
  for_each_segment(list, offsets, leaf, &s, get_num_threads());
}

}  // namespace fastlr
