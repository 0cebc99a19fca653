// RMSprop (centered, momentum, weight decay, maximize): the multi-tensor kernels.
#include "cuda/multi_tensor.cuh"

namespace fastlr {
namespace cuda {
namespace detail {

template <class S, WeightDecay WD, bool CENTERED, bool MOM>
struct RmspropOp {
  using C = compute_t<S>;
  using Args = RmspropArgs;
  using Scalars = RmspropScalars<C>;
  static constexpr int NR = 5;
  __device__ static bool reads(int r, bool first) {
    return r < 3 || (r == 3 && CENTERED) || (r == 4 && MOM && !first);
  }
  __device__ static bool writes(int r) {
    return r == 0 || r == 2 || (r == 3 && CENTERED) || (r == 4 && MOM);
  }
  __device__ static Scalars scalars(const Args& a, const DeviceCommon& c, double step) {
    const int64_t t = schedule_t(c, step);
    return {C(grad_mul(a.maximize, c)), C(a.weight_decay), C(a.alpha), C(1.0 - a.alpha),
            C(a.eps), C(scheduled(c.momentum_schedule, a.momentum, t)),
            C(-scheduled(c.lr_schedule, a.lr, t))};
  }
  __device__ static void apply(C (&x)[NR], const Scalars& s, bool first) {
    if (first) rmsprop_update<WD, CENTERED, MOM, true>(x[0], x[1], x[2], x[3], x[4], s);
    else rmsprop_update<WD, CENTERED, MOM, false>(x[0], x[1], x[2], x[3], x[4], s);
  }
};

template <class S>
struct RmspropF {
  template <WeightDecay WD, bool CENTERED>
  static void go(const Lists& l, const Common& c, const RmspropArgs& a) {
    if (a.use_momentum) launch<RmspropOp<S, WD, CENTERED, true>, S>(l, c, a);
    else launch<RmspropOp<S, WD, CENTERED, false>, S>(l, c, a);
  }
  static void run(const Lists& l, const Common& c, const RmspropArgs& a) {
    const bool wd = a.weight_decay != 0.0;
    if (wd) a.centered ? go<WeightDecay::coupled, true>(l, c, a) : go<WeightDecay::coupled, false>(l, c, a);
    else a.centered ? go<WeightDecay::none, true>(l, c, a) : go<WeightDecay::none, false>(l, c, a);
  }
};

}  // namespace detail

void rmsprop(int dtype, const Lists& l, const Common& c, const RmspropArgs& a) {
  detail::entry<detail::RmspropF>(dtype, l, c, a);
}

}  // namespace cuda
}  // namespace fastlr
