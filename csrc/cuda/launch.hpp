// Host entry points of the CUDA kernels (csrc/cuda/kernels.cu). Plain C++: the
// pybind11 module (csrc/cuda/bindings.cpp) includes this without any CUDA header.
//
// One call updates a whole list of tensors of one storage dtype with as few launches
// as the by-value tensor table allows (one for up to kMaxTensors tensors). Everything
// a step reads that can change between steps (step counters, grad_scale, found_inf,
// the schedule encodings) is read on the device, so a call is CUDA-graph capturable.
#pragma once
#include <cstdint>

namespace fastlr {
namespace cuda {

constexpr int kMaxRoles = 5;

// Step counter storage: torch keeps `step` as a float32 tensor for fused/capturable.
enum class StepDType : int { float32 = 0, float64 = 1, int32 = 2, int64 = 3 };

// The tensors of one call. ptrs[r][i]: device address of tensor i for role r (roles
// as in csrc/kernels.hpp); a role unused by the options may be null. step[i]: device
// counter holding this update's 1-based index (read after the increment below), or
// null when the options need none. first[i] != 0: tensor i's momentum buffer is new.
struct Lists {
  int64_t n = 0;
  const int64_t* numel = nullptr;
  char* const* ptrs[kMaxRoles] = {};
  void* const* step = nullptr;
  const uint8_t* first = nullptr;
};

// What every kernel shares. Before the update, each of the n_increment distinct
// counters in `increment` is advanced by one; with found_inf (a float32 device scalar)
// != 0 nothing at all is written. grad_scale (float32 device scalar) divides grads.
// Schedules are device copies of Schedule._encoding: the value used is
// scale * schedule_at(enc, step - 1) (`lr` / `momentum` / `beta1` are the scales).
struct Common {
  int device = 0;
  void* stream = nullptr;  // cudaStream_t
  StepDType step_dtype = StepDType::float32;
  void* const* increment = nullptr;
  int64_t n_increment = 0;
  const float* grad_scale = nullptr;
  const float* found_inf = nullptr;
  const double* lr_schedule = nullptr;
  const double* momentum_schedule = nullptr;  // momentum (SGD, RMSprop) or beta1 (Adam)
  // Counter of the group's updates (step_dtype, 1-based after the increment): when
  // given, schedules are evaluated at its value - 1 instead of each tensor's step - 1.
  const void* schedule_step = nullptr;
};

struct SgdArgs {
  double lr, momentum, dampening, weight_decay;
  bool nesterov, maximize, use_momentum;
};
struct AdamArgs {
  double lr, beta1, beta2, eps, weight_decay;
  bool decoupled_weight_decay, amsgrad, maximize;
};
struct RmspropArgs {
  double lr, alpha, eps, weight_decay, momentum;
  bool centered, use_momentum, maximize;
};
struct AdagradArgs {
  double lr, lr_decay, weight_decay, eps;
  bool maximize;
};

// dtype codes as in fastlr._C: float32=0, float64=1, bfloat16=2, float16=3.
// Each throws std::runtime_error on a CUDA error, std::invalid_argument on bad codes.
void sgd(int dtype, const Lists& l, const Common& c, const SgdArgs& a);
void adam(int dtype, const Lists& l, const Common& c, const AdamArgs& a);
void rmsprop(int dtype, const Lists& l, const Common& c, const RmspropArgs& a);
void adagrad(int dtype, const Lists& l, const Common& c, const AdagradArgs& a);

// Bandwidth probe: copies nbytes (a multiple of 16, both pointers 16-byte aligned)
// with the same grid shape as the update kernels.
void copy(int device, void* stream, void* dst, const void* src, int64_t nbytes);

// The kernel's value of schedule_at(enc, t) for each t, on the device (tests).
void schedule_values(int device, void* stream, const double* enc, const int64_t* t, double* out,
                     int64_t n);

int multiprocessor_count(int device);
int runtime_version();
int max_tensors_per_launch(int roles);

}  // namespace cuda
}  // namespace fastlr
