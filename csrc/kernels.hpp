// Entry points of the CPU kernels: one call updates a whole list of tensors.
// Hyper-parameters arrive in double; the per-call scalars are derived here once.
#pragma once
#include <cstdint>
#include <string>

#include "fastlr/dtype.hpp"
#include "fastlr/multi_tensor.hpp"

namespace fastlr {

enum class CpuLevel : int { baseline = 0, avx2 = 1, avx512 = 2 };

CpuLevel detected_cpu_level();          // best level this CPU supports
CpuLevel cpu_level();                   // level in use
void set_cpu_level(CpuLevel level);     // throws std::invalid_argument if unsupported
CpuLevel parse_level(const char* name);  // "baseline" | "avx2" | "avx512"
void init_cpu_level_from_env();         // honours FASTLR_CPU_LEVEL
const char* cpu_level_name(CpuLevel level);
int get_num_threads();
void set_num_threads(int n);
bool openmp_enabled();

struct SgdArgs {
  double lr, momentum, dampening, weight_decay, grad_mul;
  bool nesterov, first_step;
};
struct AdamArgs {
  double lr, beta1, beta2, eps, weight_decay, grad_mul, step;
  bool decoupled_weight_decay, amsgrad;
};
struct RmspropArgs {
  double lr, alpha, eps, weight_decay, momentum, grad_mul;
  bool centered, use_momentum, first_step;
};
struct AdagradArgs {
  double lr, lr_decay, weight_decay, eps, grad_mul, step;
};

// How the roles are stored: the dtypes of params, grads and every state tensor, a
// float32 master copy of 16-bit params (role 5), and stochastic rounding of 16-bit stores
// (list.rounding_key then holds rounding_call_key(seed, t)). Precision{d, d, d} is
// torch's layout. Combinations not built (see kernels/leaves.hpp) throw
// std::invalid_argument from the kernel entry points, before any data is touched.
struct Precision {
  DType param = DType::float32, grad = DType::float32, state = DType::float32;
  bool master = false;
  bool stochastic = false;
};
inline Precision same_precision(DType d) { return Precision{d, d, d, false, false}; }
// Empty if supported, else why not.
std::string unsupported_precision(const Precision& prec);

// Roles, in order: SGD (param, grad, momentum_buffer), Adam (param, grad, exp_avg,
// exp_avg_sq, max_exp_avg_sq), RMSprop (param, grad, square_avg, grad_avg,
// momentum_buffer), Adagrad (param, grad, sum); role 5 the master. Unused roles may be
// null. `offsets` is scratch for list.size + 1 entries.
void sgd(const Precision& prec, const TensorList& list, int64_t* offsets, const SgdArgs& a);
void adam(const Precision& prec, const TensorList& list, int64_t* offsets, const AdamArgs& a);
void rmsprop(const Precision& prec, const TensorList& list, int64_t* offsets, const RmspropArgs& a);
void adagrad(const Precision& prec, const TensorList& list, int64_t* offsets, const AdagradArgs& a);

}  // namespace fastlr
