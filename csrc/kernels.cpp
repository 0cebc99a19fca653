// Per-CPU-level leaf kernels and the dispatcher.
//
// Each leaf is one plain loop over the update rule of fastlr/update.hpp, stamped out
// at three levels with per-function `target` attributes: baseline (the build's
// default ISA: SSE2 on x86-64, NEON on aarch64), x86-64-v3 (AVX2+FMA+F16C) and
// x86-64-v4 (AVX-512). gcc auto-vectorizes each copy for its level. The level is
// chosen once at import from __builtin_cpu_supports, overridable with
// FASTLR_CPU_LEVEL=baseline|avx2|avx512. Threading lives in multi_tensor.hpp,
// outside the per-level code.
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

#include "cpu_dispatch.hpp"
#include "fastlr/update.hpp"

namespace fastlr {
namespace {

// ------------------------------------------------------------ leaf loops ---
// Modes are template parameters (STYLE habit 2); loads of unused roles are skipped
// at compile time so each variant moves only the bytes its rule needs.

template <class S, WeightDecay WD, Momentum MOM, bool FIRST>
FASTLR_INLINE void sgd_loop(int64_t n, char* const* ptrs, const void* scalars) {
  using C = compute_t<S>;
  const SgdScalars<C> s = *static_cast<const SgdScalars<C>*>(scalars);
  S* __restrict p = reinterpret_cast<S*>(ptrs[0]);
  const S* __restrict g = reinterpret_cast<const S*>(ptrs[1]);
  S* __restrict buf = reinterpret_cast<S*>(ptrs[2]);
  for (int64_t i = 0; i < n; ++i) {
    C pi = load(p[i]);
    C bi = (MOM != Momentum::none && !FIRST) ? load(buf[i]) : C(0);
    sgd_update<WD, MOM, FIRST>(pi, load(g[i]), bi, s);
    store(p[i], pi);
    if (MOM != Momentum::none) store(buf[i], bi);
  }
}

template <class S, WeightDecay WD, bool AMSGRAD>
FASTLR_INLINE void adam_loop(int64_t n, char* const* ptrs, const void* scalars) {
  using C = compute_t<S>;
  const AdamScalars<C> s = *static_cast<const AdamScalars<C>*>(scalars);
  S* __restrict p = reinterpret_cast<S*>(ptrs[0]);
  const S* __restrict g = reinterpret_cast<const S*>(ptrs[1]);
  S* __restrict m = reinterpret_cast<S*>(ptrs[2]);
  S* __restrict v = reinterpret_cast<S*>(ptrs[3]);
  S* __restrict vmax = reinterpret_cast<S*>(ptrs[4]);
  auto body = [&](int64_t i) FASTLR_INLINE_LAMBDA {
    C pi = load(p[i]), mi = load(m[i]), vi = load(v[i]);
    C vmi = AMSGRAD ? load(vmax[i]) : C(0);
    adam_update<WD, AMSGRAD>(pi, load(g[i]), mi, vi, vmi, s);
    store(p[i], pi);
    store(m[i], mi);
    store(v[i], vi);
    if (AMSGRAD) store(vmax[i], vmi);
  };
  split_on(s.one_minus_beta1 < C(0.5), n, body);
}

template <class S, WeightDecay WD, bool CENTERED, bool MOM, bool FIRST>
FASTLR_INLINE void rmsprop_loop(int64_t n, char* const* ptrs, const void* scalars) {
  using C = compute_t<S>;
  const RmspropScalars<C> s = *static_cast<const RmspropScalars<C>*>(scalars);
  S* __restrict p = reinterpret_cast<S*>(ptrs[0]);
  const S* __restrict g = reinterpret_cast<const S*>(ptrs[1]);
  S* __restrict sq = reinterpret_cast<S*>(ptrs[2]);
  S* __restrict ga = reinterpret_cast<S*>(ptrs[3]);
  S* __restrict buf = reinterpret_cast<S*>(ptrs[4]);
  auto body = [&](int64_t i) FASTLR_INLINE_LAMBDA {
    C pi = load(p[i]), sqi = load(sq[i]);
    C gai = CENTERED ? load(ga[i]) : C(0);
    C bi = (MOM && !FIRST) ? load(buf[i]) : C(0);
    rmsprop_update<WD, CENTERED, MOM, FIRST>(pi, load(g[i]), sqi, gai, bi, s);
    store(p[i], pi);
    store(sq[i], sqi);
    if (CENTERED) store(ga[i], gai);
    if (MOM) store(buf[i], bi);
  };
  if (CENTERED)
    split_on(s.one_minus_alpha < C(0.5), n, body);
  else
    for (int64_t i = 0; i < n; ++i) body(i);
}

template <class S, WeightDecay WD>
FASTLR_INLINE void adagrad_loop(int64_t n, char* const* ptrs, const void* scalars) {
  using C = compute_t<S>;
  const AdagradScalars<C> s = *static_cast<const AdagradScalars<C>*>(scalars);
  S* __restrict p = reinterpret_cast<S*>(ptrs[0]);
  const S* __restrict g = reinterpret_cast<const S*>(ptrs[1]);
  S* __restrict sum = reinterpret_cast<S*>(ptrs[2]);
  for (int64_t i = 0; i < n; ++i) {
    C pi = load(p[i]), si = load(sum[i]);
    adagrad_update<WD>(pi, load(g[i]), si, s);
    store(p[i], pi);
    store(sum[i], si);
  }
}

// ------------------------------------------------- per-level leaf copies ---

#define FASTLR_STAMP_LEVEL(NS, TARGET)                                                   \
  namespace NS {                                                                         \
  template <class S, WeightDecay WD, Momentum MOM, bool FIRST>                           \
  TARGET void sgd(int64_t n, char* const* p, const void* s) {                            \
    sgd_loop<S, WD, MOM, FIRST>(n, p, s);                                                \
  }                                                                                      \
  template <class S, WeightDecay WD, bool AMSGRAD>                                       \
  TARGET void adam(int64_t n, char* const* p, const void* s) {                           \
    adam_loop<S, WD, AMSGRAD>(n, p, s);                                                  \
  }                                                                                      \
  template <class S, WeightDecay WD, bool CENTERED, bool MOM, bool FIRST>                \
  TARGET void rmsprop(int64_t n, char* const* p, const void* s) {                        \
    rmsprop_loop<S, WD, CENTERED, MOM, FIRST>(n, p, s);                                  \
  }                                                                                      \
  template <class S, WeightDecay WD>                                                     \
  TARGET void adagrad(int64_t n, char* const* p, const void* s) {                        \
    adagrad_loop<S, WD>(n, p, s);                                                        \
  }                                                                                      \
  }

FASTLR_STAMP_LEVEL(baseline, )
#if FASTLR_X86
FASTLR_STAMP_LEVEL(avx2, FASTLR_TARGET_AVX2)
FASTLR_STAMP_LEVEL(avx512, FASTLR_TARGET_AVX512)
#endif

// ------------------------------------------------------------ dispatcher ---

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

// Picks the copy of one leaf for the level in use.
#define FASTLR_PICK(FN, ...) FASTLR_PICK_AT(g_level.load(), FN, __VA_ARGS__)

WeightDecay wd_mode(double weight_decay, bool decoupled) {
  if (weight_decay == 0.0) return WeightDecay::none;
  return decoupled ? WeightDecay::decoupled : WeightDecay::coupled;
}

// ------------------------------------------------------------------ SGD ---

template <class S, WeightDecay WD>
LeafFn sgd_leaf(Momentum mom, bool first) {
  switch (mom) {
    case Momentum::none: return FASTLR_PICK(sgd, S, WD, Momentum::none, false);
    case Momentum::heavy_ball:
      return first ? FASTLR_PICK(sgd, S, WD, Momentum::heavy_ball, true)
                   : FASTLR_PICK(sgd, S, WD, Momentum::heavy_ball, false);
    default:
      return first ? FASTLR_PICK(sgd, S, WD, Momentum::nesterov, true)
                   : FASTLR_PICK(sgd, S, WD, Momentum::nesterov, false);
  }
}

template <class S>
void sgd_typed(const TensorList& list, int64_t* offsets, const SgdArgs& a) {
  using C = compute_t<S>;
  const SgdScalars<C> s{C(a.grad_mul), C(a.weight_decay), C(a.momentum),
                        C(1.0 - a.dampening), C(-a.lr)};
  const Momentum mom = a.momentum == 0.0 ? Momentum::none
                       : a.nesterov      ? Momentum::nesterov
                                         : Momentum::heavy_ball;
  const LeafFn leaf = a.weight_decay != 0.0 ? sgd_leaf<S, WeightDecay::coupled>(mom, a.first_step)
                                            : sgd_leaf<S, WeightDecay::none>(mom, a.first_step);
  for_each_segment(list, offsets, leaf, &s, threads_for_call());
}

// ----------------------------------------------------------------- Adam ---

template <class S, WeightDecay WD>
LeafFn adam_leaf(bool amsgrad) {
  return amsgrad ? FASTLR_PICK(adam, S, WD, true) : FASTLR_PICK(adam, S, WD, false);
}

template <class S>
void adam_typed(const TensorList& list, int64_t* offsets, const AdamArgs& a) {
  using C = compute_t<S>;
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
                         C(-(a.lr / bias_correction1))};
  LeafFn leaf;
  switch (wd_mode(a.weight_decay, a.decoupled_weight_decay)) {
    case WeightDecay::none: leaf = adam_leaf<S, WeightDecay::none>(a.amsgrad); break;
    case WeightDecay::coupled: leaf = adam_leaf<S, WeightDecay::coupled>(a.amsgrad); break;
    default: leaf = adam_leaf<S, WeightDecay::decoupled>(a.amsgrad); break;
  }
  for_each_segment(list, offsets, leaf, &s, threads_for_call());
}

// -------------------------------------------------------------- RMSprop ---

template <class S, WeightDecay WD, bool CENTERED>
LeafFn rmsprop_leaf(bool mom, bool first) {
  if (!mom) return FASTLR_PICK(rmsprop, S, WD, CENTERED, false, false);
  return first ? FASTLR_PICK(rmsprop, S, WD, CENTERED, true, true)
               : FASTLR_PICK(rmsprop, S, WD, CENTERED, true, false);
}

template <class S>
void rmsprop_typed(const TensorList& list, int64_t* offsets, const RmspropArgs& a) {
  using C = compute_t<S>;
  const RmspropScalars<C> s{C(a.grad_mul), C(a.weight_decay), C(a.alpha), C(1.0 - a.alpha),
                            C(a.eps),      C(a.momentum),     C(-a.lr)};
  const bool wd = a.weight_decay != 0.0;
  LeafFn leaf;
  if (wd)
    leaf = a.centered ? rmsprop_leaf<S, WeightDecay::coupled, true>(a.use_momentum, a.first_step)
                      : rmsprop_leaf<S, WeightDecay::coupled, false>(a.use_momentum, a.first_step);
  else
    leaf = a.centered ? rmsprop_leaf<S, WeightDecay::none, true>(a.use_momentum, a.first_step)
                      : rmsprop_leaf<S, WeightDecay::none, false>(a.use_momentum, a.first_step);
  for_each_segment(list, offsets, leaf, &s, threads_for_call());
}

// -------------------------------------------------------------- Adagrad ---

template <class S>
void adagrad_typed(const TensorList& list, int64_t* offsets, const AdagradArgs& a) {
  using C = compute_t<S>;
  const double clr = a.lr / (1.0 + (a.step - 1.0) * a.lr_decay);
  const AdagradScalars<C> s{C(a.grad_mul), C(a.weight_decay), C(a.eps), C(-clr)};
  const LeafFn leaf = a.weight_decay != 0.0 ? FASTLR_PICK(adagrad, S, WeightDecay::coupled)
                                            : FASTLR_PICK(adagrad, S, WeightDecay::none);
  for_each_segment(list, offsets, leaf, &s, threads_for_call());
}

template <class S> struct SgdF { static void run(const TensorList& l, int64_t* o, const SgdArgs& a) { sgd_typed<S>(l, o, a); } };
template <class S> struct AdamF { static void run(const TensorList& l, int64_t* o, const AdamArgs& a) { adam_typed<S>(l, o, a); } };
template <class S> struct RmspropF { static void run(const TensorList& l, int64_t* o, const RmspropArgs& a) { rmsprop_typed<S>(l, o, a); } };
template <class S> struct AdagradF { static void run(const TensorList& l, int64_t* o, const AdagradArgs& a) { adagrad_typed<S>(l, o, a); } };

}  // namespace

CpuLevel detected_cpu_level() { return detect(); }
CpuLevel cpu_level() { return g_level; }

void init_cpu_level_from_env() {
  const char* env = std::getenv("FASTLR_CPU_LEVEL");
  if (env != nullptr && *env != '\0') set_cpu_level(parse_level(env));
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

void sgd(DType d, const TensorList& l, int64_t* o, const SgdArgs& a) { by_dtype<SgdF>(d, l, o, a); }
void adam(DType d, const TensorList& l, int64_t* o, const AdamArgs& a) { by_dtype<AdamF>(d, l, o, a); }
void rmsprop(DType d, const TensorList& l, int64_t* o, const RmspropArgs& a) { by_dtype<RmspropF>(d, l, o, a); }
void adagrad(DType d, const TensorList& l, int64_t* o, const AdagradArgs& a) { by_dtype<AdagradF>(d, l, o, a); }

}  // namespace fastlr
