// Entry points of the block-wise 8-bit Adam kernels (csrc/quant8.cpp).
#pragma once
#include <cstdint>

namespace fastlr {

// Two flavours of the same fused step:
//  torchao: torchao's AdamW8bit arithmetic (lerp for both moments, p -= lr·(m/bc1)/denom)
//           and its encoding (exp_avg_sq quantized as is).
//  fastlr:  torch.optim.Adam's arithmetic (update.hpp), sqrt(exp_avg_sq) quantized, and
//           an element whose sqrt(v) dequantizes to 0 restarts its exp_avg from 0 too, so
//           no step is ever lr·m/eps (see README, "8-bit optimizer state").
enum class Quant8Flavour : int { torchao = 0, fastlr = 1 };

// Param storage: float32, bfloat16 (round to nearest even or stochastic), float16.
enum class ParamStore : int { f32 = 0, bf16 = 1, bf16_sr = 2, f16 = 3 };

// One call: `size` tensors of numel[i] elements in blocks of `block` elements (the last
// one may be partial). state[r][i]: role r (exp_avg, exp_avg_sq, max_exp_avg_sq) of
// tensor i: uint8 codes when q8, else dense values of the param's type; scale[r][i]: its
// ceil(numel / block) float32 block scales (q8 only).
struct Quant8List {
  int64_t size = 0;
  const int64_t* numel = nullptr;
  int64_t block = 256;
  char* const* param = nullptr;
  char* const* grad = nullptr;
  char* const* state[3] = {};
  float* const* scale[3] = {};
  bool q8 = true;
};

struct Adam8Args {
  double lr, beta1, beta2, eps, weight_decay, grad_mul, step;
  bool decoupled_weight_decay, amsgrad;
  Quant8Flavour flavour;
  ParamStore store;
  uint64_t seed;  // stochastic rounding (bf16_sr)
};

// `offsets`: scratch of list.size + 1 entries.
void adam8(const Quant8List& list, int64_t* offsets, const Adam8Args& a);

// Nearest codes of n floats with the kernels' search at a CPU level (0 baseline, 1 avx2,
// 2 avx512; -1: the reference binary search). signed_map picks the map.
void quant8_codes(const float* x, int64_t n, bool signed_map, int level, uint8_t* out);

// Number of float32 bit patterns u in [lo, hi) whose code differs between the kernels'
// search at `level` and the reference (multi-threaded; the exactness proof of the tool).
int64_t quant8_check(bool signed_map, int level, uint64_t lo, uint64_t hi);

}  // namespace fastlr
