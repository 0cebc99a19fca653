// Learning-rate schedules as plain data: a flat array of doubles (the "encoding") built
// by fastlr/schedules.py and evaluated by schedule_at(enc, t) in double precision.
//
// Every encoding starts with a kind code; integers (step counts) are stored as doubles,
// exact up to 2^53 (the Python side refuses larger ones). t is the number of completed
// updates (t >= 0; a negative t is read as 0).
//
//   kind  layout                                                      schedule
//   0     {0, lr}                                                     Constant
//   1     {1, lr, step_size, gamma}                                   StepDecay
//   2     {2, lr, gamma, n, m_1..m_n}       (m sorted, with repeats)  MultiStep
//   3     {3, lr, gamma, decay_steps, staircase}                      Exponential
//   4     {4, lr, decay, decay_steps, staircase}                      InverseTime
//   5     {5, lr, total_steps, end_lr, power}                         Polynomial
//   6     {6, start_lr, end_lr, total_steps}                          Linear
//   7     {7, lr, total_steps, min_lr}                                Cosine
//   8     {8, lr, period, period_mult, min_lr}                        CosineRestarts
//   9     {9, base_lr, max_lr, step_size_up, step_size_down, mode, gamma}
//                                   mode 0 triangular, 1 triangular2, 2 exp_range  Cyclic
//   10    {10, max_lr, total_steps, pct_start, anneal, div_factor, final_div_factor,
//          three_phase}                          anneal 0 cos, 1 linear           OneCycle
//   11    {11, total_steps, base_momentum, max_momentum, pct_start, anneal, three_phase}
//                                                                      OneCycleMomentum
//   12    {12, warmup_steps, start_factor, <child>}                   Warmup
//   13    {13, lr, warmup_steps, timescale}                           InverseSqrt
//   14    {14, n, m_1..m_{n-1}, off_0..off_{n-1}, <child_0>..<child_{n-1}>}
//                      off_i: index of child i counted from the 14   Sequential
//   15    {15, start_lr, end_lr, num_steps, mode}   mode 0 exp, 1 linear  RangeTest
//   16    {16, n, v_0..v_{n-1}}         s(t) = v_min(t, n-1)            Table (and Lambda)
//         n <= 2^20 (fastlr.schedules.MAX_TABLE_SIZE): values computed once in Python,
//         looked up here, so any per-step Python schedule runs in the kernel.
//
// The arithmetic follows torch's closed forms operation by operation (same order, same
// constants), so results agree with torch to the last bit or few. Composites are
// evaluated iteratively (no recursion: this header is also compiled for the device):
// Warmup and Sequential only shift t, pick a child and multiply by a factor.
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define FASTLR_HD __host__ __device__ inline
#else
#define FASTLR_HD inline
#endif

namespace fastlr {

enum ScheduleKind : int {
  kConstant = 0,
  kStepDecay = 1,
  kMultiStep = 2,
  kExponential = 3,
  kInverseTime = 4,
  kPolynomial = 5,
  kLinear = 6,
  kCosine = 7,
  kCosineRestarts = 8,
  kCyclic = 9,
  kOneCycle = 10,
  kOneCycleMomentum = 11,
  kWarmup = 12,
  kInverseSqrt = 13,
  kSequential = 14,
  kRangeTest = 15,
  kTable = 16,
};

namespace schedule_detail {

// Same digits as Python's math.pi (M_PI is not standard C++).
#define FASTLR_PI 3.141592653589793

FASTLR_HD int64_t as_int(double v) { return static_cast<int64_t>(v); }

// torch OneCycleLR._annealing_cos / _annealing_linear, same operation order.
FASTLR_HD double one_cycle_anneal(bool linear, double start, double end, double pct) {
  if (linear) return (end - start) * pct + start;
  double cos_out = cos(FASTLR_PI * pct) + 1;
  return end + (start - end) / 2.0 * cos_out;
}

// torch OneCycleLR.get_lr: two phases a->b->c, or three phases a->b->a->c.
// Steps past total_steps - 1 hold the last value. A zero-length phase (torch divides
// 0 by 0 there) is taken at its end value.
FASTLR_HD double one_cycle(int64_t t, int64_t total_steps, double pct_start, bool linear,
                           bool three_phase, double a, double b, double c) {
  double ends[3];
  double starts_v[3];
  double ends_v[3];
  int n;
  ends[0] = pct_start * static_cast<double>(total_steps) - 1;
  starts_v[0] = a;
  ends_v[0] = b;
  if (three_phase) {
    n = 3;
    ends[1] = 2 * pct_start * static_cast<double>(total_steps) - 2;
    starts_v[1] = b;
    ends_v[1] = a;
    ends[2] = static_cast<double>(total_steps - 1);
    starts_v[2] = a;
    ends_v[2] = c;
  } else {
    n = 2;
    ends[1] = static_cast<double>(total_steps - 1);
    starts_v[1] = b;
    ends_v[1] = c;
  }
  const int64_t last = total_steps - 1;
  const double step = static_cast<double>(t < last ? t : last);
  double start_step = 0.0;
  for (int i = 0; i < n; ++i) {
    if (step <= ends[i] || i == n - 1) {
      const double len = ends[i] - start_step;
      const double pct = len == 0.0 ? 1.0 : (step - start_step) / len;
      return one_cycle_anneal(linear, starts_v[i], ends_v[i], pct);
    }
    start_step = ends[i];
  }
  return c;  // unreachable
}

}  // namespace schedule_detail

// Value of the schedule after t completed updates (t >= 0).
FASTLR_HD double schedule_at(const double* enc, int64_t t) {
  using namespace schedule_detail;
  if (t < 0) t = 0;
  double factor = 1.0;  // product of the Warmup factors met on the way down
  for (;;) {
    switch (static_cast<int>(enc[0])) {
      case kConstant:
        return factor * enc[1];

      case kStepDecay: {
        const int64_t k = t / as_int(enc[2]);
        return factor * (enc[1] * pow(enc[3], static_cast<double>(k)));
      }

      case kMultiStep: {
        const int64_t n = as_int(enc[3]);
        int64_t k = 0;
        while (k < n && enc[4 + k] <= static_cast<double>(t)) ++k;
        return factor * (enc[1] * pow(enc[2], static_cast<double>(k)));
      }

      case kExponential:
      case kInverseTime: {
        const int64_t d = as_int(enc[3]);
        const double p = enc[4] != 0.0 ? static_cast<double>(t / d)
                                       : static_cast<double>(t) / static_cast<double>(d);
        if (static_cast<int>(enc[0]) == kExponential)
          return factor * (enc[1] * pow(enc[2], p));  // Keras ExponentialDecay
        return factor * (enc[1] / (1 + enc[2] * p));  // Keras InverseTimeDecay
      }

      case kPolynomial: {
        // Keras PolynomialDecay; with end_lr = 0 it is torch PolynomialLR's closed form.
        const int64_t total = as_int(enc[2]);
        const double p =
            static_cast<double>(t < total ? t : total) / static_cast<double>(total);
        return factor * ((enc[1] - enc[3]) * pow(1.0 - p, enc[4]) + enc[3]);
      }

      case kLinear: {
        // (1 - a) * start + a * end: exact at both ends.
        const int64_t total = as_int(enc[3]);
        const double a =
            static_cast<double>(t < total ? t : total) / static_cast<double>(total);
        return factor * ((1.0 - a) * enc[1] + a * enc[2]);
      }

      case kCosine: {
        // torch CosineAnnealingLR._get_closed_form_lr up to total_steps, min_lr after.
        const int64_t total = as_int(enc[2]);
        const double tt = static_cast<double>(t < total ? t : total);
        const double lr = enc[1], min_lr = enc[3];
        return factor *
               (min_lr + (lr - min_lr) * (1 + cos(FASTLR_PI * tt / static_cast<double>(total))) / 2);
      }

      case kCosineRestarts: {
        // torch CosineAnnealingWarmRestarts: T_i grows by period_mult at each restart.
        const int64_t period = as_int(enc[2]);
        const int64_t mult = as_int(enc[3]);
        int64_t t_cur = t;
        double t_i = static_cast<double>(period);
        if (mult == 1) {
          t_cur = t % period;
        } else {
          int64_t len = period;
          while (t_cur >= len) {
            t_cur -= len;
            if (len > INT64_MAX / mult) {  // next cycle is longer than any int64 t
              t_i = static_cast<double>(len) * static_cast<double>(mult);
              len = -1;
              break;
            }
            len *= mult;
          }
          if (len > 0) t_i = static_cast<double>(len);
        }
        const double lr = enc[1], min_lr = enc[4];
        return factor *
               (min_lr + (lr - min_lr) * (1 + cos(FASTLR_PI * static_cast<double>(t_cur) / t_i)) / 2);
      }

      case kCyclic: {
        // torch CyclicLR.get_lr (Smith's CLR with asymmetric halves).
        const double base = enc[1], max_lr = enc[2];
        const double total_size = enc[3] + enc[4];
        const double step_ratio = enc[3] / total_size;
        const double td = static_cast<double>(t);
        const double cycle = floor(1 + td / total_size);
        const double x = 1.0 + td / total_size - cycle;
        const double scale_factor = x <= step_ratio ? x / step_ratio : (x - 1) / (step_ratio - 1);
        const double base_height = (max_lr - base) * scale_factor;
        const int mode = static_cast<int>(enc[5]);
        double scale = 1.0;
        if (mode == 1) scale = 1 / pow(2.0, cycle - 1);  // triangular2, per cycle
        else if (mode == 2) scale = pow(enc[6], td);      // exp_range, per iteration
        return factor * (base + base_height * scale);
      }

      case kOneCycle: {
        const double max_lr = enc[1];
        const double initial_lr = max_lr / enc[5];
        const double min_lr = initial_lr / enc[6];
        return factor * one_cycle(t, as_int(enc[2]), enc[3], enc[4] != 0.0, enc[7] != 0.0,
                                  initial_lr, max_lr, min_lr);
      }

      case kOneCycleMomentum: {
        const double base_m = enc[2], max_m = enc[3];
        return factor * one_cycle(t, as_int(enc[1]), enc[4], enc[5] != 0.0, enc[6] != 0.0,
                                  max_m, base_m, max_m);
      }

      case kWarmup: {
        // torch LinearLR(start_factor=f, end_factor=1, total_iters=W) closed form on the
        // child's first value, then the child shifted by W.
        const int64_t w = as_int(enc[1]);
        if (t < w) {
          const double f = enc[2];
          factor *= f + (1 - f) * static_cast<double>(t) / static_cast<double>(w);
          t = 0;
        } else {
          t -= w;
        }
        enc += 3;
        break;
      }

      case kInverseSqrt: {
        // transformers get_inverse_sqrt_schedule (LambdaLR: base_lr * lambda(t)).
        const int64_t w = as_int(enc[2]);
        const int64_t timescale = as_int(enc[3]);
        if (t < w) return factor * (enc[1] * (static_cast<double>(t) / static_cast<double>(w)));
        // t + shift in double: exact below 2^53 (like Python's int sum), no overflow above.
        const double shift = static_cast<double>(timescale - w);
        return factor * (enc[1] * (1.0 / sqrt((static_cast<double>(t) + shift) /
                                              static_cast<double>(timescale))));
      }

      case kSequential: {
        const int64_t n = as_int(enc[1]);
        int64_t i = 0;
        while (i < n - 1 && enc[2 + i] <= static_cast<double>(t)) ++i;
        if (i > 0) t -= as_int(enc[2 + i - 1]);
        enc += as_int(enc[2 + (n - 1) + i]);
        break;
      }

      case kRangeTest: {
        const double start = enc[1], end = enc[2];
        const int64_t last = as_int(enc[3]) - 1;
        if (t >= last) return factor * end;
        const double r = static_cast<double>(t) / static_cast<double>(last);
        if (enc[4] != 0.0) return factor * ((1.0 - r) * start + r * end);
        return factor * (start * pow(end / start, r));
      }

      case kTable: {
        const int64_t last = as_int(enc[1]) - 1;
        return factor * enc[2 + (t < last ? t : last)];
      }

      default:
        return NAN;  // unknown kind: never built by fastlr/schedules.py
    }
  }
}

#undef FASTLR_PI

}  // namespace fastlr
