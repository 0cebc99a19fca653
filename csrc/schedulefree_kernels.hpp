// Entry points of the schedule-free kernels (csrc/schedulefree.cpp): one call updates a
// whole list of tensors of one dtype.
#pragma once
#include <cstdint>

#include "fastlr/dtype.hpp"
#include "fastlr/multi_tensor.hpp"
#include "fastlr/schedulefree.hpp"

namespace fastlr {

struct ScheduleFreeArgs {
  ScheduleFreeKind kind;
  ScheduleFreeStep step;  // from schedulefree_step_values
  double weight_decay, beta2, eps;
};

// Roles: (y, grad, z) for SGD, (y, grad, z, exp_avg_sq) for AdamW / RAdam.
void schedulefree_step(DType dtype, const TensorList& list, int64_t* offsets,
                       const ScheduleFreeArgs& a);
// p ← lerp(p, z, weight) over roles (p, z): eval() and train().
void schedulefree_lerp(DType dtype, const TensorList& list, int64_t* offsets, double weight);

}  // namespace fastlr
