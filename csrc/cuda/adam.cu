// Adam / AdamW (AMSGrad, coupled or decoupled weight decay, maximize): the multi-tensor kernels.
#include "cuda/multi_tensor.cuh"

namespace fastlr {
namespace cuda {
namespace detail {

template <class S, WeightDecay WD, bool AMSGRAD>
struct AdamOp {
  using C = compute_t<S>;
  using Args = AdamArgs;
  using Scalars = AdamScalars<C>;
  static constexpr int NR = 5;
  __device__ static bool reads(int r, bool) { return r < 4 || (r == 4 && AMSGRAD); }
  __device__ static bool writes(int r) { return r == 0 || r == 2 || r == 3 || (r == 4 && AMSGRAD); }
  // Same scalar arithmetic as the CPU kernel (csrc/kernels.cpp adam_typed), in double.
  __device__ static Scalars scalars(const Args& a, const DeviceCommon& c, double step) {
    const int64_t t = schedule_t(c, step);
    const double lr = scheduled(c.lr_schedule, a.lr, t);
    const double beta1 = scheduled(c.momentum_schedule, a.beta1, t);
    const double bias_correction1 = 1.0 - power(beta1, step);
    const double bias_correction2 = 1.0 - power(a.beta2, step);
    return {C(grad_mul(a.maximize, c)),
            C(a.weight_decay),
            C(1.0 - lr * a.weight_decay),
            C(1.0 - beta1),
            C(a.beta2),
            C(1.0 - a.beta2),
            C(power(bias_correction2, 0.5)),
            C(a.eps),
            C(-(lr / bias_correction1)),
            C(1.0 / power(bias_correction2, 0.5))};
  }
  __device__ static void apply(C (&x)[NR], const Scalars& s, bool) {
    adam_update<WD, AMSGRAD>(x[0], x[1], x[2], x[3], x[4], s);
  }
};

template <class S>
struct AdamF {
  template <WeightDecay WD>
  static void go(const Lists& l, const Common& c, const AdamArgs& a) {
    if (a.amsgrad) launch<AdamOp<S, WD, true>, S>(l, c, a);
    else launch<AdamOp<S, WD, false>, S>(l, c, a);
  }
  static void run(const Lists& l, const Common& c, const AdamArgs& a) {
    switch (wd_mode(a.weight_decay, a.decoupled_weight_decay)) {
      case WeightDecay::none: return go<WeightDecay::none>(l, c, a);
      case WeightDecay::coupled: return go<WeightDecay::coupled>(l, c, a);
      default: return go<WeightDecay::decoupled>(l, c, a);
    }
  }
};

}  // namespace detail

void adam(int dtype, const Lists& l, const Common& c, const AdamArgs& a) {
  detail::entry<detail::AdamF>(dtype, l, c, a);
}

}  // namespace cuda
}  // namespace fastlr
