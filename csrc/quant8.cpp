// Fused block-wise 8-bit Adam/AdamW (fastlr/quant8.hpp): per block of `block` elements,
// dequantize the codes into float32 stack buffers (L1), run the update over the block
// (params written in place), take the block's absmax, re-quantize into the codes. One
// pass over memory: params, grads and 2 B of codes per element (+ 8 B of scales per
// block), no temporary arrays. Dequantization is a lookup in the 256-entry map (byte
// planes with AVX-512 VBMI, scalar loads at AVX2, else a gather), the nearest-code search
// at AVX-512 an affine estimate (Quant8Words with VBMI, else Quant8Search) plus one compare
// with the next code's threshold, at AVX2 and baseline a Quant8Table bucket (a gather)
// plus one compare; the update loop is plain C++ over __restrict buffers that gcc
// vectorizes per level. Every level and thread count gives bit-identical results (no FMA
// contraction: -ffp-contract=off).
#include "quant8_kernels.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <stdexcept>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "fastlr/dtype.hpp"
#include "fastlr/quant8.hpp"
#include "fastlr/rounding.hpp"
#include "fastlr/update.hpp"
#include "kernels.hpp"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define FASTLR_Q8_X86 1
#define FASTLR_Q8_AVX2 __attribute__((target("avx2,fma,f16c")))
#define FASTLR_Q8_AVX512 \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,prefer-vector-width=512")))
#else
#define FASTLR_Q8_X86 0
#endif

#define FASTLR_Q8_INLINE inline __attribute__((always_inline))

namespace fastlr {
namespace {

using quant8::bits_of;
using quant8::float_of;
using quant8::Quant8Search;
using quant8::Quant8Table;
constexpr int kBucketRow = sizeof(Quant8Table::entry[0]) / sizeof(uint32_t);

constexpr int64_t kMaxBlock = 4096;

// Between a block's update loops the search runs long enough for the hardware prefetchers
// to lose the streams, and the next update then waits on DRAM: each block first asks for
// the data kPrefetchAhead elements further on (past a tensor's end this fetches unused
// lines, never faults). Into L2 for reads, with write intent for what is written (Zen 4,
// AdamW 8-bit, 16.8 M elements: 1.54-1.72 -> 1.36-1.40 ns/el at 1 thread, 0.83 -> 0.72
// at 2; the same or closer distances into L1 gained 0-5 %).
constexpr int64_t kPrefetchAhead = 4096;
template <bool Write, class T>
FASTLR_Q8_INLINE void prefetch_ahead(const T* block_start, int64_t n) {
  const uintptr_t from = reinterpret_cast<uintptr_t>(block_start) + kPrefetchAhead * sizeof(T);
  for (uintptr_t o = 0; o < static_cast<uintptr_t>(n) * sizeof(T); o += 64)
    __builtin_prefetch(reinterpret_cast<const void*>(from + o), Write ? 1 : 0, 1);
}

struct Base {};
struct Avx2 {};
struct Avx512 {};

// ----------------------------------------------------- dequantize / quantize ---

FASTLR_Q8_INLINE void dequant(Base, const uint8_t* c, int64_t n, const float* map, float s, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = map[c[i]] * s;
}

FASTLR_Q8_INLINE void quantize(Base, const float* x, int64_t n, float inv, const Quant8Search& s, uint8_t* c) {
  const Quant8Table& t = s.is_signed ? quant8::signed_table() : quant8::unsigned_table();
  for (int64_t i = 0; i < n; ++i) c[i] = t.code(x[i] * inv);
}

#if FASTLR_Q8_X86
// Scalar lookups, 8 codes per load: on Zen 4 a vgatherdps of 8 floats costs more than 8
// loads (AdamW 8-bit step at AVX2: 2.83-2.87 -> 2.56-2.62 ns/el at 1 thread, 1.47-1.56 ->
// 1.33-1.40 at 2).
FASTLR_Q8_AVX2 __attribute__((noinline)) void dequant(Avx2, const uint8_t* c, int64_t n, const float* map, float s,
                                             float* out) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    std::memcpy(&w, c + i, 8);
    for (int k = 0; k < 8; ++k) out[i + k] = map[(w >> (8 * k)) & 0xFF] * s;
  }
  for (; i < n; ++i) out[i] = map[c[i]] * s;
}

FASTLR_Q8_AVX2 __attribute__((noinline)) void quantize(Avx2, const float* x, int64_t n, float inv, const Quant8Search& s,
                                              uint8_t* c) {
  const Quant8Table& t = s.is_signed ? quant8::signed_table() : quant8::unsigned_table();
  const __m256 vs = _mm256_set1_ps(inv);
  const __m256i abs_mask = _mm256_set1_epi32(0x7FFFFFFF);
  const __m256i low = _mm256_set1_epi32(static_cast<int>(Quant8Table::kLow));
  const __m256i high = _mm256_set1_epi32(static_cast<int>(Quant8Table::kHigh));
  const __m256i fine = _mm256_set1_epi32((1 << t.shift) - 1);
  const __m256i row = _mm256_set1_epi32(kBucketRow);
  const __m256i byte = _mm256_set1_epi32(0xFF);
  const __m256i one = _mm256_set1_epi32(1);
  const __m128i sh = _mm_set_epi32(static_cast<int>(0x80808080u), static_cast<int>(0x80808080u),
                                   static_cast<int>(0x80808080u), 0x0C080400);
  const __m256i pick = _mm256_broadcastsi128_si256(sh);
  const __m256i gather_lanes = _mm256_setr_epi32(0, 4, 1, 1, 1, 1, 1, 1);
  const int* table = reinterpret_cast<const int*>(&t.entry[0][0]);
  const int shift = t.shift;
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 q = _mm256_mul_ps(_mm256_loadu_ps(x + i), vs);
    const __m256i u = _mm256_castps_si256(q);
    const __m256i mag = _mm256_sub_epi32(
        _mm256_min_epu32(_mm256_max_epu32(_mm256_and_si256(u, abs_mask), low), high), low);
    const __m256i neg = _mm256_srai_epi32(u, 31);
    const __m256i idx = _mm256_add_epi32(_mm256_srli_epi32(mag, shift), _mm256_and_si256(neg, row));
    const __m256i e = _mm256_i32gather_epi32(table, idx, 4);
    const __m256i before = _mm256_cmpgt_epi32(_mm256_srli_epi32(e, 8), _mm256_and_si256(mag, fine));
    const __m256i delta = _mm256_andnot_si256(before, _mm256_or_si256(neg, one));
    __m256i code = _mm256_add_epi32(_mm256_and_si256(e, byte), delta);
    code = _mm256_and_si256(code, _mm256_castps_si256(_mm256_cmp_ps(q, q, _CMP_ORD_Q)));
    const __m256i packed = _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(code, pick), gather_lanes);
    _mm_storel_epi64(reinterpret_cast<__m128i*>(c + i), _mm256_castsi256_si128(packed));
  }
  for (; i < n; ++i) c[i] = t.code(x[i] * inv);
}

// AVX-512 VBMI (Ice Lake, Zen 4): a gather is ~21 cycles per 16 floats on Zen 4, while
// vpermi2b looks up 64 bytes in a 128-entry byte table in one instruction. So the 256-entry
// map is held as 4 byte planes (byte k of every entry, 4 registers each); 64 codes take 2
// lookups and a blend per plane, and the planes interleave back into floats with unpacks.
// The unpacks interleave within 128-bit lanes: the codes are pre-permuted so that the
// floats come out in order. Same table values, so bit-identical to the gather path.
struct MapPlanes {
  alignas(64) uint8_t byte[4][256];
  alignas(64) uint8_t order[64];  // the codes' pre-permutation, built once, not per block
  explicit MapPlanes(const float* map) {
    for (int c = 0; c < 256; ++c) {
      uint32_t u;
      std::memcpy(&u, map + c, 4);
      for (int k = 0; k < 4; ++k) byte[k][c] = static_cast<uint8_t>(u >> (8 * k));
    }
    // byte p = 16j + 4r + q of the permuted codes is code 16r + 4j + q (a 4x4 transpose of
    // 4-byte groups): unpacking lane j then yields floats 16r + 4j .. 16r + 4j + 3
    for (int j = 0; j < 4; ++j)
      for (int r = 0; r < 4; ++r)
        for (int q = 0; q < 4; ++q) order[16 * j + 4 * r + q] = static_cast<uint8_t>(16 * r + 4 * j + q);
  }
};
const MapPlanes& planes_of(const float* map) {
  static const MapPlanes signed_planes(quant8::kSignedMap), unsigned_planes(quant8::kUnsignedMap);
  if (map == quant8::kSignedMap) return signed_planes;
  if (map == quant8::kUnsignedMap) return unsigned_planes;
  throw std::logic_error("quant8: dequantization from an unknown map");
}
bool has_vbmi() {
  static const bool yes = __builtin_cpu_supports("avx512vbmi");
  return yes;
}

#define FASTLR_Q8_VBMI \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi,avx2,fma,f16c,prefer-vector-width=512")))

// The 64 floats of 64 codes (in element order) from a table's byte planes, in 4 registers.
struct PlaneLookup {
  __m512i q[4][4];  // q[k][h]: entries 64h .. 64h + 63 of plane k
  __m512i perm;
  FASTLR_Q8_VBMI explicit PlaneLookup(const MapPlanes& t) : perm(_mm512_load_si512(t.order)) {
    for (int k = 0; k < 4; ++k)
      for (int h = 0; h < 4; ++h) q[k][h] = _mm512_load_si512(t.byte[k] + 64 * h);
  }
  FASTLR_Q8_VBMI FASTLR_Q8_INLINE void floats(__m512i codes, __m512 out[4]) const {
    const __m512i code = _mm512_permutexvar_epi8(perm, codes);
    const __mmask64 upper = _mm512_movepi8_mask(code);
    __m512i b[4];
    for (int k = 0; k < 4; ++k)
      b[k] = _mm512_mask_blend_epi8(upper, _mm512_permutex2var_epi8(q[k][0], code, q[k][1]),
                                    _mm512_permutex2var_epi8(q[k][2], code, q[k][3]));
    const __m512i w01l = _mm512_unpacklo_epi8(b[0], b[1]), w01h = _mm512_unpackhi_epi8(b[0], b[1]);
    const __m512i w23l = _mm512_unpacklo_epi8(b[2], b[3]), w23h = _mm512_unpackhi_epi8(b[2], b[3]);
    out[0] = _mm512_castsi512_ps(_mm512_unpacklo_epi16(w01l, w23l));
    out[1] = _mm512_castsi512_ps(_mm512_unpackhi_epi16(w01l, w23l));
    out[2] = _mm512_castsi512_ps(_mm512_unpacklo_epi16(w01h, w23h));
    out[3] = _mm512_castsi512_ps(_mm512_unpackhi_epi16(w01h, w23h));
  }
};

FASTLR_Q8_VBMI __attribute__((noinline)) int64_t dequant_vbmi(const uint8_t* c, int64_t n, const MapPlanes& t,
                                                          float s, float* out) {
  const PlaneLookup lut(t);
  const __m512 vs = _mm512_set1_ps(s);
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    __m512 f[4];
    lut.floats(_mm512_loadu_si512(c + i), f);
    for (int r = 0; r < 4; ++r) _mm512_storeu_ps(out + i + 16 * r, _mm512_mul_ps(f[r], vs));
  }
  return i;
}

FASTLR_Q8_AVX512 __attribute__((noinline)) void dequant(Avx512, const uint8_t* c, int64_t n, const float* map, float s,
                                               float* out) {
  const __m512 vs = _mm512_set1_ps(s);
  int64_t i = has_vbmi() ? dequant_vbmi(c, n, planes_of(map), s, out) : 0;
  for (; i + 16 <= n; i += 16) {
    const __m512i idx = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(c + i)));
    _mm512_storeu_ps(out + i, _mm512_mul_ps(_mm512_i32gather_ps(idx, map, 4), vs));
  }
  for (; i < n; ++i) out[i] = map[c[i]] * s;
}

// The search of Quant8Search, 16 lanes: a's octave picks the piece boundary and the
// pieces below it (32-entry permutes), the piece its line (16-entry permutes). Returns the
// estimate's k (capped on the negative side) and a = |q| clamped to [2^-31, 1] (unsigned: q).
template <bool Signed>
struct Search512 {
  __m512 bound_lo, bound_hi, slope, offset;
  __m512i piece_lo, piece_hi, piece_cap, neg_cap;
  FASTLR_Q8_AVX512 explicit Search512(const Quant8Search& t)
      : bound_lo(_mm512_load_ps(t.octave_bound)), bound_hi(_mm512_load_ps(t.octave_bound + 16)),
        slope(_mm512_load_ps(t.slope)), offset(_mm512_load_ps(t.offset)),
        piece_lo(_mm512_load_si512(t.octave_piece)), piece_hi(_mm512_load_si512(t.octave_piece + 16)),
        piece_cap(_mm512_load_si512(t.cap)), neg_cap(_mm512_set1_epi32(t.zero - 1)) {}

  FASTLR_Q8_AVX512 FASTLR_Q8_INLINE __m512i estimate(__m512 q, __m512& a, __mmask16& neg) const {
    a = _mm512_min_ps(_mm512_max_ps(Signed ? _mm512_abs_ps(q) : q, _mm512_set1_ps(Quant8Search::kTiny)),
                      _mm512_set1_ps(1.0f));
    const __m512i octave = _mm512_srli_epi32(_mm512_castps_si512(a), 23);  // the permutes read bits 0-4
    const __m512 bound = _mm512_permutex2var_ps(bound_lo, octave, bound_hi);
    __m512i d = _mm512_permutex2var_epi32(piece_lo, octave, piece_hi);
    d = _mm512_mask_add_epi32(d, _mm512_cmp_ps_mask(a, bound, _CMP_GE_OQ), d, _mm512_set1_epi32(1));
    const __m512 y = _mm512_fmsub_ps(a, _mm512_permutexvar_ps(d, slope), _mm512_permutexvar_ps(d, offset));
    __m512i k = _mm512_min_epi32(_mm512_cvttps_epi32(y), _mm512_permutexvar_epi32(d, piece_cap));
    neg = 0;
    if (Signed) {
      neg = _mm512_movepi32_mask(_mm512_castps_si512(q));
      k = _mm512_mask_min_epi32(k, neg, k, neg_cap);
    }
    return k;
  }
};

// With VBMI, 64 elements at a time (Quant8Words): the top halves of the floats' bits as
// 32 words per register, the line per octave in 16-bit integers, the estimates' high
// bytes packed into one register of 64 bytes, the next codes' thresholds looked up as
// byte planes (as dequant_vbmi) and compared with the floats as bit patterns (unsigned on
// the signed map: a negative float past its threshold has the larger pattern; signed on
// the unsigned map: negatives stay at code 0).
template <bool Signed>
FASTLR_Q8_VBMI __attribute__((noinline)) int64_t quantize_vbmi(const float* x, int64_t n, float inv,
                                                             const quant8::Quant8Words& t, const MapPlanes& thr,
                                                             uint8_t* c) {
  const PlaneLookup lut(thr);
  const __m512i split = _mm512_load_si512(t.split), lower_a = _mm512_load_si512(t.lower_a),
                lower_b = _mm512_load_si512(t.lower_b), upper_a = _mm512_load_si512(t.upper_a),
                upper_b = _mm512_load_si512(t.upper_b);
  const __m512i low = _mm512_set1_epi16(quant8::Quant8Words::kLowWord),
                high = _mm512_set1_epi16(quant8::Quant8Words::kHighWord), magnitude = _mm512_set1_epi16(0x7FFF);
  // word j of the result: word 2j + 1 of (a, b), the top half of float j
  alignas(64) static constexpr uint16_t kTopWords[32] = {1,  3,  5,  7,  9,  11, 13, 15, 17, 19, 21,
                                                         23, 25, 27, 29, 31, 33, 35, 37, 39, 41, 43,
                                                         45, 47, 49, 51, 53, 55, 57, 59, 61, 63};
  alignas(64) static constexpr uint8_t kHighBytes[64] = {
      1,  3,  5,  7,  9,  11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31, 33, 35, 37, 39, 41, 43,
      45, 47, 49, 51, 53, 55, 57, 59, 61, 63, 65, 67, 69, 71, 73, 75, 77, 79, 81, 83, 85, 87,
      89, 91, 93, 95, 97, 99, 101, 103, 105, 107, 109, 111, 113, 115, 117, 119, 121, 123, 125, 127};
  const __m512i top_words = _mm512_load_si512(kTopWords), high_bytes = _mm512_load_si512(kHighBytes);
  const __m512 vs = _mm512_set1_ps(inv);
  const __m512i zero_code = _mm512_set1_epi8(static_cast<char>(t.zero)), one = _mm512_set1_epi8(1),
                neg_cap = _mm512_set1_epi8(static_cast<char>(t.zero - 1));
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    __m512i q[4];
    __mmask16 ord[4];
    for (int r = 0; r < 4; ++r) {
      const __m512 v = _mm512_mul_ps(_mm512_loadu_ps(x + i + 16 * r), vs);
      ord[r] = _mm512_cmp_ps_mask(v, v, _CMP_ORD_Q);
      q[r] = _mm512_castps_si512(v);
    }
    __m512i y[2];
    __mmask32 neg[2] = {0, 0};
    for (int h = 0; h < 2; ++h) {
      const __m512i w = _mm512_permutex2var_epi16(q[2 * h], top_words, q[2 * h + 1]);
      __m512i m = w;
      if (Signed) {
        m = _mm512_and_si512(w, magnitude);
        neg[h] = _mm512_movepi16_mask(w);
      }
      m = _mm512_min_epi16(_mm512_max_epi16(m, low), high);  // unsigned map: negatives to 2^-31
      const __m512i octave = _mm512_srli_epi16(m, 7);        // the permutes read bits 0-4
      const __mmask32 up = _mm512_cmpgt_epu16_mask(m, _mm512_permutexvar_epi16(octave, split));
      const __m512i a = _mm512_mask_permutexvar_epi16(_mm512_permutexvar_epi16(octave, lower_a), up, octave, upper_a);
      const __m512i b = _mm512_mask_permutexvar_epi16(_mm512_permutexvar_epi16(octave, lower_b), up, octave, upper_b);
      y[h] = _mm512_add_epi16(a, _mm512_mullo_epi16(b, m));
    }
    const __m512i k = _mm512_permutex2var_epi8(y[0], high_bytes, y[1]);  // floor(y / 256), in element order
    __m512i est = k, next = _mm512_add_epi8(k, one);
    if (Signed) {
      const __mmask64 negs = _mm512_kunpackd(neg[1], neg[0]);
      const __m512i kc = _mm512_mask_min_epu8(k, negs, k, neg_cap);
      est = _mm512_mask_sub_epi8(_mm512_add_epi8(zero_code, kc), negs, zero_code, kc);
      next = _mm512_mask_sub_epi8(_mm512_add_epi8(est, one), negs, est, one);
    }
    __m512 th[4];
    lut.floats(next, th);
    __mmask16 past[4];
    for (int r = 0; r < 4; ++r)
      past[r] = Signed ? _mm512_cmp_epu32_mask(q[r], _mm512_castps_si512(th[r]), _MM_CMPINT_NLT)
                       : _mm512_cmp_epi32_mask(q[r], _mm512_castps_si512(th[r]), _MM_CMPINT_NLT);
    const __mmask64 pass = _mm512_kunpackd(_mm512_kunpackw(past[3], past[2]), _mm512_kunpackw(past[1], past[0]));
    const __mmask64 ordered = _mm512_kunpackd(_mm512_kunpackw(ord[3], ord[2]), _mm512_kunpackw(ord[1], ord[0]));
    _mm512_storeu_si512(c + i, _mm512_maskz_mov_epi8(ordered, _mm512_mask_blend_epi8(pass, est, next)));
  }
  return i;
}

// Without VBMI (Skylake-X), 16 at a time, the thresholds gathered.
template <bool Signed>
FASTLR_Q8_AVX512 void quantize_avx512(const float* x, int64_t n, float inv, const Quant8Search& t, uint8_t* c) {
  const Search512<Signed> s(t);
  const __m512 vs = _mm512_set1_ps(inv);
  const __m512i zero_code = _mm512_set1_epi32(t.zero), one = _mm512_set1_epi32(1);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 v = _mm512_mul_ps(_mm512_loadu_ps(x + i), vs);
    __m512 a;
    __mmask16 neg;
    const __m512i k = s.estimate(v, a, neg);
    __m512i est = k, next = _mm512_add_epi32(k, one);
    if (Signed) {
      est = _mm512_mask_sub_epi32(_mm512_add_epi32(zero_code, k), neg, zero_code, k);
      next = _mm512_mask_sub_epi32(_mm512_add_epi32(est, one), neg, est, one);
    }
    const __m512 th = _mm512_i32gather_ps(next, t.thr, 4);
    const __m512i code = _mm512_mask_blend_epi32(_mm512_cmp_ps_mask(a, th, _CMP_GE_OQ), est, next);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(c + i),
                     _mm512_cvtepi32_epi8(_mm512_maskz_mov_epi32(_mm512_cmp_ps_mask(v, v, _CMP_ORD_Q), code)));
  }
  for (; i < n; ++i) c[i] = t.code(x[i] * inv);
}

const MapPlanes& thr_planes(const Quant8Search& t) {
  auto floats = [](const uint32_t* bits) { return reinterpret_cast<const float*>(bits); };
  static const MapPlanes signed_thr(floats(quant8::signed_words().thr_bits)),
      unsigned_thr(floats(quant8::unsigned_words().thr_bits));
  return t.is_signed ? signed_thr : unsigned_thr;
}

FASTLR_Q8_AVX512 __attribute__((noinline)) void quantize(Avx512, const float* x, int64_t n, float inv,
                                                const Quant8Search& t, uint8_t* c) {
  int64_t i = 0;
  if (has_vbmi())
    i = t.is_signed ? quantize_vbmi<true>(x, n, inv, quant8::signed_words(), thr_planes(t), c)
                    : quantize_vbmi<false>(x, n, inv, quant8::unsigned_words(), thr_planes(t), c);
  t.is_signed ? quantize_avx512<true>(x + i, n - i, inv, t, c + i) : quantize_avx512<false>(x + i, n - i, inv, t, c + i);
}
#endif

// ------------------------------------------------------------- scalars ---

// c ? a : b through integer masks: a float ternary keeps gcc from vectorizing the loop
// (under -ftrapping-math it will not if-convert it; see split_on in kernels.cpp).
FASTLR_Q8_INLINE float pick(bool c, float a, float b) {
  const uint32_t m = 0u - static_cast<uint32_t>(c);
  return float_of((bits_of(a) & m) | (bits_of(b) & ~m));
}
// torch's lerp with the side chosen once per call: start + w·(end − start) for w < 0.5,
// else end − (end − start)·(1 − w), written as base + coef·(end − start) with base and
// coef fixed per call (x − y·c and x + y·(−c) round alike).
struct Lerp {
  uint32_t start_mask;  // all ones: base = start
  float coef;
};
FASTLR_Q8_INLINE Lerp make_lerp(float w) {
  return w < 0.5f ? Lerp{0xFFFFFFFFu, w} : Lerp{0u, -(1.0f - w)};
}
FASTLR_Q8_INLINE float lerp_by(const Lerp& l, float start, float end) {
  const float base = float_of((bits_of(start) & l.start_mask) | (bits_of(end) & ~l.start_mask));
  return base + l.coef * (end - start);
}

FASTLR_Q8_INLINE float block_scale(uint32_t absmax_bits) {
  // torchao: amax(|x|).clip(1e-12): NaN propagates (its bits are the largest), as inf
  const float s = float_of(absmax_bits);
  return (s < 1e-12f) ? 1e-12f : s;
}

// Random bits of stochastic rounding: the call's key from (seed, step), one per block
// from (tensor id, element index >> 32), one hash per element.
uint32_t call_key(uint64_t seed, double step) {
  return lowbias32(static_cast<uint32_t>(seed) ^
                   lowbias32(static_cast<uint32_t>(seed >> 32) ^ lowbias32(static_cast<uint32_t>(step))));
}
uint32_t block_key(uint32_t key, const Quant8List& list, int64_t i, int64_t start) {
  const uint64_t id = list.tensor_ids ? static_cast<uint64_t>(list.tensor_ids[i]) : static_cast<uint64_t>(i);
  return key ^ lowbias32(static_cast<uint32_t>(id) + 0x632BE5ABu) ^
         lowbias32(static_cast<uint32_t>(id >> 32) * 0x9E3779B9u) ^ lowbias32(static_cast<uint32_t>(start >> 32));
}
FASTLR_Q8_INLINE uint32_t element_bits(uint32_t key, int64_t elem0, int64_t i) {
  return lowbias32(key ^ lowbias32(static_cast<uint32_t>(elem0) + static_cast<uint32_t>(i))) & 0xFFFFu;
}

// One storage policy per block function (rounding.hpp): states are 8-bit codes.
template <class P, Rounding R>
using ParamOnly = Storage<P, P, uint8_t, NoMaster, R>;
template <class P, class G>
using WithMaster = Storage<P, G, uint8_t, float, Rounding::nearest>;

// Stores the updated param (and master): the param is the master rounded to nearest, or
// the value itself rounded as S says.
template <class S>
FASTLR_Q8_INLINE void put_param(typename S::Param& p, float* m, float x, uint32_t key, int64_t elem0, int64_t i) {
  if constexpr (S::has_master) {
    *m = x;
    store(p, x);
  } else {
    const uint32_t r = S::rounding == Rounding::stochastic ? element_bits(key, elem0, i) : 0u;
    store_rounded<S::rounding>(p, x, r);
  }
}

// ------------------------------------------------- torchao-flavour block ---

struct Adam8Scalars {
  float grad_mul, weight_decay, lr_wd, one_minus_beta1, beta2, one_minus_beta2, bias_correction2_sqrt, eps,
      step_size;
  Lerp lerp1, lerp2;
};

// torchao's AdamW8bit for one block of n <= kMaxBlock elements (Q8: quantized state;
// else dense state of the param's type, its small-tensor path). ptrs: param, grad,
// exp_avg, exp_avg_sq, max_exp_avg_sq; scales: the block's scale of each quantized role.
template <class L, class S, WeightDecay WD, bool AMS, bool Q8>
FASTLR_Q8_INLINE void adam8_block(int64_t n, char* const* ptrs, float* const* scales, const Adam8Scalars& s,
                                  uint32_t key, int64_t elem0) {
  using T = typename S::Param;
  T* __restrict p = reinterpret_cast<T*>(ptrs[0]);
  const T* __restrict g = reinterpret_cast<const T*>(ptrs[1]);
  alignas(64) float mb[kMaxBlock];
  alignas(64) float vb[kMaxBlock];
  alignas(64) float xb[AMS ? kMaxBlock : 1];
  const Quant8Search& st = quant8::signed_search();
  const Quant8Search& ut = quant8::unsigned_search();
  prefetch_ahead<true>(p, n);
  prefetch_ahead<false>(g, n);
  if (Q8) {
    for (int r = 0; r < (AMS ? 3 : 2); ++r) prefetch_ahead<true>(reinterpret_cast<const uint8_t*>(ptrs[2 + r]), n);
    dequant(L{}, reinterpret_cast<const uint8_t*>(ptrs[2]), n, quant8::kSignedMap, *scales[0], mb);
    dequant(L{}, reinterpret_cast<const uint8_t*>(ptrs[3]), n, quant8::kUnsignedMap, *scales[1], vb);
    if (AMS) dequant(L{}, reinterpret_cast<const uint8_t*>(ptrs[4]), n, quant8::kUnsignedMap, *scales[2], xb);
  } else {
    const T* __restrict m0 = reinterpret_cast<const T*>(ptrs[2]);
    const T* __restrict v0 = reinterpret_cast<const T*>(ptrs[3]);
    const T* __restrict x0 = reinterpret_cast<const T*>(ptrs[4]);
    for (int64_t i = 0; i < n; ++i) {
      mb[i] = load(m0[i]);
      vb[i] = load(v0[i]);
      if (AMS) xb[i] = load(x0[i]);
    }
  }
  uint32_t am = 0, av = 0, ax = 0;
  float* __restrict m = mb;
  float* __restrict v = vb;
  float* __restrict x = xb;
  for (int64_t i = 0; i < n; ++i) {
    float pi = load(p[i]);
    float gi = load(g[i]) * s.grad_mul;
    if (WD == WeightDecay::coupled) gi = gi + s.weight_decay * pi;
    if (WD == WeightDecay::decoupled) pi = pi - s.lr_wd * pi;
    const float mi = lerp_by(s.lerp1, m[i], gi);
    const float vi = lerp_by(s.lerp2, v[i], gi * gi);
    float denom_src = vi;
    if (AMS) {
      const float xm = pick(x[i] < vi || vi != vi, vi, x[i]);
      x[i] = xm;
      denom_src = xm;
    }
    const float denom = std::sqrt(denom_src) / s.bias_correction2_sqrt + s.eps;
    pi = pi - (s.step_size * mi) / denom;  // torchao: lr·(m/bc1)/denom (one division here)
    m[i] = mi;
    v[i] = vi;
    put_param<S>(p[i], nullptr, pi, key, elem0, i);
    if (Q8) {
      am = std::max(am, bits_of(m[i]) & 0x7FFFFFFFu);
      av = std::max(av, bits_of(v[i]) & 0x7FFFFFFFu);
      if (AMS) ax = std::max(ax, bits_of(x[i]) & 0x7FFFFFFFu);
    }
  }
  if (Q8) {
    const float sm = block_scale(am), sv = block_scale(av);
    *scales[0] = sm;
    *scales[1] = sv;
    // x·(1/scale): one division per block instead of one per element
    quantize(L{}, mb, n, 1.0f / sm, st, reinterpret_cast<uint8_t*>(ptrs[2]));
    quantize(L{}, vb, n, 1.0f / sv, ut, reinterpret_cast<uint8_t*>(ptrs[3]));
    if (AMS) {
      const float sx = block_scale(ax);
      *scales[2] = sx;
      quantize(L{}, xb, n, 1.0f / sx, ut, reinterpret_cast<uint8_t*>(ptrs[4]));
    }
  } else {
    T* __restrict m0 = reinterpret_cast<T*>(ptrs[2]);
    T* __restrict v0 = reinterpret_cast<T*>(ptrs[3]);
    T* __restrict x0 = reinterpret_cast<T*>(ptrs[4]);
    for (int64_t i = 0; i < n; ++i) {
      store(m0[i], mb[i]);
      store(v0[i], vb[i]);
      if (AMS) store(x0[i], xb[i]);
    }
  }
}

// ------------------------------------------------- fastlr-flavour rules ---
// torch.optim's per-element arithmetic (update.hpp, operation for operation) on the
// dequantized state. Up to three state roles: uses(r) says which, is_signed(r) how each
// is stored (signed map: the value; unsigned map: its square root, which the rule
// receives and returns). Runtime options are masks (pick), not template parameters: one
// block function per rule shape and storage.

struct Q8Scalars {
  float grad_mul, weight_decay, decay_factor, beta2, one_minus_beta2, inv_bias_correction2_sqrt, eps, neg_lr,
      momentum, one_minus_dampening;
  bool coupled, nesterov, first;
  Lerp lerp;  // exp_avg, grad_avg
};

FASTLR_Q8_INLINE float coupled_decay(const Q8Scalars& s, float g, float p) {
  return pick(s.coupled, g + s.weight_decay * p, g);
}

// Adam/AdamW: exp_avg (signed), sqrt(exp_avg_sq), sqrt(max_exp_avg_sq). An element whose
// sqrt(v) is below its block's smallest code (dequantizes to 0) forgets its exp_avg too:
// it is as far below the block's resolution, and m/eps is no step to take.
template <bool AMS>
struct Adam8Rule {
  static constexpr bool uses(int r) { return r < (AMS ? 3 : 2); }
  static constexpr bool is_signed(int r) { return r == 0; }
  static FASTLR_Q8_INLINE void update(float& p, float g, float& m, float& r, float& x, const Q8Scalars& s) {
    g = g * s.grad_mul;
    const float m_in = pick(r == 0.0f, 0.0f, m);
    g = coupled_decay(s, g, p);
    p = p * s.decay_factor;  // 1 unless decoupled
    m = lerp_by(s.lerp, m_in, g);
    const float v = (r * r) * s.beta2 + (s.one_minus_beta2 * g) * g;
    float root = std::sqrt(v);
    r = root;
    if (AMS) {
      x = pick(x < root || root != root, root, x);  // torch.maximum propagates NaN
      root = x;
    }
    // · 1/sqrt(bias_correction2) where torch divides: one division per element, not two
    const float denom = root * s.inv_bias_correction2_sqrt + s.eps;
    p = p + (s.neg_lr * m) / denom;  // neg_lr: −lr / bias_correction1
  }
};

// SGD: momentum_buffer (signed); without momentum no state (a momentum schedule at 0).
template <bool MOM>
struct Sgd8Rule {
  static constexpr bool uses(int r) { return MOM && r == 0; }
  static constexpr bool is_signed(int) { return true; }
  static FASTLR_Q8_INLINE void update(float& p, float g, float& buf, float&, float&, const Q8Scalars& s) {
    g = coupled_decay(s, g * s.grad_mul, p);
    if (MOM) {
      buf = pick(s.first, g, buf * s.momentum + s.one_minus_dampening * g);  // torch: clone(grad) first
      g = pick(s.nesterov, g + s.momentum * buf, buf);
    }
    p = p + s.neg_lr * g;
  }
};

// RMSprop: sqrt(square_avg), grad_avg (signed, centered), momentum_buffer (signed).
// Centered: square_avg − grad_avg² is clamped at 0 before its square root: each is
// quantized on its own, so the difference can come out negative (float32 torch: NaN).
// As Adam's exp_avg, grad_avg restarts from 0 where sqrt(square_avg) dequantizes to 0.
template <bool CENTERED, bool MOM>
struct Rmsprop8Rule {
  static constexpr bool uses(int r) { return r == 0 || (r == 1 && CENTERED) || (r == 2 && MOM); }
  static constexpr bool is_signed(int r) { return r != 0; }
  static FASTLR_Q8_INLINE void update(float& p, float g, float& r, float& ga, float& buf, const Q8Scalars& s) {
    g = coupled_decay(s, g * s.grad_mul, p);
    const float sq = (r * r) * s.beta2 + (s.one_minus_beta2 * g) * g;  // beta2: alpha
    float avg;
    if (CENTERED) {
      ga = lerp_by(s.lerp, pick(r == 0.0f, 0.0f, ga), g);
      const float var = sq + (-1.0f * ga) * ga;
      avg = std::sqrt(pick(var < 0.0f, 0.0f, var));
      r = std::sqrt(sq);
    } else {
      avg = std::sqrt(sq);
      r = avg;
    }
    avg = avg + s.eps;
    if (MOM) {
      buf = pick(s.first, 0.0f, buf * s.momentum) + g / avg;
      p = p + s.neg_lr * buf;
    } else {
      p = p + (s.neg_lr * g) / avg;
    }
  }
};

// Adagrad: sqrt(sum). neg_lr: −lr / (1 + (step − 1)·lr_decay).
struct Adagrad8Rule {
  static constexpr bool uses(int r) { return r == 0; }
  static constexpr bool is_signed(int) { return false; }
  static FASTLR_Q8_INLINE void update(float& p, float g, float& r, float&, float&, const Q8Scalars& s) {
    g = coupled_decay(s, g * s.grad_mul, p);
    const float sum = r * r + g * g;
    r = std::sqrt(sum);
    p = p + (s.neg_lr * g) / (r + s.eps);
  }
};

// ---------------------------------------------------------------- block ---

struct Q8Block {
  char* param;
  const char* grad;
  float* master;
  uint8_t* codes[3];
  float* scale[3];
  uint32_t key;
  int64_t elem0;
};

template <class Rule>
constexpr const float* role_map(int r) {
  return Rule::is_signed(r) ? quant8::kSignedMap : quant8::kUnsignedMap;
}
template <class Rule>
const Quant8Search& role_search(int r) {
  return Rule::is_signed(r) ? quant8::signed_search() : quant8::unsigned_search();
}

// One block of n <= kMaxBlock elements: dequantize each state role into an L1 buffer,
// update (params and masters written in place), take each role's absmax, re-quantize.
template <class L, class S, class Rule>
FASTLR_Q8_INLINE void q8_block(int64_t n, const Q8Block& b, const Q8Scalars& s) {
  using P = typename S::Param;
  using G = typename S::Grad;
  P* __restrict p = reinterpret_cast<P*>(b.param);
  const G* __restrict g = reinterpret_cast<const G*>(b.grad);
  float* __restrict mp = b.master;
  alignas(64) float buf0[Rule::uses(0) ? kMaxBlock : 1];
  alignas(64) float buf1[Rule::uses(1) ? kMaxBlock : 1];
  alignas(64) float buf2[Rule::uses(2) ? kMaxBlock : 1];
  float* const bufs[3] = {buf0, buf1, buf2};
  prefetch_ahead<true>(p, n);
  prefetch_ahead<false>(g, n);
  if (S::has_master) prefetch_ahead<true>(mp, n);
  for (int r = 0; r < 3; ++r)
    if (Rule::uses(r)) prefetch_ahead<true>(b.codes[r], n);
  for (int r = 0; r < 3; ++r)
    if (Rule::uses(r)) dequant(L{}, b.codes[r], n, role_map<Rule>(r), *b.scale[r], bufs[r]);
  float* __restrict x0 = buf0;
  float* __restrict x1 = buf1;
  float* __restrict x2 = buf2;
  uint32_t a0 = 0, a1 = 0, a2 = 0;
  for (int64_t i = 0; i < n; ++i) {
    float pi = S::has_master ? mp[i] : load(p[i]);
    float v0 = Rule::uses(0) ? x0[i] : 0.0f;
    float v1 = Rule::uses(1) ? x1[i] : 0.0f;
    float v2 = Rule::uses(2) ? x2[i] : 0.0f;
    Rule::update(pi, load(g[i]), v0, v1, v2, s);
    put_param<S>(p[i], mp + i, pi, b.key, b.elem0, i);
    if (Rule::uses(0)) {
      x0[i] = v0;
      a0 = std::max(a0, bits_of(v0) & 0x7FFFFFFFu);
    }
    if (Rule::uses(1)) {
      x1[i] = v1;
      a1 = std::max(a1, bits_of(v1) & 0x7FFFFFFFu);
    }
    if (Rule::uses(2)) {
      x2[i] = v2;
      a2 = std::max(a2, bits_of(v2) & 0x7FFFFFFFu);
    }
  }
  const uint32_t amax[3] = {a0, a1, a2};
  for (int r = 0; r < 3; ++r) {
    if (!Rule::uses(r)) continue;
    const float sc = block_scale(amax[r]);
    *b.scale[r] = sc;
    // x·(1/scale): one division per block instead of one per element
    quantize(L{}, bufs[r], n, 1.0f / sc, role_search<Rule>(r), b.codes[r]);
  }
}

using BlockFn = void (*)(int64_t n, char* const* ptrs, float* const* scales, const Adam8Scalars& s, uint32_t key,
                         int64_t elem0);
using Q8Fn = void (*)(int64_t n, const Q8Block& b, const Q8Scalars& s);

#define FASTLR_Q8_STAMP(NS, TAG, TARGET)                                                              \
  namespace NS {                                                                                      \
  template <class S, WeightDecay WD, bool AMS, bool Q8>                                               \
  TARGET void adam8(int64_t n, char* const* ptrs, float* const* scales, const Adam8Scalars& s,        \
                    uint32_t key, int64_t elem0) {                                                    \
    adam8_block<TAG, S, WD, AMS, Q8>(n, ptrs, scales, s, key, elem0);                                 \
  }                                                                                                   \
  template <class S, class Rule>                                                                      \
  TARGET void q8(int64_t n, const Q8Block& b, const Q8Scalars& s) {                                   \
    q8_block<TAG, S, Rule>(n, b, s);                                                                  \
  }                                                                                                   \
  TARGET void codes(const float* x, int64_t n, const Quant8Search& t, uint8_t* out) {                  \
    quantize(TAG{}, x, n, 1.0f, t, out);                                                              \
  }                                                                                                   \
  }

FASTLR_Q8_STAMP(q8_baseline, Base, )
#if FASTLR_Q8_X86
FASTLR_Q8_STAMP(q8_avx2, Avx2, FASTLR_Q8_AVX2)
FASTLR_Q8_STAMP(q8_avx512, Avx512, FASTLR_Q8_AVX512)
#endif

// ------------------------------------------------------------- dispatch ---

template <class S, WeightDecay WD, bool AMS, bool Q8>
BlockFn pick_level(CpuLevel level) {
#if FASTLR_Q8_X86
  if (level == CpuLevel::avx512) return &q8_avx512::adam8<S, WD, AMS, Q8>;
  if (level == CpuLevel::avx2) return &q8_avx2::adam8<S, WD, AMS, Q8>;
#endif
  (void)level;
  return &q8_baseline::adam8<S, WD, AMS, Q8>;
}

template <class S, WeightDecay WD>
BlockFn pick_mode(bool ams, bool q8, CpuLevel level) {
  if (ams) return q8 ? pick_level<S, WD, true, true>(level) : pick_level<S, WD, true, false>(level);
  return q8 ? pick_level<S, WD, false, true>(level) : pick_level<S, WD, false, false>(level);
}

template <class S>
BlockFn pick_torchao(bool coupled, bool ams, bool q8, CpuLevel level) {
  return coupled ? pick_mode<S, WeightDecay::coupled>(ams, q8, level)
                 : pick_mode<S, WeightDecay::decoupled>(ams, q8, level);
}

template <class S, class Rule>
Q8Fn pick_q8_level(CpuLevel level) {
#if FASTLR_Q8_X86
  if (level == CpuLevel::avx512) return &q8_avx512::q8<S, Rule>;
  if (level == CpuLevel::avx2) return &q8_avx2::q8<S, Rule>;
#endif
  (void)level;
  return &q8_baseline::q8<S, Rule>;
}

// The storages built: float32; bfloat16/float16 rounded to nearest or stochastically;
// bfloat16/float16 with a float32 master and grads of the params' type or float32.
template <class Rule>
Q8Fn pick_storage(const Quant8Precision& p, CpuLevel level) {
  const bool sr = p.stochastic;
  if (p.master) {
    const bool f32_grad = p.grad == DType::float32;
    if (p.param == DType::bfloat16)
      return f32_grad ? pick_q8_level<WithMaster<bf16, float>, Rule>(level)
                      : pick_q8_level<WithMaster<bf16, bf16>, Rule>(level);
    return f32_grad ? pick_q8_level<WithMaster<f16, float>, Rule>(level)
                    : pick_q8_level<WithMaster<f16, f16>, Rule>(level);
  }
  switch (p.param) {
    case DType::bfloat16:
      return sr ? pick_q8_level<ParamOnly<bf16, Rounding::stochastic>, Rule>(level)
                : pick_q8_level<ParamOnly<bf16, Rounding::nearest>, Rule>(level);
    case DType::float16:
      return sr ? pick_q8_level<ParamOnly<f16, Rounding::stochastic>, Rule>(level)
                : pick_q8_level<ParamOnly<f16, Rounding::nearest>, Rule>(level);
    default:
      return pick_q8_level<ParamOnly<float, Rounding::nearest>, Rule>(level);
  }
}

// Runs f(i, j, start, n) for every block j of every tensor i, on the threads in chunks of
// about kChunkElements elements from a shared counter (the result does not depend on the
// split: blocks are independent).
template <class F>
void for_each_block(const Quant8List& list, int64_t* offsets, F&& f) {
  const int64_t block = list.block;
  offsets[0] = 0;
  for (int64_t i = 0; i < list.size; ++i) offsets[i + 1] = offsets[i] + (list.numel[i] + block - 1) / block;
  const int64_t total_blocks = offsets[list.size];
  if (total_blocks == 0) return;
  int64_t total = 0;
  for (int64_t i = 0; i < list.size; ++i) total += list.numel[i];
  auto run_block = [&](int64_t b) {
    const int64_t i = std::upper_bound(offsets, offsets + list.size + 1, b) - offsets - 1;
    const int64_t j = b - offsets[i];
    const int64_t start = j * block;
    f(i, j, start, std::min(block, list.numel[i] - start));
  };
  const int64_t by_grain = std::max<int64_t>(1, total / kMinElementsPerThread);
  const int nt = static_cast<int>(std::min<int64_t>(std::max(get_num_threads(), 1), by_grain));
#if defined(_OPENMP)
  if (nt > 1) {
    const int64_t per_chunk = std::max<int64_t>(1, kChunkElements / block);
    const int64_t chunks = (total_blocks + per_chunk - 1) / per_chunk;
    std::atomic<int64_t> next{0};
#pragma omp parallel num_threads(nt)
    {
      for (int64_t c = next.fetch_add(1, std::memory_order_relaxed); c < chunks;
           c = next.fetch_add(1, std::memory_order_relaxed)) {
        const int64_t hi = std::min(total_blocks, (c + 1) * per_chunk);
        for (int64_t b = c * per_chunk; b < hi; ++b) run_block(b);
      }
    }
    return;
  }
#endif
  for (int64_t b = 0; b < total_blocks; ++b) run_block(b);
}

void check_list(const Quant8Precision& prec, const Quant8List& list) {
  if (list.block < 1 || list.block > kMaxBlock) throw std::invalid_argument("block_size must be in [1, 4096]");
  const std::string why = unsupported_quant8_precision(prec);
  if (!why.empty()) throw std::invalid_argument(why);
  if (prec.master && list.master == nullptr) throw std::invalid_argument("masters are required");
}

// The fastlr-flavour call: one rule over the list.
template <class Rule>
void run_q8(const Quant8Precision& prec, const Quant8List& list, int64_t* offsets, const Q8Scalars& s,
            uint32_t key) {
  const Q8Fn fn = pick_storage<Rule>(prec, cpu_level());
  const int psize = dtype_size(prec.param), gsize = dtype_size(prec.grad);
  for_each_block(list, offsets, [&](int64_t i, int64_t j, int64_t start, int64_t n) {
    Q8Block b{};
    b.param = list.param[i] + start * psize;
    b.grad = list.grad[i] + start * gsize;
    b.master = prec.master ? reinterpret_cast<float*>(list.master[i]) + start : nullptr;
    for (int r = 0; r < 3; ++r) {
      if (!Rule::uses(r)) continue;
      b.codes[r] = reinterpret_cast<uint8_t*>(list.state[r][i]) + start;
      b.scale[r] = list.scale[r][i] + j;
    }
    b.key = block_key(key, list, i, start);
    b.elem0 = start;
    fn(n, b, s);
  });
}

void require_states(const Quant8List& list, std::initializer_list<std::pair<int, const char*>> roles) {
  for (const auto& r : roles)
    if (list.state[r.first] == nullptr || list.scale[r.first] == nullptr)
      throw std::invalid_argument(std::string(r.second) + " are required");
}

Q8Scalars base_scalars(double grad_mul, double weight_decay, bool coupled) {
  Q8Scalars s{};
  s.grad_mul = static_cast<float>(grad_mul);
  s.weight_decay = static_cast<float>(weight_decay);
  s.coupled = coupled && weight_decay != 0.0;
  s.decay_factor = 1.0f;
  s.lerp = make_lerp(0.0f);
  return s;
}

}  // namespace

std::string unsupported_quant8_precision(const Quant8Precision& p) {
  if (p.param != DType::float32 && p.param != DType::bfloat16 && p.param != DType::float16)
    return "8-bit state kernels take float32, bfloat16 or float16 params";
  if (p.master && p.param == DType::float32)
    return "masters are for bfloat16/float16 params";
  if (p.grad != p.param && !(p.master && p.grad == DType::float32))
    return "grads must have the params' dtype (or float32 with masters)";
  return "";
}

void adam8(const Quant8List& list, int64_t* offsets, const Adam8Args& a) {
  const bool coupled = a.weight_decay != 0.0 && !a.decoupled_weight_decay;
  const double bc1 = 1.0 - std::pow(a.beta1, a.step);
  const double bc2 = 1.0 - std::pow(a.beta2, a.step);
  const uint32_t key = call_key(a.seed, a.step);
  const bool half = a.store == ParamStore::f16 || a.store == ParamStore::f16_sr;
  const DType param = a.store == ParamStore::f32 ? DType::float32 : half ? DType::float16 : DType::bfloat16;
  const bool stochastic = a.store == ParamStore::bf16_sr || a.store == ParamStore::f16_sr;
  if (a.flavour == Quant8Flavour::fastlr) {
    if (!list.q8) throw std::invalid_argument("the fastlr flavour always quantizes (q8=True)");
    const Quant8Precision prec{param, a.grad, a.master, stochastic && !a.master};
    check_list(prec, list);
    require_states(list, {{0, "exp_avgs"}, {1, "exp_avg_sqs"}});
    if (a.amsgrad) require_states(list, {{2, "max_exp_avg_sqs"}});
    // torch.optim.Adam's scalars, as kernels.cpp (weight decay 0 runs as factor 1: exact)
    Q8Scalars s = base_scalars(a.grad_mul, a.weight_decay, coupled);
    s.decay_factor = static_cast<float>(coupled || a.weight_decay == 0.0 ? 1.0 : 1.0 - a.lr * a.weight_decay);
    s.beta2 = static_cast<float>(a.beta2);
    s.one_minus_beta2 = static_cast<float>(1.0 - a.beta2);
    s.inv_bias_correction2_sqrt = static_cast<float>(1.0 / std::sqrt(bc2));
    s.eps = static_cast<float>(a.eps);
    s.neg_lr = static_cast<float>(-(a.lr / bc1));
    s.lerp = make_lerp(static_cast<float>(1.0 - a.beta1));
    if (a.amsgrad) return run_q8<Adam8Rule<true>>(prec, list, offsets, s, key);
    return run_q8<Adam8Rule<false>>(prec, list, offsets, s, key);
  }
  if (a.master || a.grad != param) throw std::invalid_argument("the torchao flavour takes no masters");
  if (a.store == ParamStore::f16_sr) throw std::invalid_argument("the torchao flavour rounds float16 to nearest");
  if (list.block < 1 || list.block > kMaxBlock) throw std::invalid_argument("block_size must be in [1, 4096]");
  BlockFn fn;
  const CpuLevel level = cpu_level();
  using RN = Rounding;
  switch (a.store) {
    case ParamStore::bf16: fn = pick_torchao<ParamOnly<bf16, RN::nearest>>(coupled, a.amsgrad, list.q8, level); break;
    case ParamStore::bf16_sr:
      fn = pick_torchao<ParamOnly<bf16, RN::stochastic>>(coupled, a.amsgrad, list.q8, level);
      break;
    case ParamStore::f16: fn = pick_torchao<ParamOnly<f16, RN::nearest>>(coupled, a.amsgrad, list.q8, level); break;
    default: fn = pick_torchao<ParamOnly<float, RN::nearest>>(coupled, a.amsgrad, list.q8, level); break;
  }
  // torchao's scalars are float32 tensors: lr·wd and the bias corrections in float32
  Adam8Scalars s;
  s.grad_mul = static_cast<float>(a.grad_mul);
  s.weight_decay = static_cast<float>(a.weight_decay);
  s.one_minus_beta1 = static_cast<float>(1.0 - a.beta1);
  s.beta2 = static_cast<float>(a.beta2);
  s.one_minus_beta2 = static_cast<float>(1.0 - a.beta2);
  s.eps = static_cast<float>(a.eps);
  s.lerp1 = make_lerp(s.one_minus_beta1);
  s.lerp2 = make_lerp(s.one_minus_beta2);
  s.lr_wd = static_cast<float>(static_cast<double>(static_cast<float>(a.lr)) * static_cast<float>(a.weight_decay));
  s.bias_correction2_sqrt = std::sqrt(static_cast<float>(bc2));
  s.step_size = static_cast<float>(a.lr / bc1);
  const int psize = dtype_size(param);
  const int ssize = list.q8 ? 1 : psize;
  for_each_block(list, offsets, [&](int64_t i, int64_t j, int64_t start, int64_t n) {
    char* ptrs[5] = {list.param[i] + start * psize, list.grad[i] + start * psize, nullptr, nullptr, nullptr};
    float* sp[3] = {nullptr, nullptr, nullptr};
    for (int r = 0; r < 3; ++r) {
      if (list.state[r] == nullptr || list.state[r][i] == nullptr) continue;
      ptrs[2 + r] = list.state[r][i] + start * ssize;
      if (list.q8) sp[r] = list.scale[r][i] + j;
    }
    fn(n, ptrs, sp, s, block_key(key, list, i, start), start);
  });
}

void sgd8(const Quant8Precision& prec, const Quant8List& list, int64_t* offsets, const Sgd8Args& a) {
  check_list(prec, list);
  if (a.use_momentum) require_states(list, {{0, "momentum_buffers"}});
  Q8Scalars s = base_scalars(a.grad_mul, a.weight_decay, true);
  s.momentum = static_cast<float>(a.momentum);
  s.one_minus_dampening = static_cast<float>(1.0 - a.dampening);
  s.neg_lr = static_cast<float>(-a.lr);
  s.nesterov = a.nesterov;
  s.first = a.first_step;
  const uint32_t key = call_key(a.seed, static_cast<double>(a.step));
  if (a.use_momentum) return run_q8<Sgd8Rule<true>>(prec, list, offsets, s, key);
  run_q8<Sgd8Rule<false>>(prec, list, offsets, s, key);
}

void rmsprop8(const Quant8Precision& prec, const Quant8List& list, int64_t* offsets, const Rmsprop8Args& a) {
  check_list(prec, list);
  require_states(list, {{0, "square_avgs"}});
  if (a.centered) require_states(list, {{1, "grad_avgs"}});
  if (a.use_momentum) require_states(list, {{2, "momentum_buffers"}});
  Q8Scalars s = base_scalars(a.grad_mul, a.weight_decay, true);
  s.beta2 = static_cast<float>(a.alpha);
  s.one_minus_beta2 = static_cast<float>(1.0 - a.alpha);
  s.lerp = make_lerp(static_cast<float>(1.0 - a.alpha));
  s.eps = static_cast<float>(a.eps);
  s.momentum = static_cast<float>(a.momentum);
  s.neg_lr = static_cast<float>(-a.lr);
  s.first = a.first_step;
  const uint32_t key = call_key(a.seed, static_cast<double>(a.step));
  if (a.centered)
    return a.use_momentum ? run_q8<Rmsprop8Rule<true, true>>(prec, list, offsets, s, key)
                          : run_q8<Rmsprop8Rule<true, false>>(prec, list, offsets, s, key);
  return a.use_momentum ? run_q8<Rmsprop8Rule<false, true>>(prec, list, offsets, s, key)
                        : run_q8<Rmsprop8Rule<false, false>>(prec, list, offsets, s, key);
}

void adagrad8(const Quant8Precision& prec, const Quant8List& list, int64_t* offsets, const Adagrad8Args& a) {
  check_list(prec, list);
  require_states(list, {{0, "state_sums"}});
  Q8Scalars s = base_scalars(a.grad_mul, a.weight_decay, true);
  s.eps = static_cast<float>(a.eps);
  s.neg_lr = static_cast<float>(-(a.lr / (1.0 + static_cast<double>(a.step - 1) * a.lr_decay)));
  run_q8<Adagrad8Rule>(prec, list, offsets, s, call_key(a.seed, static_cast<double>(a.step)));
}
void quant8_codes(const float* x, int64_t n, bool signed_map, int level, uint8_t* out) {
  const Quant8Search& t = signed_map ? quant8::signed_search() : quant8::unsigned_search();
  if (level < 0) {
    for (int64_t i = 0; i < n; ++i) out[i] = quant8::nearest_code_reference(x[i], t.map);
    return;
  }
  if (level > static_cast<int>(detected_cpu_level())) throw std::invalid_argument("CPU level not supported here");
#if FASTLR_Q8_X86
  if (level == 2) return q8_avx512::codes(x, n, t, out);
  if (level == 1) return q8_avx2::codes(x, n, t, out);
#endif
  q8_baseline::codes(x, n, t, out);
}

int64_t quant8_check(bool signed_map, int level, uint64_t lo, uint64_t hi) {
  const Quant8Search& t = signed_map ? quant8::signed_search() : quant8::unsigned_search();
  if (level > static_cast<int>(detected_cpu_level())) throw std::invalid_argument("CPU level not supported here");
  hi = std::min<uint64_t>(hi, uint64_t(1) << 32);
  if (lo >= hi) return 0;
  constexpr int64_t kSpan = 1 << 14;
  const int64_t chunks = static_cast<int64_t>((hi - lo + kSpan - 1) / kSpan);
  int64_t bad = 0;
#if defined(_OPENMP)
#pragma omp parallel for schedule(dynamic, 64) reduction(+ : bad) num_threads(std::max(get_num_threads(), 1))
#endif
  for (int64_t c = 0; c < chunks; ++c) {
    alignas(64) float x[kSpan];
    alignas(64) uint8_t fast[kSpan];
    const uint64_t start = lo + static_cast<uint64_t>(c) * kSpan;
    const int64_t n = static_cast<int64_t>(std::min<uint64_t>(kSpan, hi - start));
    for (int64_t k = 0; k < n; ++k) x[k] = float_of(static_cast<uint32_t>(start + k));
    quant8_codes(x, n, signed_map, level, fast);
    for (int64_t k = 0; k < n; ++k) bad += fast[k] != quant8::nearest_code_reference(x[k], t.map);
  }
  return bad;
}

}  // namespace fastlr
