// SGD (momentum, dampening, nesterov, weight decay, maximize): the multi-tensor kernels.
#include "cuda/multi_tensor.cuh"

namespace fastlr {
namespace cuda {
namespace detail {

template <class S, WeightDecay WD, Momentum MOM>
struct SgdOp {
  using C = compute_t<S>;
  using Args = SgdArgs;
  using Scalars = SgdScalars<C>;
  static constexpr int NR = 3;
  __device__ static bool reads(int r, bool first) {
    return r < 2 || (r == 2 && MOM != Momentum::none && !first);
  }
  __device__ static bool writes(int r) { return r == 0 || (r == 2 && MOM != Momentum::none); }
  __device__ static Scalars scalars(const Args& a, const DeviceCommon& c, double step) {
    const int64_t t = schedule_t(c, step);
    return {C(grad_mul(a.maximize, c)), C(a.weight_decay),
            C(scheduled(c.momentum_schedule, a.momentum, t)), C(1.0 - a.dampening),
            C(-scheduled(c.lr_schedule, a.lr, t))};
  }
  __device__ static void apply(C (&x)[NR], const Scalars& s, bool first) {
    if (first) sgd_update<WD, MOM, true>(x[0], x[1], x[2], s);
    else sgd_update<WD, MOM, false>(x[0], x[1], x[2], s);
  }
};

template <class S>
struct SgdF {
  template <WeightDecay WD>
  static void go(const Lists& l, const Common& c, const SgdArgs& a) {
    if (!a.use_momentum) launch<SgdOp<S, WD, Momentum::none>, S>(l, c, a);
    else if (a.nesterov) launch<SgdOp<S, WD, Momentum::nesterov>, S>(l, c, a);
    else launch<SgdOp<S, WD, Momentum::heavy_ball>, S>(l, c, a);
  }
  static void run(const Lists& l, const Common& c, const SgdArgs& a) {
    if (a.weight_decay != 0.0) go<WeightDecay::coupled>(l, c, a);
    else go<WeightDecay::none>(l, c, a);
  }
};

}  // namespace detail

void sgd(int dtype, const Lists& l, const Common& c, const SgdArgs& a) {
  detail::entry<detail::SgdF>(dtype, l, c, a);
}

}  // namespace cuda
}  // namespace fastlr
