// Entry points of the block-wise 8-bit Adam kernels (csrc/quant8.cpp).
#pragma once
#include <cstdint>
#include <string>

#include "fastlr/dtype.hpp"

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

// Storage of the dense roles of the fastlr-flavour kernels (the states are 8-bit): params
// float32, bfloat16 or float16; grads the params' type, or float32 with a master; master:
// a float32 copy of 16-bit params is updated and the param written as the master rounded
// to nearest (not read); stochastic: 16-bit params without master round stochastically.
struct Quant8Precision {
  DType param = DType::float32, grad = DType::float32;
  bool master = false, stochastic = false;
};
// Empty if built, else why not (checked by every entry point before anything is touched).
std::string unsupported_quant8_precision(const Quant8Precision& p);

// One call: `size` tensors of numel[i] elements in blocks of `block` elements (the last
// one may be partial). state[r][i]: role r of tensor i: uint8 codes when q8, else dense
// values of the param's type (torchao flavour only); scale[r][i]: its ceil(numel / block)
// float32 block scales (q8 only). Roles: adam8 (exp_avg, exp_avg_sq, max_exp_avg_sq),
// sgd8 (momentum_buffer), rmsprop8 (square_avg, grad_avg, momentum_buffer), adagrad8
// (sum). Signed roles hold the value on the signed map; non-negative ones (exp_avg_sq,
// max_exp_avg_sq, square_avg, sum) hold its square root on the unsigned map.
struct Quant8List {
  int64_t size = 0;
  const int64_t* numel = nullptr;
  int64_t block = 256;
  char* const* param = nullptr;
  char* const* grad = nullptr;
  char* const* state[3] = {};
  float* const* scale[3] = {};
  bool q8 = true;
  char* const* master = nullptr;        // float32 master copies (Quant8Precision::master)
  const int64_t* tensor_ids = nullptr;  // keys of the random bits (null: the position i)
};

struct Adam8Args {
  double lr, beta1, beta2, eps, weight_decay, grad_mul, step;
  bool decoupled_weight_decay, amsgrad;
  Quant8Flavour flavour;
  ParamStore store;
  uint64_t seed;  // stochastic rounding (bf16_sr)
  bool master = false;                 // list.master holds float32 masters (fastlr flavour)
  DType grad = DType::float32;         // with master: float32 or the params' type
};

// Random bits of stochastic rounding: a function of (seed, step, tensor id, element).
// The step is the 1-based index of the update (t + 1 for sgd8/rmsprop8).
struct Sgd8Args {
  double lr, momentum, dampening, weight_decay, grad_mul;
  bool nesterov, first_step, use_momentum;  // use_momentum: momentum != 0 this step
  int64_t step;
  uint64_t seed;
};
struct Rmsprop8Args {
  double lr, alpha, eps, weight_decay, momentum, grad_mul;
  bool centered, use_momentum, first_step;
  int64_t step;
  uint64_t seed;
};
struct Adagrad8Args {
  double lr, lr_decay, weight_decay, eps, grad_mul;
  int64_t step;
  uint64_t seed;
};

// `offsets`: scratch of list.size + 1 entries. Unsupported input throws
// std::invalid_argument before anything is touched.
void adam8(const Quant8List& list, int64_t* offsets, const Adam8Args& a);
void sgd8(const Quant8Precision& prec, const Quant8List& list, int64_t* offsets, const Sgd8Args& a);
void rmsprop8(const Quant8Precision& prec, const Quant8List& list, int64_t* offsets, const Rmsprop8Args& a);
void adagrad8(const Quant8Precision& prec, const Quant8List& list, int64_t* offsets, const Adagrad8Args& a);

// Nearest codes of n floats with the kernels' search at a CPU level (0 baseline, 1 avx2,
// 2 avx512; -1: the reference binary search). signed_map picks the map.
void quant8_codes(const float* x, int64_t n, bool signed_map, int level, uint8_t* out);

// Number of float32 bit patterns u in [lo, hi) whose code differs between the kernels'
// search at `level` and the reference (multi-threaded; the exactness proof of the tool).
int64_t quant8_check(bool signed_map, int level, uint64_t lo, uint64_t hi);

}  // namespace fastlr
