"""fastlr's private C++ module (see csrc/bindings.cpp). Addresses are integer data
pointers, one per tensor, per role; a schedule is its float64 encoding array, and the
value used is then value * schedule(t). Dtype codes: 0 float32, 1 float64, 2 bfloat16,
3 float16.

Every kernel takes the same keyword-only precision options:

- grad_dtype: the grads' dtype code (None: the params' `dtype`). float32 grads for
  16-bit params only with `masters`.
- state_dtype: the dtype code of every state tensor (None: float32 with `masters`, else
  the params' dtype). Built: float32 or bfloat16 for any params, or the params' dtype.
- masters: addresses of float32 master copies, one per param (params bfloat16/float16):
  the update runs on the master and writes the param as the master rounded to nearest.
- stochastic_rounding: 16-bit stores (params without master, bfloat16/float16 state)
  round stochastically; bits from (seed, t, tensor_ids[i], element index), where t is
  the completed-update count: `t` for sgd/rmsprop, step - 1 for adam/adagrad.
- seed: an integer (taken modulo 2**64). tensor_ids: one id per tensor (None: 0..n-1);
  fastlr.optim passes the param's flat position in the optimizer.
An unsupported combination raises ValueError before anything is touched."""
from typing import Optional, Sequence, Tuple

import numpy as np

openmp: bool
version: str
compiler: str

def sgd(dtype: int, numel: Sequence[int], params: Sequence[int], grads: Sequence[int],
        momentum_buffers: Optional[Sequence[int]], lr: float, lr_schedule: Optional[np.ndarray],
        t: int, momentum: float, momentum_schedule: Optional[np.ndarray], dampening: float,
        nesterov: bool, weight_decay: float, maximize: bool, first_step: bool,
        grad_scale: float = 1.0, *, grad_dtype: Optional[int] = None,
        state_dtype: Optional[int] = None, masters: Optional[Sequence[int]] = None,
        stochastic_rounding: bool = False, seed: int = 0,
        tensor_ids: Optional[Sequence[int]] = None) -> Tuple[float, float]: ...
def adam(dtype: int, numel: Sequence[int], params: Sequence[int], grads: Sequence[int],
         exp_avgs: Sequence[int], exp_avg_sqs: Sequence[int], max_exp_avg_sqs: Optional[Sequence[int]],
         step: float, lr: float, lr_schedule: Optional[np.ndarray], beta1: float,
         beta1_schedule: Optional[np.ndarray], beta2: float, eps: float, weight_decay: float,
         decoupled_weight_decay: bool, amsgrad: bool, maximize: bool,
         grad_scale: float = 1.0, *, grad_dtype: Optional[int] = None,
        state_dtype: Optional[int] = None, masters: Optional[Sequence[int]] = None,
        stochastic_rounding: bool = False, seed: int = 0,
        tensor_ids: Optional[Sequence[int]] = None) -> Tuple[float, float]: ...
def adam8(store: int, block: int, q8: bool, flavour: int, numel: Sequence[int], params: Sequence[int],
          grads: Sequence[int], exp_avgs: Sequence[int], exp_avg_scales: Optional[Sequence[int]],
          exp_avg_sqs: Sequence[int], exp_avg_sq_scales: Optional[Sequence[int]],
          max_exp_avg_sqs: Optional[Sequence[int]], max_exp_avg_sq_scales: Optional[Sequence[int]],
          step: float, lr: float, lr_schedule: Optional[np.ndarray], beta1: float,
          beta1_schedule: Optional[np.ndarray], beta2: float, eps: float, weight_decay: float,
          decoupled_weight_decay: bool, amsgrad: bool, seed: int = 0,
          grad_scale: float = 1.0, *, masters: Optional[Sequence[int]] = None,
          grad_dtype: Optional[int] = None, maximize: bool = False,
          tensor_ids: Optional[Sequence[int]] = None) -> Tuple[float, float]: ...
# adam8 store: 0 float32, 1 bfloat16, 2 bfloat16 with stochastic rounding, 3 float16;
# flavour: 0 torchao, 1 fastlr (sqrt(exp_avg_sq) quantized). masters (flavour 1, q8 only):
# float32 masters of bfloat16/float16 params (store 1-3; the param is written as its master
# rounded to nearest, so store 2 acts as 1); grad_dtype: dtype code of the grads (None: the
# params'; 0 float32 only with masters). tensor_ids key the stochastic-rounding bits (None:
# the position 0..n-1).

# The fastlr-encoded 8-bit kernels of SGD, RMSprop and Adagrad: the arguments of sgd /
# rmsprop / adagrad, with each state a (codes addresses, scales addresses) pair (or None)
# and these keywords: block_size (1..4096), grad_dtype and masters as above (dtype 0, 2 or
# 3), stochastic_rounding (bfloat16/float16 params without masters), seed, tensor_ids.
# Signed states (momentum_buffers, grad_avgs) hold the value on the signed map; square_avgs
# and state_sums hold sqrt(value) on the unsigned map. The random bits are keyed by (seed,
# step, tensor id, element) with step = t + 1 for sgd8/rmsprop8, step for adagrad8.
Q8State = Optional[Tuple[Sequence[int], Sequence[int]]]
def sgd8(dtype: int, numel: Sequence[int], params: Sequence[int], grads: Sequence[int],
         momentum_buffers: Q8State, lr: float, lr_schedule: Optional[np.ndarray], t: int,
         momentum: float, momentum_schedule: Optional[np.ndarray], dampening: float, nesterov: bool,
         weight_decay: float, maximize: bool, first_step: bool, grad_scale: float = 1.0, *,
         block_size: int = 256, grad_dtype: Optional[int] = None, masters: Optional[Sequence[int]] = None,
         stochastic_rounding: bool = False, seed: int = 0,
         tensor_ids: Optional[Sequence[int]] = None) -> Tuple[float, float]: ...
def rmsprop8(dtype: int, numel: Sequence[int], params: Sequence[int], grads: Sequence[int],
             square_avgs: Q8State, grad_avgs: Q8State, momentum_buffers: Q8State, lr: float,
             lr_schedule: Optional[np.ndarray], t: int, alpha: float, eps: float, weight_decay: float,
             momentum: float, momentum_schedule: Optional[np.ndarray], centered: bool,
             use_momentum: bool, maximize: bool, first_step: bool, grad_scale: float = 1.0, *,
             block_size: int = 256, grad_dtype: Optional[int] = None,
             masters: Optional[Sequence[int]] = None, stochastic_rounding: bool = False, seed: int = 0,
             tensor_ids: Optional[Sequence[int]] = None) -> Tuple[float, float]: ...
def adagrad8(dtype: int, numel: Sequence[int], params: Sequence[int], grads: Sequence[int],
             state_sums: Q8State, step: float, lr: float, lr_schedule: Optional[np.ndarray],
             lr_decay: float, weight_decay: float, eps: float, maximize: bool, grad_scale: float = 1.0,
             *, block_size: int = 256, grad_dtype: Optional[int] = None,
             masters: Optional[Sequence[int]] = None, stochastic_rounding: bool = False, seed: int = 0,
             tensor_ids: Optional[Sequence[int]] = None) -> float: ...
def quant8_map(signed: bool) -> np.ndarray: ...
def quant8_codes(x: np.ndarray, signed: bool, level: int) -> np.ndarray: ...
def quant8_check(signed: bool, level: int, lo: int, hi: int) -> int: ...
def rmsprop(dtype: int, numel: Sequence[int], params: Sequence[int], grads: Sequence[int],
            square_avgs: Sequence[int], grad_avgs: Optional[Sequence[int]],
            momentum_buffers: Optional[Sequence[int]], lr: float, lr_schedule: Optional[np.ndarray],
            t: int, alpha: float, eps: float, weight_decay: float, momentum: float,
            momentum_schedule: Optional[np.ndarray], centered: bool, use_momentum: bool,
            maximize: bool, first_step: bool, grad_scale: float = 1.0, *, grad_dtype: Optional[int] = None,
        state_dtype: Optional[int] = None, masters: Optional[Sequence[int]] = None,
        stochastic_rounding: bool = False, seed: int = 0,
        tensor_ids: Optional[Sequence[int]] = None) -> Tuple[float, float]: ...
def adagrad(dtype: int, numel: Sequence[int], params: Sequence[int], grads: Sequence[int],
            state_sums: Sequence[int], step: float, lr: float, lr_schedule: Optional[np.ndarray],
            lr_decay: float, weight_decay: float, eps: float, maximize: bool,
            grad_scale: float = 1.0, *, grad_dtype: Optional[int] = None,
        state_dtype: Optional[int] = None, masters: Optional[Sequence[int]] = None,
        stochastic_rounding: bool = False, seed: int = 0,
        tensor_ids: Optional[Sequence[int]] = None) -> float: ...
def schedulefree_step(kind: int, dtype: int, numel: Sequence[int], params: Sequence[int],
                      grads: Sequence[int], zs: Sequence[int], exp_avg_sqs: Optional[Sequence[int]],
                      k: int, lr: float, lr_schedule: Optional[np.ndarray], beta1: float,
                      beta2: float, eps: float, weight_decay: float, warmup_steps: float, r: float,
                      weight_lr_power: float, lr_max: float, weight_sum: float,
                      silent_sgd_phase: bool) -> Tuple[float, float, float, float, float, float, bool]: ...
def schedulefree_lerp(dtype: int, numel: Sequence[int], params: Sequence[int], zs: Sequence[int],
                      weight: float) -> None: ...
def roofline(dtype: int, numel: Sequence[int], params: Sequence[int], grads: Sequence[int],
             states: Sequence[Sequence[int]]) -> None: ...
def schedule_values(enc: np.ndarray, t: np.ndarray) -> np.ndarray: ...
def schedule_at(enc: np.ndarray, t: int) -> float: ...
def data_ptrs(arrays: list[np.ndarray]) -> list[int]: ...
def get_num_threads() -> int: ...
def set_num_threads(n: int) -> None: ...
def cpu_level() -> str: ...
def detected_cpu_level() -> str: ...
def set_cpu_level(name: str) -> None: ...
