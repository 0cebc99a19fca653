// Adagrad (lr_decay, weight decay, maximize): the multi-tensor kernels.
#include "cuda/multi_tensor.cuh"

namespace fastlr {
namespace cuda {
namespace detail {

template <class S, WeightDecay WD>
struct AdagradOp {
  using C = compute_t<S>;
  using Args = AdagradArgs;
  using Scalars = AdagradScalars<C>;
  static constexpr int NR = 3;
  __device__ static bool reads(int, bool) { return true; }
  __device__ static bool writes(int r) { return r != 1; }
  __device__ static Scalars scalars(const Args& a, const DeviceCommon& c, double step) {
    const double lr = scheduled(c.lr_schedule, a.lr, schedule_t(c, step));
    const double clr = lr / (1.0 + (step - 1.0) * a.lr_decay);
    return {C(grad_mul(a.maximize, c)), C(a.weight_decay), C(a.eps), C(-clr)};
  }
  __device__ static void apply(C (&x)[NR], const Scalars& s, bool) {
    adagrad_update<WD>(x[0], x[1], x[2], s);
  }
};

template <class S>
struct AdagradF {
  static void run(const Lists& l, const Common& c, const AdagradArgs& a) {
    if (a.weight_decay != 0.0) launch<AdagradOp<S, WeightDecay::coupled>, S>(l, c, a);
    else launch<AdagradOp<S, WeightDecay::none>, S>(l, c, a);
  }
};

}  // namespace detail

void adagrad(int dtype, const Lists& l, const Common& c, const AdagradArgs& a) {
  detail::entry<detail::AdagradF>(dtype, l, c, a);
}

}  // namespace cuda
}  // namespace fastlr
