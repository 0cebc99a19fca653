// Per-element update rules of torch.optim's SGD, Adam/AdamW, RMSprop and Adagrad
// (foreach=False is the reference), written once on the compute type C (float for
// float32/bfloat16/float16 storage, double for float64) and shared by the CPU leaf
// kernels and the CUDA kernels.
//
// Operation order mirrors ATen's element kernels (addcmul: self + (value*t1)*t2,
// addcdiv: self + (value*t1)/t2, lerp: torch's two-sided formula) so that results
// agree with torch to the last bits where the compiler does not contract into FMAs.
// The build disables FP contraction (-ffp-contract=off) on purpose: every CPU level
// and every thread split then gives bit-identical results.
#pragma once
#include <cmath>
#include <cstdint>

namespace fastlr {

// Rules must inline into every per-CPU-level loop, or the loops stop vectorizing.
#if defined(__CUDACC__)
#define FASTLR_RULE __host__ __device__ __forceinline__
#else
#define FASTLR_RULE inline __attribute__((always_inline))
#endif

enum class WeightDecay : int { none = 0, coupled = 1, decoupled = 2 };
enum class Momentum : int { none = 0, heavy_ball = 1, nesterov = 2 };

// torch's lerp: exact at both ends, weight w in [0, 1].
template <class C>
FASTLR_RULE C lerp(C start, C end, C w) {
  return (w < C(0.5)) ? start + w * (end - start) : end - (end - start) * (C(1) - w);
}

// ---------------------------------------------------------------- scalars ---
// Per-call scalars, computed once in double (STYLE habit 1) and cast to C.
// grad_mul = (maximize ? -1 : 1) / grad_scale folds maximize and AMP unscaling
// into one exact-sign multiply.

template <class C>
struct SgdScalars {
  C grad_mul, weight_decay, momentum, one_minus_dampening, neg_lr;
};

template <class C>
struct AdamScalars {
  C grad_mul, weight_decay, decay_factor, one_minus_beta1, beta2, one_minus_beta2,
      bias_correction2_sqrt, eps, neg_step_size, inv_bias_correction2_sqrt;
};

template <class C>
struct RmspropScalars {
  C grad_mul, weight_decay, alpha, one_minus_alpha, eps, momentum, neg_lr;
};

template <class C>
struct AdagradScalars {
  C grad_mul, weight_decay, eps, neg_clr;
};

// ------------------------------------------------------------------ rules ---

// SGD. FIRST: this is the buffer's first update (torch: buf = clone(grad)).
template <WeightDecay WD, Momentum MOM, bool FIRST, class C>
FASTLR_RULE void sgd_update(C& p, C g, C& buf, const SgdScalars<C>& s) {
  g = g * s.grad_mul;
  if (WD == WeightDecay::coupled) g = g + s.weight_decay * p;
  if (MOM != Momentum::none) {
    buf = FIRST ? g : buf * s.momentum + s.one_minus_dampening * g;
    g = (MOM == Momentum::nesterov) ? g + s.momentum * buf : buf;
  }
  p = p + s.neg_lr * g;
}

// Adam / AdamW (decoupled weight decay) with optional AMSGrad. ONE_DIVISION: multiply by
// 1 / bias_correction2_sqrt instead of dividing by it, one division per element instead
// of two; the 16-bit stochastic-rounding leaves use it (they are bound by the divider
// and have no torch result to be bit-identical with). Still correctly rounded operations
// only, so every CPU level and thread split gives the same bits.
template <WeightDecay WD, bool AMSGRAD, bool ONE_DIVISION = false, class C>
FASTLR_RULE void adam_update(C& p, C g, C& exp_avg, C& exp_avg_sq, C& max_exp_avg_sq,
                           const AdamScalars<C>& s) {
  g = g * s.grad_mul;
  if (WD == WeightDecay::coupled) g = g + s.weight_decay * p;
  if (WD == WeightDecay::decoupled) p = p * s.decay_factor;
  exp_avg = lerp(exp_avg, g, s.one_minus_beta1);
  exp_avg_sq = exp_avg_sq * s.beta2 + (s.one_minus_beta2 * g) * g;
  C v = exp_avg_sq;
  if (AMSGRAD) {
    max_exp_avg_sq = (max_exp_avg_sq < v || v != v) ? v : max_exp_avg_sq;  // torch.maximum propagates NaN
    v = max_exp_avg_sq;
  }
  const C denom = (ONE_DIVISION ? std::sqrt(v) * s.inv_bias_correction2_sqrt
                                 : std::sqrt(v) / s.bias_correction2_sqrt) + s.eps;
  p = p + (s.neg_step_size * exp_avg) / denom;
}

// RMSprop, optionally centered, optionally with momentum. FIRST zeroes the momentum
// buffer's history (torch initialises it to zeros).
template <WeightDecay WD, bool CENTERED, bool MOMENTUM, bool FIRST, class C>
FASTLR_RULE void rmsprop_update(C& p, C g, C& square_avg, C& grad_avg, C& buf,
                              const RmspropScalars<C>& s) {
  g = g * s.grad_mul;
  if (WD == WeightDecay::coupled) g = g + s.weight_decay * p;
  square_avg = square_avg * s.alpha + (s.one_minus_alpha * g) * g;
  C avg;
  if (CENTERED) {
    grad_avg = lerp(grad_avg, g, s.one_minus_alpha);
    avg = std::sqrt(square_avg + (C(-1) * grad_avg) * grad_avg);
  } else {
    avg = std::sqrt(square_avg);
  }
  avg = avg + s.eps;
  if (MOMENTUM) {
    buf = (FIRST ? C(0) : buf * s.momentum) + g / avg;
    p = p + s.neg_lr * buf;
  } else {
    p = p + (s.neg_lr * g) / avg;
  }
}

// Adagrad; neg_clr = -lr / (1 + (step - 1) * lr_decay).
template <WeightDecay WD, class C>
FASTLR_RULE void adagrad_update(C& p, C g, C& state_sum, const AdagradScalars<C>& s) {
  g = g * s.grad_mul;
  if (WD == WeightDecay::coupled) g = g + s.weight_decay * p;
  state_sum = state_sum + g * g;
  const C std_ = std::sqrt(state_sum) + s.eps;
  p = p + (s.neg_clr * g) / std_;
}

}  // namespace fastlr
