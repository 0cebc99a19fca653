// The leaf loops of the CPU kernels and the storage policies they are built for.
//
// Each leaf is one plain loop over an update rule of fastlr/update.hpp on the compute
// type, with one storage policy (fastlr/rounding.hpp) saying how each role is loaded
// and stored. The loops are stamped per CPU level with per-function `target`
// attributes (baseline: the build's default ISA; x86-64-v3: AVX2+FMA+F16C; x86-64-v4:
// AVX-512) in one translation unit per (optimizer, level), compiled in parallel;
// gcc auto-vectorizes each copy for its level. Threading lives in multi_tensor.hpp,
// outside the per-level code.
#pragma once
#include <cstdint>
#include <type_traits>

#include "fastlr/dtype.hpp"
#include "fastlr/multi_tensor.hpp"
#include "fastlr/rounding.hpp"
#include "fastlr/update.hpp"

#if defined(__x86_64__) || defined(__i386__)
#define FASTLR_X86 1
#define FASTLR_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#define FASTLR_TARGET_AVX512 \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,prefer-vector-width=512")))
#else
#define FASTLR_X86 0
#define FASTLR_TARGET_AVX2
#define FASTLR_TARGET_AVX512
#endif

#define FASTLR_INLINE inline __attribute__((always_inline))
#define FASTLR_INLINE_LAMBDA __attribute__((always_inline))

namespace fastlr {

// ------------------------------------------------------- storage policies ---
// The combinations the kernels are built for (each costs one copy of every leaf at
// every level): X(id, param, grad, state, master, rounding). Stochastic rounding only
// where some store is 16-bit; float32 grads for 16-bit params only with a master.
#define FASTLR_FOR_EACH_STORAGE(X)                                                 \
  /* torch's layout: everything in the param's dtype */                            \
  X(f32, float, float, float, NoMaster, nearest)                                  \
  X(f64, double, double, double, NoMaster, nearest)                               \
  X(bf16, bf16, bf16, bf16, NoMaster, nearest)                                    \
  X(f16, f16, f16, f16, NoMaster, nearest)                                        \
  /* state_dtype other than the param's */                                         \
  X(f32_sbf16, float, float, bf16, NoMaster, nearest)                             \
  X(f32_sbf16_sr, float, float, bf16, NoMaster, stochastic)                       \
  X(f64_sf32, double, double, float, NoMaster, nearest)                           \
  X(f64_sbf16, double, double, bf16, NoMaster, nearest)                           \
  X(f64_sbf16_sr, double, double, bf16, NoMaster, stochastic)                     \
  X(bf16_sr, bf16, bf16, bf16, NoMaster, stochastic)                              \
  X(bf16_sf32, bf16, bf16, float, NoMaster, nearest)                              \
  X(bf16_sf32_sr, bf16, bf16, float, NoMaster, stochastic)                        \
  X(f16_sr, f16, f16, f16, NoMaster, stochastic)                                  \
  X(f16_sf32, f16, f16, float, NoMaster, nearest)                                 \
  X(f16_sf32_sr, f16, f16, float, NoMaster, stochastic)                           \
  X(f16_sbf16, f16, f16, bf16, NoMaster, nearest)                                 \
  X(f16_sbf16_sr, f16, f16, bf16, NoMaster, stochastic)                           \
  /* float32 master weights for 16-bit params, 16-bit or float32 grads */          \
  X(bf16_m, bf16, bf16, float, float, nearest)                                    \
  X(bf16_m_sbf16, bf16, bf16, bf16, float, nearest)                               \
  X(bf16_m_sbf16_sr, bf16, bf16, bf16, float, stochastic)                         \
  X(bf16_g32_m, bf16, float, float, float, nearest)                               \
  X(bf16_g32_m_sbf16, bf16, float, bf16, float, nearest)                          \
  X(bf16_g32_m_sbf16_sr, bf16, float, bf16, float, stochastic)                    \
  X(f16_m, f16, f16, float, float, nearest)                                       \
  X(f16_m_sbf16, f16, f16, bf16, float, nearest)                                  \
  X(f16_m_sbf16_sr, f16, f16, bf16, float, stochastic)                            \
  X(f16_g32_m, f16, float, float, float, nearest)                                 \
  X(f16_g32_m_sbf16, f16, float, bf16, float, nearest)                            \
  X(f16_g32_m_sbf16_sr, f16, float, bf16, float, stochastic)

enum class StorageId : int {
#define FASTLR_STORAGE_ENUM(ID, P, G, S, M, R) ID,
  FASTLR_FOR_EACH_STORAGE(FASTLR_STORAGE_ENUM)
#undef FASTLR_STORAGE_ENUM
};

// torch's layout: every role in the params' dtype, no master, rounding to nearest.
template <class St>
constexpr bool torch_layout =
    std::is_same<typename St::Param, typename St::Grad>::value &&
    std::is_same<typename St::Param, typename St::State>::value && !St::has_master &&
    St::rounding == Rounding::nearest;

template <class St>
struct Tag {
  using type = St;
};

// Calls f(Tag<Storage<...>>{}) for the policy `id`.
template <class F>
FASTLR_INLINE auto visit_storage(StorageId id, F&& f) {
  switch (id) {
#define FASTLR_STORAGE_CASE(ID, P, G, S, M, R) \
  case StorageId::ID:                          \
    return f(Tag<Storage<P, G, S, M, Rounding::R>>{});
    FASTLR_FOR_EACH_STORAGE(FASTLR_STORAGE_CASE)
#undef FASTLR_STORAGE_CASE
  }
  return f(Tag<Storage<float, float, float, NoMaster, Rounding::nearest>>{});
}

namespace leaves {

// ------------------------------------------------------------ role access ---

template <class St>
FASTLR_INLINE typename St::C load_param(const typename St::Param* p,
                                        const typename St::Master* master, int64_t i) {
  if constexpr (St::has_master)
    return load(master[i]);
  else
    return load(p[i]);
}

// Random-bit slots (RandomBits::slot) go to the stochastically rounded stores only, the
// param's first, so that up to two such stores (the states of AdamW with master weights
// or float32 params) cost one hash per element.
template <class St>
constexpr int first_state_slot =
    (!St::has_master && sizeof(typename St::Param) == 2 && St::rounding == Rounding::stochastic) ? 1 : 0;

// The number of slots of a leaf whose states take `states` slots: 16-bit states only
// (the slots of float32 states are never read).
template <class St>
constexpr int rounding_slots(int states) {
  return first_state_slot<St> + (sizeof(typename St::State) == 2 ? states : 0);
}

// A param with a master copy is the master rounded to nearest; otherwise the param is
// stored with the policy's rounding.
template <class St>
FASTLR_INLINE void store_param(typename St::Param* p, typename St::Master* master, int64_t i,
                               typename St::C x, uint32_t r) {
  if constexpr (St::has_master) {
    store(master[i], x);
    store(p[i], x);
  } else {
    store_rounded<St::rounding>(p[i], x, r);
  }
}

#define FASTLR_PARAM_ROLES(St)                                                              \
  using C = typename St::C;                                                                 \
  using S = typename St::State;                                                             \
  constexpr Rounding R = St::rounding;                                                      \
  typename St::Param* p = reinterpret_cast<typename St::Param*>(ptrs[0]);                   \
  const typename St::Grad* g = reinterpret_cast<const typename St::Grad*>(ptrs[1]);         \
  typename St::Master* master = reinterpret_cast<typename St::Master*>(ptrs[kMasterRole])

// Runs block(lo, hi, key, idx0) over [0, n) split where the element index crosses a
// multiple of 2^32 (stochastic rounding only): in a block the element index is
// idx0 + i in 32-bit arithmetic and the key holds the index's high half.
template <Rounding R, class F>
FASTLR_INLINE void for_each_key_block(int64_t n, const Segment& seg, F&& block) {
  if constexpr (R == Rounding::nearest) {
    block(int64_t(0), n, uint64_t(0), uint32_t(0));
  } else {
    int64_t lo = 0;
    while (lo < n) {
      const uint64_t index = static_cast<uint64_t>(seg.index + lo);
      const int64_t room = static_cast<int64_t>((uint64_t(1) << 32) - (index & 0xFFFFFFFFu));
      const int64_t hi = n - lo > room ? lo + room : n;
      block(lo, hi, rounding_block_key(seg.key, index >> 32),
            static_cast<uint32_t>(index) - static_cast<uint32_t>(lo));
      lo = hi;
    }
  }
}

// Runs body(lo..hi-1) in one of two identical loops chosen by `cond`, a loop-invariant
// test that the rule repeats per element (lerp's `weight < 0.5`), so that in each copy the
// test folds away and the loop vectorizes (see the range functions below). Used by
// csrc/schedulefree.cpp; a body lambda loses __restrict, so gcc may version its loop.
template <class F>
FASTLR_INLINE void split_on(bool cond, int64_t lo, int64_t hi, F& body) {
  if (cond) {
    for (int64_t i = lo; i < hi; ++i) body(i);
  } else {
    for (int64_t i = lo; i < hi; ++i) body(i);
  }
}

// ------------------------------------------------------------ leaf loops ---
// Modes are template parameters (STYLE habit 2); loads of unused roles are skipped
// at compile time so each variant moves only the bytes its rule needs. Random-bit
// slots: the param's (if rounded stochastically), then the states' in role order.
//
// The element loops live in *_range functions whose pointer parameters are __restrict:
// gcc then proves the roles disjoint and vectorizes without run-time alias checks and
// a scalar copy of the loop (restrict does not survive a lambda's captures, nor nested
// restrict-qualified helpers, hence plain pointers in load_param / store_param).
//
// Adam and centered RMSprop call their range twice, under a loop-invariant test that
// the rule repeats per element (lerp's `weight < 0.5`): gcc unswitches such a loop
// itself only while the body is small (--param max-unswitch-insns) and, under
// -ftrapping-math, does not if-convert it, so the bfloat16/float16 loops stayed scalar
// (~10 ns/el instead of ~0.5). In each copy the test is known, folds away, and the
// loop vectorizes. Performance only: same operations.

template <class St, WeightDecay WD, Momentum MOM, bool FIRST, class C = typename St::C,
          class P = typename St::Param, class G = typename St::Grad, class S = typename St::State,
          class M = typename St::Master>
FASTLR_INLINE void sgd_range(int64_t lo, int64_t hi, uint64_t key, uint32_t idx0,
                             P* __restrict p, const G* __restrict g, S* __restrict buf,
                             M* __restrict master, const SgdScalars<C> s) {
  constexpr Rounding R = St::rounding;
  for (int64_t i = lo; i < hi; ++i) {
    const RandomBits<R, rounding_slots<St>(MOM != Momentum::none)> rb(key, idx0 + static_cast<uint32_t>(i));
    C pi = load_param<St>(p, master, i);
    C bi = (MOM != Momentum::none && !FIRST) ? C(load(buf[i])) : C(0);
    sgd_update<WD, MOM, FIRST>(pi, C(load(g[i])), bi, s);
    store_param<St>(p, master, i, pi, rb.slot(0));
    if (MOM != Momentum::none) store_rounded<R>(buf[i], bi, rb.slot(first_state_slot<St>));
  }
}

template <class St, WeightDecay WD, Momentum MOM, bool FIRST>
FASTLR_INLINE void sgd_loop(int64_t n, char* const* ptrs, const void* scalars, const Segment& seg) {
  FASTLR_PARAM_ROLES(St);
  const SgdScalars<C> s = *static_cast<const SgdScalars<C>*>(scalars);
  S* buf = reinterpret_cast<S*>(ptrs[2]);
  for_each_key_block<R>(n, seg, [&](int64_t lo, int64_t hi, uint64_t key, uint32_t idx0) FASTLR_INLINE_LAMBDA {
    sgd_range<St, WD, MOM, FIRST>(lo, hi, key, idx0, p, g, buf, master, s);
  });
}

template <class St, WeightDecay WD, bool AMSGRAD, class C, class P, class G, class S, class M>
FASTLR_INLINE void adam_element(int64_t i, uint64_t key, uint32_t idx0, P* p, const G* g, S* m,
                                S* v, S* vmax, M* master, const AdamScalars<C>& s) {
  constexpr Rounding R = St::rounding;
  const RandomBits<R, rounding_slots<St>(2 + AMSGRAD)> rb(key, idx0 + static_cast<uint32_t>(i));
  C pi = load_param<St>(p, master, i), mi = load(m[i]), vi = load(v[i]);
  C vmi = AMSGRAD ? C(load(vmax[i])) : C(0);
  adam_update<WD, AMSGRAD, R == Rounding::stochastic>(pi, C(load(g[i])), mi, vi, vmi, s);
  store_param<St>(p, master, i, pi, rb.slot(0));
  store_rounded<R>(m[i], mi, rb.slot(first_state_slot<St>));
  store_rounded<R>(v[i], vi, rb.slot(first_state_slot<St> + 1));
  if (AMSGRAD) store_rounded<R>(vmax[i], vmi, rb.slot(first_state_slot<St> + 2));
}

// All-bfloat16 leaves (params, grads and state; a float32 master is read and written as
// two floats) run on pairs of elements held in one 32-bit word (little-endian: element
// 2j in the low half): each half becomes a float with one shift or one mask, and the
// two rounded results go back into one word with a shift and a mask. The per-element loop instead widens each bfloat16 (vpmovzxwd,
// plus vextracti128 at AVX2, and a shift) and narrows it (vpand + vpackusdw + vpermq at
// AVX2), twice the instructions of the arithmetic in those 14-byte leaves, which were
// bound by them. Same operations on each element: the same bits.
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
template <class St>
constexpr bool bf16_pairs = std::is_same<typename St::Param, bf16>::value &&
                            std::is_same<typename St::Grad, bf16>::value &&
                            std::is_same<typename St::State, bf16>::value;
#else
template <class St>
constexpr bool bf16_pairs = false;
#endif
using bf16x2 = uint32_t __attribute__((may_alias, aligned(2)));
FASTLR_INLINE float bf16_low(uint32_t w) { return detail::bits_float(w << 16); }
FASTLR_INLINE float bf16_high(uint32_t w) { return detail::bits_float(w & 0xFFFF0000u); }
// the bfloat16s in the high halves of two bf16_words, as a pair
FASTLR_INLINE uint32_t bf16_pair(uint32_t low_word, uint32_t high_word) {
  return (low_word >> 16) | (high_word & 0xFFFF0000u);
}

template <class St, WeightDecay WD, bool AMSGRAD>
FASTLR_INLINE void adam_pairs(int64_t pairs, uint64_t key, uint32_t idx0, bf16x2* __restrict p,
                              const bf16x2* __restrict g, bf16x2* __restrict m,
                              bf16x2* __restrict v, bf16x2* __restrict vmax,
                              typename St::Master* __restrict master, const AdamScalars<float> s) {
  constexpr Rounding R = St::rounding;
  constexpr int kSlots = rounding_slots<St>(2 + AMSGRAD), kState = first_state_slot<St>;
  for (int64_t j = 0; j < pairs; ++j) {
    const uint32_t idx = idx0 + 2 * static_cast<uint32_t>(j);
    const RandomBits<R, kSlots> r0(key, idx), r1(key, idx + 1);
    const uint32_t wg = g[j], wm = m[j], wv = v[j], wvm = AMSGRAD ? vmax[j] : 0u;
    const uint32_t wp = St::has_master ? 0u : p[j];  // a param with a master is not read
    float p0 = bf16_low(wp), p1 = bf16_high(wp);
    if constexpr (St::has_master) p0 = master[2 * j], p1 = master[2 * j + 1];
    float m0 = bf16_low(wm), v0 = bf16_low(wv), vm0 = bf16_low(wvm);
    float m1 = bf16_high(wm), v1 = bf16_high(wv), vm1 = bf16_high(wvm);
    adam_update<WD, AMSGRAD, R == Rounding::stochastic>(p0, bf16_low(wg), m0, v0, vm0, s);
    adam_update<WD, AMSGRAD, R == Rounding::stochastic>(p1, bf16_high(wg), m1, v1, vm1, s);
    if constexpr (St::has_master) {  // the master, and the param as it rounded to nearest
      master[2 * j] = p0;
      master[2 * j + 1] = p1;
      p[j] = bf16_pair(bf16_word(p0), bf16_word(p1));
    } else {
      p[j] = bf16_pair(bf16_word_rounded<R>(p0, r0.slot(0)), bf16_word_rounded<R>(p1, r1.slot(0)));
    }
    m[j] = bf16_pair(bf16_word_rounded<R>(m0, r0.slot(kState)),
                     bf16_word_rounded<R>(m1, r1.slot(kState)));
    v[j] = bf16_pair(bf16_word_rounded<R>(v0, r0.slot(kState + 1)),
                     bf16_word_rounded<R>(v1, r1.slot(kState + 1)));
    if (AMSGRAD)
      vmax[j] = bf16_pair(bf16_word_rounded<R>(vm0, r0.slot(kState + 2)),
                          bf16_word_rounded<R>(vm1, r1.slot(kState + 2)));
  }
}

template <class St, WeightDecay WD, bool AMSGRAD, class C = typename St::C,
          class P = typename St::Param, class G = typename St::Grad, class S = typename St::State,
          class M = typename St::Master>
FASTLR_INLINE void adam_range(int64_t lo, int64_t hi, uint64_t key, uint32_t idx0,
                              P* __restrict p, const G* __restrict g, S* __restrict m,
                              S* __restrict v, S* __restrict vmax, M* __restrict master,
                              const AdamScalars<C> s) {
  if constexpr (bf16_pairs<St>) {
    const int64_t pairs = (hi - lo) / 2;
    auto at = [lo](auto* x) { return reinterpret_cast<bf16x2*>(x + lo); };
    adam_pairs<St, WD, AMSGRAD>(pairs, key, idx0 + static_cast<uint32_t>(lo), at(p),
                                reinterpret_cast<const bf16x2*>(g + lo), at(m), at(v),
                                AMSGRAD ? at(vmax) : nullptr,
                                St::has_master ? master + lo : nullptr, s);
    if (hi - lo > 2 * pairs)  // an odd element left
      adam_element<St, WD, AMSGRAD>(hi - 1, key, idx0, p, g, m, v, vmax, master, s);
  } else {
    for (int64_t i = lo; i < hi; ++i)
      adam_element<St, WD, AMSGRAD>(i, key, idx0, p, g, m, v, vmax, master, s);
  }
}

template <class St, WeightDecay WD, bool AMSGRAD>
FASTLR_INLINE void adam_loop(int64_t n, char* const* ptrs, const void* scalars, const Segment& seg) {
  FASTLR_PARAM_ROLES(St);
  const AdamScalars<C> s = *static_cast<const AdamScalars<C>*>(scalars);
  S* m = reinterpret_cast<S*>(ptrs[2]);
  S* v = reinterpret_cast<S*>(ptrs[3]);
  S* vmax = reinterpret_cast<S*>(ptrs[4]);
  for_each_key_block<R>(n, seg, [&](int64_t lo, int64_t hi, uint64_t key, uint32_t idx0) FASTLR_INLINE_LAMBDA {
    // two copies: in each, lerp's weight test is known (see above)
    if (s.one_minus_beta1 < C(0.5))
      adam_range<St, WD, AMSGRAD>(lo, hi, key, idx0, p, g, m, v, vmax, master, s);
    else
      adam_range<St, WD, AMSGRAD>(lo, hi, key, idx0, p, g, m, v, vmax, master, s);
  });
}

template <class St, WeightDecay WD, bool CENTERED, bool MOM, bool FIRST, class C = typename St::C,
          class P = typename St::Param, class G = typename St::Grad, class S = typename St::State,
          class M = typename St::Master>
FASTLR_INLINE void rmsprop_range(int64_t lo, int64_t hi, uint64_t key, uint32_t idx0,
                                 P* __restrict p, const G* __restrict g, S* __restrict sq,
                                 S* __restrict ga, S* __restrict buf, M* __restrict master,
                                 const RmspropScalars<C> s) {
  constexpr Rounding R = St::rounding;
  for (int64_t i = lo; i < hi; ++i) {
    const RandomBits<R, rounding_slots<St>(1 + CENTERED + MOM)> rb(key, idx0 + static_cast<uint32_t>(i));
    C pi = load_param<St>(p, master, i), sqi = load(sq[i]);
    C gai = CENTERED ? C(load(ga[i])) : C(0);
    C bi = (MOM && !FIRST) ? C(load(buf[i])) : C(0);
    rmsprop_update<WD, CENTERED, MOM, FIRST>(pi, C(load(g[i])), sqi, gai, bi, s);
    store_param<St>(p, master, i, pi, rb.slot(0));
    store_rounded<R>(sq[i], sqi, rb.slot(first_state_slot<St>));
    if (CENTERED) store_rounded<R>(ga[i], gai, rb.slot(first_state_slot<St> + 1));
    if (MOM) store_rounded<R>(buf[i], bi, rb.slot(first_state_slot<St> + 1 + CENTERED));
  }
}

template <class St, WeightDecay WD, bool CENTERED, bool MOM, bool FIRST>
FASTLR_INLINE void rmsprop_loop(int64_t n, char* const* ptrs, const void* scalars,
                                const Segment& seg) {
  FASTLR_PARAM_ROLES(St);
  const RmspropScalars<C> s = *static_cast<const RmspropScalars<C>*>(scalars);
  S* sq = reinterpret_cast<S*>(ptrs[2]);
  S* ga = reinterpret_cast<S*>(ptrs[3]);
  S* buf = reinterpret_cast<S*>(ptrs[4]);
  for_each_key_block<R>(n, seg, [&](int64_t lo, int64_t hi, uint64_t key, uint32_t idx0) FASTLR_INLINE_LAMBDA {
    // centered: two copies, in each lerp's weight test is known (see adam_loop)
    if (CENTERED && s.one_minus_alpha < C(0.5))
      rmsprop_range<St, WD, CENTERED, MOM, FIRST>(lo, hi, key, idx0, p, g, sq, ga, buf, master, s);
    else
      rmsprop_range<St, WD, CENTERED, MOM, FIRST>(lo, hi, key, idx0, p, g, sq, ga, buf, master, s);
  });
}

template <class St, WeightDecay WD, class C = typename St::C, class P = typename St::Param,
          class G = typename St::Grad, class S = typename St::State, class M = typename St::Master>
FASTLR_INLINE void adagrad_range(int64_t lo, int64_t hi, uint64_t key, uint32_t idx0,
                                 P* __restrict p, const G* __restrict g, S* __restrict sum,
                                 M* __restrict master, const AdagradScalars<C> s) {
  constexpr Rounding R = St::rounding;
  for (int64_t i = lo; i < hi; ++i) {
    const RandomBits<R, rounding_slots<St>(1)> rb(key, idx0 + static_cast<uint32_t>(i));
    C pi = load_param<St>(p, master, i), si = load(sum[i]);
    adagrad_update<WD>(pi, C(load(g[i])), si, s);
    store_param<St>(p, master, i, pi, rb.slot(0));
    store_rounded<R>(sum[i], si, rb.slot(first_state_slot<St>));
  }
}

template <class St, WeightDecay WD>
FASTLR_INLINE void adagrad_loop(int64_t n, char* const* ptrs, const void* scalars,
                                const Segment& seg) {
  FASTLR_PARAM_ROLES(St);
  const AdagradScalars<C> s = *static_cast<const AdagradScalars<C>*>(scalars);
  S* sum = reinterpret_cast<S*>(ptrs[2]);
  for_each_key_block<R>(n, seg, [&](int64_t lo, int64_t hi, uint64_t key, uint32_t idx0) FASTLR_INLINE_LAMBDA {
    adagrad_range<St, WD>(lo, hi, key, idx0, p, g, sum, master, s);
  });
}

}  // namespace leaves

// ------------------------------------------------------------- pickers ---
// Each level's translation unit defines these in namespace fastlr::<level>: the leaf
// for a storage policy and the modes of one call.
#define FASTLR_DECLARE_PICKERS(NS)                                                  \
  namespace NS {                                                                    \
  LeafFn sgd_leaf(StorageId st, WeightDecay wd, Momentum mom, bool first);          \
  LeafFn adam_leaf(StorageId st, WeightDecay wd, bool amsgrad);                     \
  LeafFn rmsprop_leaf(StorageId st, WeightDecay wd, bool centered, bool mom, bool first); \
  LeafFn adagrad_leaf(StorageId st, WeightDecay wd);                                \
  }

FASTLR_DECLARE_PICKERS(baseline)
FASTLR_DECLARE_PICKERS(avx2)
FASTLR_DECLARE_PICKERS(avx512)

// Leaf copies of one optimizer at one level: NS::OPT<St, modes...>, TARGET'ed.
#define FASTLR_SGD_LEAVES(NS, TARGET, COMPACT)                                            \
  namespace NS {                                                                          \
  template <class St, WeightDecay WD, Momentum MOM, bool FIRST>                           \
  TARGET void sgd(int64_t n, char* const* p, const void* s, const Segment& seg) {         \
    leaves::sgd_loop<St, WD, MOM, FIRST>(n, p, s, seg);                                   \
  }                                                                                       \
  template <class St, WeightDecay WD, Momentum MOM, bool FIRST>                           \
  COMPACT void sgd_compact(int64_t n, char* const* p, const void* s, const Segment& seg) { \
    leaves::sgd_loop<St, WD, MOM, FIRST>(n, p, s, seg);                                   \
  }                                                                                       \
  template <class St, WeightDecay WD, Momentum MOM, bool FIRST>                           \
  LeafFn sgd_ptr() {                                                                      \
    if constexpr (torch_layout<St>) return &sgd<St, WD, MOM, FIRST>;                      \
    else return &sgd_compact<St, WD, MOM, FIRST>;                                         \
  }                                                                                       \
  template <class St, WeightDecay WD>                                                     \
  LeafFn sgd_pick(Momentum mom, bool first) {                                             \
    switch (mom) {                                                                        \
      case Momentum::none: return sgd_ptr<St, WD, Momentum::none, false>();               \
      case Momentum::heavy_ball:                                                          \
        return first ? sgd_ptr<St, WD, Momentum::heavy_ball, true>()                      \
                     : sgd_ptr<St, WD, Momentum::heavy_ball, false>();                    \
      default:                                                                            \
        return first ? sgd_ptr<St, WD, Momentum::nesterov, true>()                        \
                     : sgd_ptr<St, WD, Momentum::nesterov, false>();                      \
    }                                                                                     \
  }                                                                                       \
  LeafFn sgd_leaf(StorageId st, WeightDecay wd, Momentum mom, bool first) {               \
    return visit_storage(st, [&](auto tag) -> LeafFn {                                    \
      using St = typename decltype(tag)::type;                                            \
      return wd == WeightDecay::none ? sgd_pick<St, WeightDecay::none>(mom, first)        \
                                     : sgd_pick<St, WeightDecay::coupled>(mom, first);    \
    });                                                                                   \
  }                                                                                       \
  }

#define FASTLR_ADAM_LEAVES(NS, TARGET, COMPACT)                                           \
  namespace NS {                                                                          \
  template <class St, WeightDecay WD, bool AMSGRAD>                                       \
  TARGET void adam(int64_t n, char* const* p, const void* s, const Segment& seg) {        \
    leaves::adam_loop<St, WD, AMSGRAD>(n, p, s, seg);                                     \
  }                                                                                       \
  template <class St, WeightDecay WD, bool AMSGRAD>                                       \
  COMPACT void adam_compact(int64_t n, char* const* p, const void* s, const Segment& seg) { \
    leaves::adam_loop<St, WD, AMSGRAD>(n, p, s, seg);                                     \
  }                                                                                       \
  template <class St, WeightDecay WD, bool AMSGRAD>                                       \
  LeafFn adam_ptr() {                                                                     \
    if constexpr (torch_layout<St>) return &adam<St, WD, AMSGRAD>;                        \
    else return &adam_compact<St, WD, AMSGRAD>;                                           \
  }                                                                                       \
  template <class St, WeightDecay WD>                                                     \
  LeafFn adam_pick(bool amsgrad) {                                                        \
    return amsgrad ? adam_ptr<St, WD, true>() : adam_ptr<St, WD, false>();                \
  }                                                                                       \
  LeafFn adam_leaf(StorageId st, WeightDecay wd, bool amsgrad) {                          \
    return visit_storage(st, [&](auto tag) -> LeafFn {                                    \
      using St = typename decltype(tag)::type;                                            \
      switch (wd) {                                                                       \
        case WeightDecay::none: return adam_pick<St, WeightDecay::none>(amsgrad);         \
        case WeightDecay::coupled: return adam_pick<St, WeightDecay::coupled>(amsgrad);   \
        default: return adam_pick<St, WeightDecay::decoupled>(amsgrad);                   \
      }                                                                                   \
    });                                                                                   \
  }                                                                                       \
  }

#define FASTLR_RMSPROP_LEAVES(NS, TARGET, COMPACT)                                        \
  namespace NS {                                                                          \
  template <class St, WeightDecay WD, bool CENTERED, bool MOM, bool FIRST>                \
  TARGET void rmsprop(int64_t n, char* const* p, const void* s, const Segment& seg) {     \
    leaves::rmsprop_loop<St, WD, CENTERED, MOM, FIRST>(n, p, s, seg);                     \
  }                                                                                       \
  template <class St, WeightDecay WD, bool CENTERED, bool MOM, bool FIRST>                \
  COMPACT void rmsprop_compact(int64_t n, char* const* p, const void* s, const Segment& seg) { \
    leaves::rmsprop_loop<St, WD, CENTERED, MOM, FIRST>(n, p, s, seg);                     \
  }                                                                                       \
  template <class St, WeightDecay WD, bool CENTERED, bool MOM, bool FIRST>                \
  LeafFn rmsprop_ptr() {                                                                  \
    if constexpr (torch_layout<St>) return &rmsprop<St, WD, CENTERED, MOM, FIRST>;        \
    else return &rmsprop_compact<St, WD, CENTERED, MOM, FIRST>;                           \
  }                                                                                       \
  template <class St, WeightDecay WD, bool CENTERED>                                      \
  LeafFn rmsprop_pick(bool mom, bool first) {                                             \
    if (!mom) return rmsprop_ptr<St, WD, CENTERED, false, false>();                       \
    return first ? rmsprop_ptr<St, WD, CENTERED, true, true>()                            \
                 : rmsprop_ptr<St, WD, CENTERED, true, false>();                          \
  }                                                                                       \
  LeafFn rmsprop_leaf(StorageId st, WeightDecay wd, bool centered, bool mom, bool first) { \
    return visit_storage(st, [&](auto tag) -> LeafFn {                                    \
      using St = typename decltype(tag)::type;                                            \
      if (wd == WeightDecay::none)                                                        \
        return centered ? rmsprop_pick<St, WeightDecay::none, true>(mom, first)           \
                        : rmsprop_pick<St, WeightDecay::none, false>(mom, first);         \
      return centered ? rmsprop_pick<St, WeightDecay::coupled, true>(mom, first)          \
                      : rmsprop_pick<St, WeightDecay::coupled, false>(mom, first);        \
    });                                                                                   \
  }                                                                                       \
  }

#define FASTLR_ADAGRAD_LEAVES(NS, TARGET, COMPACT)                                        \
  namespace NS {                                                                          \
  template <class St, WeightDecay WD>                                                     \
  TARGET void adagrad(int64_t n, char* const* p, const void* s, const Segment& seg) {     \
    leaves::adagrad_loop<St, WD>(n, p, s, seg);                                           \
  }                                                                                       \
  template <class St, WeightDecay WD>                                                     \
  COMPACT void adagrad_compact(int64_t n, char* const* p, const void* s, const Segment& seg) { \
    leaves::adagrad_loop<St, WD>(n, p, s, seg);                                           \
  }                                                                                       \
  template <class St, WeightDecay WD>                                                     \
  LeafFn adagrad_ptr() {                                                                  \
    if constexpr (torch_layout<St>) return &adagrad<St, WD>;                              \
    else return &adagrad_compact<St, WD>;                                                 \
  }                                                                                       \
  LeafFn adagrad_leaf(StorageId st, WeightDecay wd) {                                     \
    return visit_storage(st, [&](auto tag) -> LeafFn {                                    \
      using St = typename decltype(tag)::type;                                            \
      return wd == WeightDecay::none ? adagrad_ptr<St, WeightDecay::none>()               \
                                     : adagrad_ptr<St, WeightDecay::coupled>();           \
    });                                                                                   \
  }                                                                                       \
  }

// Defines one optimizer's leaves at one level; the x86 levels only on x86. COMPACT is
// the attribute of the leaves of storage policies other than torch's layout: on x86
// their baseline copies are scalar loops. Every x86-64 CPU of the last decade runs the
// AVX2 or AVX-512 copies; vectorizing the precision modes for SSE2 as well cost a third
// of the extension's size (~4x the code per leaf) and of its build time. Same results:
// no FMA contraction, the same operations in the same order.
#if FASTLR_X86
#define FASTLR_LEVEL_baseline(LEAVES) LEAVES(baseline, , __attribute__((optimize("no-tree-vectorize"))))
#define FASTLR_LEVEL_avx2(LEAVES) LEAVES(avx2, FASTLR_TARGET_AVX2, FASTLR_TARGET_AVX2)
#define FASTLR_LEVEL_avx512(LEAVES) LEAVES(avx512, FASTLR_TARGET_AVX512, FASTLR_TARGET_AVX512)
#else
#define FASTLR_LEVEL_baseline(LEAVES) LEAVES(baseline, , )
#define FASTLR_LEVEL_avx2(LEAVES)
#define FASTLR_LEVEL_avx512(LEAVES)
#endif

}  // namespace fastlr
