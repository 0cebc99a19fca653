// The dispatcher of the CPU kernels: per-call scalars, the storage policy and the
// leaf for the CPU level in use (leaves in kernels/, one translation unit per
// optimizer and level). The level is chosen once at import from
// __builtin_cpu_supports, overridable with FASTLR_CPU_LEVEL=baseline|avx2|avx512.
#include "kernels.hpp"

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#if defined(_OPENMP) && !defined(_WIN32)
#include <pthread.h>
#endif

#include "kernels/leaves.hpp"

namespace fastlr {
namespace {

CpuLevel detect() {
#if FASTLR_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    return CpuLevel::avx512;
  // F16C has no __builtin_cpu_supports name in gcc 12; every AVX2 CPU has it.
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return CpuLevel::avx2;
#endif
  return CpuLevel::baseline;
}

}  // namespace

CpuLevel parse_level(const char* name) {
  if (!std::strcmp(name, "baseline")) return CpuLevel::baseline;
  if (!std::strcmp(name, "avx2")) return CpuLevel::avx2;
  if (!std::strcmp(name, "avx512")) return CpuLevel::avx512;
  throw std::invalid_argument(std::string("unknown CPU level '") + name +
                              "' (expected baseline, avx2 or avx512)");
}

namespace {

// Atomic: set_cpu_level / set_num_threads may run while another Python thread steps.
std::atomic<CpuLevel> g_level{detect()};

int initial_threads() {
#if defined(_OPENMP)
  return omp_get_max_threads();  // honours OMP_NUM_THREADS
#else
  return 1;
#endif
}

std::atomic<int> g_num_threads{initial_threads()};

// GNU OpenMP is not fork-safe: a child forked after the parent ran a parallel region
// (ours or torch's, which shares the same libgomp) waits forever for the parent's
// worker threads. A forked child (DataLoader worker, multiprocessing 'fork') therefore
// runs every kernel on its calling thread, outside any OpenMP region.
std::atomic<bool> g_forked_child{false};
#if defined(_OPENMP) && !defined(_WIN32)
void on_fork_child() { g_forked_child.store(true, std::memory_order_relaxed); }
[[maybe_unused]] const bool g_atfork_registered = pthread_atfork(nullptr, nullptr, on_fork_child) == 0;
#endif

int threads_for_call() {
  if (g_forked_child.load(std::memory_order_relaxed)) return 1;
  return g_num_threads.load(std::memory_order_relaxed);
}

// The pickers of the level in use.
#if FASTLR_X86
#define FASTLR_PICK(FN, ...)                                          \
  (g_level == CpuLevel::avx512 ? avx512::FN(__VA_ARGS__)              \
   : g_level == CpuLevel::avx2 ? avx2::FN(__VA_ARGS__)                \
                               : baseline::FN(__VA_ARGS__))
#else
#define FASTLR_PICK(FN, ...) (baseline::FN(__VA_ARGS__))
#endif

WeightDecay wd_mode(double weight_decay, bool decoupled) {
  if (weight_decay == 0.0) return WeightDecay::none;
  return decoupled ? WeightDecay::decoupled : WeightDecay::coupled;
}

bool is_16bit(DType d) { return d == DType::bfloat16 || d == DType::float16; }

// Stochastic rounding only changes 16-bit stores: elsewhere it is rounding to nearest.
Precision normalized(Precision p) {
  p.stochastic = p.stochastic && (is_16bit(p.state) || (!p.master && is_16bit(p.param)));
  return p;
}

bool matches(const Precision& p, DType param, DType grad, DType state, bool master,
             bool stochastic) {
  return p.param == param && p.grad == grad && p.state == state && p.master == master &&
         p.stochastic == stochastic;
}

template <class T>
constexpr DType dtype_of() {
  return std::is_same<T, double>::value  ? DType::float64
         : std::is_same<T, bf16>::value ? DType::bfloat16
         : std::is_same<T, f16>::value  ? DType::float16
                                        : DType::float32;
}

// The storage policy of a (normalized) precision; false if it is not built.
bool find_storage(const Precision& prec, StorageId& out) {
  const Precision p = normalized(prec);
#define FASTLR_STORAGE_MATCH(ID, P, G, S, M, R)                                          \
  if (matches(p, dtype_of<P>(), dtype_of<G>(), dtype_of<S>(),                            \
              !std::is_same<M, NoMaster>::value, Rounding::R == Rounding::stochastic)) { \
    out = StorageId::ID;                                                                 \
    return true;                                                                         \
  }
  FASTLR_FOR_EACH_STORAGE(FASTLR_STORAGE_MATCH)
#undef FASTLR_STORAGE_MATCH
  return false;
}

const char* dtype_name(DType d) {
  switch (d) {
    case DType::float64: return "float64";
    case DType::bfloat16: return "bfloat16";
    case DType::float16: return "float16";
    default: return "float32";
  }
}

StorageId storage_for(const Precision& prec) {
  StorageId id;
  if (!find_storage(prec, id)) throw std::invalid_argument(unsupported_precision(prec));
  return id;
}

// ------------------------------------------------------------------ SGD ---

template <class C>
void sgd_typed(StorageId st, const TensorList& list, int64_t* offsets, const SgdArgs& a) {
  const SgdScalars<C> s{C(a.grad_mul), C(a.weight_decay), C(a.momentum),
                        C(1.0 - a.dampening), C(-a.lr)};
  const Momentum mom = a.momentum == 0.0 ? Momentum::none
                       : a.nesterov      ? Momentum::nesterov
                                         : Momentum::heavy_ball;
  const WeightDecay wd = a.weight_decay != 0.0 ? WeightDecay::coupled : WeightDecay::none;
  const LeafFn leaf = FASTLR_PICK(sgd_leaf, st, wd, mom, a.first_step);
  for_each_segment(list, offsets, leaf, &s, threads_for_call());
}

// ----------------------------------------------------------------- Adam ---

template <class C>
void adam_typed(StorageId st, const TensorList& list, int64_t* offsets, const AdamArgs& a) {
  // Same scalar arithmetic as torch.optim.adam._single_tensor_adam, in double.
  const double bias_correction1 = 1.0 - std::pow(a.beta1, a.step);
  const double bias_correction2 = 1.0 - std::pow(a.beta2, a.step);
  const AdamScalars<C> s{C(a.grad_mul),
                         C(a.weight_decay),
                         C(1.0 - a.lr * a.weight_decay),
                         C(1.0 - a.beta1),
                         C(a.beta2),
                         C(1.0 - a.beta2),
                         C(std::pow(bias_correction2, 0.5)),
                         C(a.eps),
                         C(-(a.lr / bias_correction1)),
                         C(1.0 / std::pow(bias_correction2, 0.5))};
  const LeafFn leaf =
      FASTLR_PICK(adam_leaf, st, wd_mode(a.weight_decay, a.decoupled_weight_decay), a.amsgrad);
  for_each_segment(list, offsets, leaf, &s, threads_for_call());
}

// -------------------------------------------------------------- RMSprop ---

template <class C>
void rmsprop_typed(StorageId st, const TensorList& list, int64_t* offsets, const RmspropArgs& a) {
  const RmspropScalars<C> s{C(a.grad_mul), C(a.weight_decay), C(a.alpha), C(1.0 - a.alpha),
                            C(a.eps),      C(a.momentum),     C(-a.lr)};
  const WeightDecay wd = a.weight_decay != 0.0 ? WeightDecay::coupled : WeightDecay::none;
  const LeafFn leaf =
      FASTLR_PICK(rmsprop_leaf, st, wd, a.centered, a.use_momentum, a.first_step);
  for_each_segment(list, offsets, leaf, &s, threads_for_call());
}

// -------------------------------------------------------------- Adagrad ---

template <class C>
void adagrad_typed(StorageId st, const TensorList& list, int64_t* offsets, const AdagradArgs& a) {
  const double clr = a.lr / (1.0 + (a.step - 1.0) * a.lr_decay);
  const AdagradScalars<C> s{C(a.grad_mul), C(a.weight_decay), C(a.eps), C(-clr)};
  const WeightDecay wd = a.weight_decay != 0.0 ? WeightDecay::coupled : WeightDecay::none;
  for_each_segment(list, offsets, FASTLR_PICK(adagrad_leaf, st, wd), &s, threads_for_call());
}

}  // namespace

CpuLevel detected_cpu_level() { return detect(); }
CpuLevel cpu_level() { return g_level; }

void init_cpu_level_from_env() {
  const char* env = std::getenv("FASTLR_CPU_LEVEL");
  if (env == nullptr || *env == '\0') return;
  try {
    set_cpu_level(parse_level(env));
  } catch (const std::invalid_argument& e) {  // the import fails: say which setting did it
    throw std::invalid_argument(std::string("FASTLR_CPU_LEVEL=") + env + ": " + e.what());
  }
}

void set_cpu_level(CpuLevel level) {
  if (static_cast<int>(level) > static_cast<int>(detect()))
    throw std::invalid_argument(std::string("CPU level '") + cpu_level_name(level) +
                                "' is not supported by this CPU");
  g_level = level;
}

const char* cpu_level_name(CpuLevel level) {
  switch (level) {
    case CpuLevel::avx512: return "avx512";
    case CpuLevel::avx2: return "avx2";
    default: return "baseline";
  }
}

int get_num_threads() { return threads_for_call(); }
void set_num_threads(int n) {
  if (n < 1) throw std::invalid_argument("num_threads must be >= 1");
  g_num_threads = n;
}

bool openmp_enabled() {
#if defined(_OPENMP)
  return true;
#else
  return false;
#endif
}

std::string unsupported_precision(const Precision& prec) {
  StorageId id;
  if (find_storage(prec, id)) return std::string();
  std::string why = std::string("no kernel for ") + dtype_name(prec.param) + " params with " +
                    dtype_name(prec.grad) + " grads and " + dtype_name(prec.state) + " state" +
                    (prec.master ? " and float32 master weights" : "");
  if (prec.master && !is_16bit(prec.param))
    why += " (master weights are for bfloat16/float16 params)";
  else if (!prec.master && prec.grad != prec.param)
    why += " (grads must have the params' dtype, or be float32 with master weights)";
  else if (prec.master && prec.grad != prec.param && prec.grad != DType::float32)
    why += " (with master weights grads are the params' dtype or float32)";
  else
    why += " (state is float32, bfloat16, or the params' dtype; float64 params: float64, "
           "float32 or bfloat16)";
  return why;
}

// float64 params compute in double, everything else in float.
#define FASTLR_ENTRY(NAME, ARGS)                                                        \
  void NAME(const Precision& prec, const TensorList& l, int64_t* o, const ARGS& a) {    \
    const StorageId st = storage_for(prec);                                             \
    if (prec.param == DType::float64)                                                   \
      NAME##_typed<double>(st, l, o, a);                                                \
    else                                                                                \
      NAME##_typed<float>(st, l, o, a);                                                 \
  }
FASTLR_ENTRY(sgd, SgdArgs)
FASTLR_ENTRY(adam, AdamArgs)
FASTLR_ENTRY(rmsprop, RmspropArgs)
FASTLR_ENTRY(adagrad, AdagradArgs)

}  // namespace fastlr
