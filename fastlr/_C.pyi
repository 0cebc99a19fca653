"""fastlr's private C++ module (see csrc/bindings.cpp). Addresses are integer data
pointers, one per tensor, per role; a schedule is its float64 encoding array, and the
value used is then value * schedule(t)."""
from typing import Optional, Sequence, Tuple

import numpy as np

openmp: bool
version: str
compiler: str

def sgd(dtype: int, numel: Sequence[int], params: Sequence[int], grads: Sequence[int],
        momentum_buffers: Optional[Sequence[int]], lr: float, lr_schedule: Optional[np.ndarray],
        t: int, momentum: float, momentum_schedule: Optional[np.ndarray], dampening: float,
        nesterov: bool, weight_decay: float, maximize: bool, first_step: bool,
        grad_scale: float = 1.0) -> Tuple[float, float]: ...
def adam(dtype: int, numel: Sequence[int], params: Sequence[int], grads: Sequence[int],
         exp_avgs: Sequence[int], exp_avg_sqs: Sequence[int], max_exp_avg_sqs: Optional[Sequence[int]],
         step: float, lr: float, lr_schedule: Optional[np.ndarray], beta1: float,
         beta1_schedule: Optional[np.ndarray], beta2: float, eps: float, weight_decay: float,
         decoupled_weight_decay: bool, amsgrad: bool, maximize: bool,
         grad_scale: float = 1.0) -> Tuple[float, float]: ...
def rmsprop(dtype: int, numel: Sequence[int], params: Sequence[int], grads: Sequence[int],
            square_avgs: Sequence[int], grad_avgs: Optional[Sequence[int]],
            momentum_buffers: Optional[Sequence[int]], lr: float, lr_schedule: Optional[np.ndarray],
            t: int, alpha: float, eps: float, weight_decay: float, momentum: float,
            momentum_schedule: Optional[np.ndarray], centered: bool, use_momentum: bool,
            maximize: bool, first_step: bool, grad_scale: float = 1.0) -> Tuple[float, float]: ...
def adagrad(dtype: int, numel: Sequence[int], params: Sequence[int], grads: Sequence[int],
            state_sums: Sequence[int], step: float, lr: float, lr_schedule: Optional[np.ndarray],
            lr_decay: float, weight_decay: float, eps: float, maximize: bool,
            grad_scale: float = 1.0) -> float: ...
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
