// Schedule-free SGD, AdamW and RAdam (Defazio et al., "The Road Less Scheduled", 2024),
// exactly as the `schedulefree` package (facebookresearch/schedule_free, 1.4) computes
// them: its per-group bookkeeping in double, its per-element update written once on the
// compute type C. The param holds y in train mode; the state keeps z (and the second
// moment v). Per step, with ĝ the (normalized) grad plus weight decay taken at y:
//   y ← lerp(y, z, c) + lr·(β1·(1−c) − 1)·ĝ,   z ← z − lr·ĝ,
// c = weight / weight_sum the averaging coefficient. eval() sets the param to x by
// lerp(y, z, 1 − 1/β1), train() back to y by lerp(x, z, 1 − β1).
#pragma once
#include <cmath>
#include <cstdint>

#include "update.hpp"

namespace fastlr {

// torch's lerp for any weight: ATen picks the formula by |w| < 0.5, and eval()'s weight
// 1 − 1/β1 is negative (an extrapolation). Exact at w = 0 and w = 1.
template <class C>
FASTLR_RULE C lerp_signed(C start, C end, C w) {
  return (w < C(0.5) && w > C(-0.5)) ? start + w * (end - start)
                                     : end - (end - start) * (C(1) - w);
}

enum class ScheduleFreeKind : int { sgd = 0, adamw = 1, radam = 2 };

// One group's step as the package's Python computes it, in the same operation order
// (so lr_max and weight_sum, kept in the group dict, agree to the bit). `lr` is the
// group's lr (a Schedule already evaluated at k); `beta1` is SGD's momentum.
struct ScheduleFreeGroup {
  ScheduleFreeKind kind;
  int64_t k;  // completed steps
  double lr, beta1, beta2, warmup_steps, r, weight_lr_power, lr_max, weight_sum;
  bool silent_sgd_phase;
};

struct ScheduleFreeStep {
  double scheduled_lr, lr_max, weight_sum, ckp1, y_coef, bias_correction2;
  bool adaptive;  // RAdam: rectified (Adam) step; false in its SGD / silent phase
};

inline ScheduleFreeStep schedulefree_step_values(const ScheduleFreeGroup& g) {
  ScheduleFreeStep s{};
  const double step = static_cast<double>(g.k + 1);
  s.adaptive = g.kind != ScheduleFreeKind::sgd;
  if (g.kind == ScheduleFreeKind::radam) {
    const double beta2_t = std::pow(g.beta2, step);
    s.bias_correction2 = 1.0 - beta2_t;
    const double rho_inf = 2.0 / (1.0 - g.beta2) - 1.0;
    const double rho_t = rho_inf - 2.0 * step * beta2_t / s.bias_correction2;
    s.adaptive = rho_t > 4.0;
    // `** 0.5` in Python is pow, which need not round like sqrt
    const double rect =
        s.adaptive ? std::pow((rho_t - 4.0) * (rho_t - 2.0) * rho_inf /
                                  ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t),
                              0.5)
                   : (g.silent_sgd_phase ? 0.0 : 1.0);
    s.scheduled_lr = g.lr * rect;
  } else {
    const double sched = static_cast<double>(g.k) < g.warmup_steps ? step / g.warmup_steps : 1.0;
    if (g.kind == ScheduleFreeKind::adamw) s.bias_correction2 = 1.0 - std::pow(g.beta2, step);
    s.scheduled_lr = g.lr * sched;
  }
  // Python's max(lr, lr_max) keeps lr unless lr_max is greater
  s.lr_max = g.lr_max > s.scheduled_lr ? g.lr_max : s.scheduled_lr;
  const double weight = std::pow(step, g.r) * std::pow(s.lr_max, g.weight_lr_power);
  s.weight_sum = g.weight_sum + weight;
  s.ckp1 = s.weight_sum == 0.0 ? 0.0 : weight / s.weight_sum;  // the package's ZeroDivisionError
  s.y_coef = s.scheduled_lr * (g.beta1 * (1.0 - s.ckp1) - 1.0);
  return s;
}

template <class C>
struct ScheduleFreeScalars {
  C weight_decay, ckp1, y_coef, neg_lr, beta2, one_minus_beta2, bias_correction2, eps;
};

// The package's operation order: ĝ = g (+ weight_decay·y), y ← lerp(y, z, c),
// y ← y + y_coef·ĝ, z ← z − lr·ĝ (torch's add with alpha: self + alpha·other).
template <WeightDecay WD, class C>
FASTLR_RULE void sgd_schedulefree_update(C& y, C g, C& z, const ScheduleFreeScalars<C>& s) {
  if (WD != WeightDecay::none) g = g + s.weight_decay * y;
  y = lerp_signed(y, z, s.ckp1);
  y = y + s.y_coef * g;
  z = z + s.neg_lr * g;
}

// AdamW / RAdam: v ← β2·v + (1−β2)·g² (torch's mul_ then addcmul_), then with ADAPTIVE
// g ← g / (√(v / bias_correction2) + eps) before the SGD rule. Grads are only read.
template <WeightDecay WD, bool ADAPTIVE, class C>
FASTLR_RULE void adamw_schedulefree_update(C& y, C g, C& z, C& v, const ScheduleFreeScalars<C>& s) {
  v = v * s.beta2 + (s.one_minus_beta2 * g) * g;
  if (ADAPTIVE) g = g / (std::sqrt(v / s.bias_correction2) + s.eps);
  sgd_schedulefree_update<WD>(y, g, z, s);
}

}  // namespace fastlr
