// Per-CPU-level leaf kernels of the schedule-free optimizers (fastlr/schedulefree.hpp):
// one pass per step over y, grad, z (and v), one per train()/eval() switch over p, z.
#include "schedulefree_kernels.hpp"

#include <stdexcept>

#include "kernels.hpp"
#include "kernels/leaves.hpp"  // the per-level target attributes, FASTLR_INLINE, split_on

namespace fastlr {
namespace {

using leaves::split_on;

template <class S, WeightDecay WD>
FASTLR_INLINE void sgd_sf_loop(int64_t n, char* const* ptrs, const void* scalars) {
  using C = compute_t<S>;
  const ScheduleFreeScalars<C> s = *static_cast<const ScheduleFreeScalars<C>*>(scalars);
  S* __restrict y = reinterpret_cast<S*>(ptrs[0]);
  const S* __restrict g = reinterpret_cast<const S*>(ptrs[1]);
  S* __restrict z = reinterpret_cast<S*>(ptrs[2]);
  auto body = [&](int64_t i) FASTLR_INLINE_LAMBDA {
    C yi = load(y[i]), zi = load(z[i]);
    sgd_schedulefree_update<WD>(yi, load(g[i]), zi, s);
    store(y[i], yi);
    store(z[i], zi);
  };
  split_on(s.ckp1 < C(0.5) && s.ckp1 > C(-0.5), 0, n, body);
}

template <class S, WeightDecay WD, bool ADAPTIVE>
FASTLR_INLINE void adamw_sf_loop(int64_t n, char* const* ptrs, const void* scalars) {
  using C = compute_t<S>;
  const ScheduleFreeScalars<C> s = *static_cast<const ScheduleFreeScalars<C>*>(scalars);
  S* __restrict y = reinterpret_cast<S*>(ptrs[0]);
  const S* __restrict g = reinterpret_cast<const S*>(ptrs[1]);
  S* __restrict z = reinterpret_cast<S*>(ptrs[2]);
  S* __restrict v = reinterpret_cast<S*>(ptrs[3]);
  auto body = [&](int64_t i) FASTLR_INLINE_LAMBDA {
    C yi = load(y[i]), zi = load(z[i]), vi = load(v[i]);
    adamw_schedulefree_update<WD, ADAPTIVE>(yi, load(g[i]), zi, vi, s);
    store(y[i], yi);
    store(z[i], zi);
    store(v[i], vi);
  };
  split_on(s.ckp1 < C(0.5) && s.ckp1 > C(-0.5), 0, n, body);
}

template <class S>
FASTLR_INLINE void lerp_loop(int64_t n, char* const* ptrs, const void* scalars) {
  using C = compute_t<S>;
  const C w = *static_cast<const C*>(scalars);
  S* __restrict p = reinterpret_cast<S*>(ptrs[0]);
  const S* __restrict z = reinterpret_cast<const S*>(ptrs[1]);
  auto body = [&](int64_t i) FASTLR_INLINE_LAMBDA { store(p[i], lerp_signed(load(p[i]), load(z[i]), w)); };
  split_on(w < C(0.5) && w > C(-0.5), 0, n, body);
}

#define FASTLR_STAMP_SF_LEVEL(NS, TARGET)                                 \
  namespace NS {                                                          \
  template <class S, WeightDecay WD>                                      \
  TARGET void sgd_sf(int64_t n, char* const* p, const void* s, const Segment&) { \
    sgd_sf_loop<S, WD>(n, p, s);                                          \
  }                                                                       \
  template <class S, WeightDecay WD, bool ADAPTIVE>                       \
  TARGET void adamw_sf(int64_t n, char* const* p, const void* s, const Segment&) { \
    adamw_sf_loop<S, WD, ADAPTIVE>(n, p, s);                              \
  }                                                                       \
  template <class S>                                                      \
  TARGET void lerp(int64_t n, char* const* p, const void* s, const Segment&) { \
    lerp_loop<S>(n, p, s);                                                \
  }                                                                       \
  }

FASTLR_STAMP_SF_LEVEL(sf_baseline, )
#if FASTLR_X86
FASTLR_STAMP_SF_LEVEL(sf_avx2, FASTLR_TARGET_AVX2)
FASTLR_STAMP_SF_LEVEL(sf_avx512, FASTLR_TARGET_AVX512)
#endif

// The copy of leaf FN<...> for the CPU level in use.
#if FASTLR_X86
#define FASTLR_SF_PICK(FN, ...)                                               \
  (cpu_level() == CpuLevel::avx512 ? &sf_avx512::FN<__VA_ARGS__>                 \
   : cpu_level() == CpuLevel::avx2 ? &sf_avx2::FN<__VA_ARGS__>                   \
                                   : &sf_baseline::FN<__VA_ARGS__>)
#else
#define FASTLR_SF_PICK(FN, ...) (&sf_baseline::FN<__VA_ARGS__>)
#endif

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

template <class S, WeightDecay WD>
LeafFn step_leaf(const ScheduleFreeArgs& a) {
  if (a.kind == ScheduleFreeKind::sgd) return FASTLR_SF_PICK(sgd_sf, S, WD);
  return a.step.adaptive ? FASTLR_SF_PICK(adamw_sf, S, WD, true) : FASTLR_SF_PICK(adamw_sf, S, WD, false);
}

template <class S>
struct StepF {
  static void run(const TensorList& list, int64_t* offsets, const ScheduleFreeArgs& a) {
    using C = compute_t<S>;
    const ScheduleFreeStep& st = a.step;
    const ScheduleFreeScalars<C> s{C(a.weight_decay), C(st.ckp1), C(st.y_coef),
                                   C(-st.scheduled_lr), C(a.beta2), C(1.0 - a.beta2),
                                   C(st.bias_correction2), C(a.eps)};
    const LeafFn leaf = a.weight_decay != 0.0 ? step_leaf<S, WeightDecay::coupled>(a)
                                              : step_leaf<S, WeightDecay::none>(a);
    for_each_segment(list, offsets, leaf, &s, get_num_threads());
  }
};

template <class S>
struct LerpF {
  static void run(const TensorList& list, int64_t* offsets, const double& weight) {
    const compute_t<S> w(weight);
    for_each_segment(list, offsets, FASTLR_SF_PICK(lerp, S), &w, get_num_threads());
  }
};

}  // namespace

void schedulefree_step(DType d, const TensorList& l, int64_t* o, const ScheduleFreeArgs& a) {
  by_dtype<StepF>(d, l, o, a);
}
void schedulefree_lerp(DType d, const TensorList& l, int64_t* o, double weight) {
  by_dtype<LerpF>(d, l, o, weight);
}

}  // namespace fastlr
