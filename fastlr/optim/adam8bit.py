"""fastlr.optim.Adam8bit / AdamW8bit: torchao.optim.Adam8bit / AdamW8bit (same constructor,
same quantization: block-wise absmax, the bitsandbytes dynamic maps, nearest code) with
one fused C++ pass per step instead of one compiled function per param."""
from __future__ import annotations

import operator
from collections.abc import Mapping
from itertools import chain

import torch
from torch import Tensor

from .. import _C, _quant8
from . import _checkpoint, _precision, _quant8_state
from ._base import _local_grad, _Schedule, _State, _compiler_boundary, _profile_hook_step

__all__ = ["Adam8bit", "AdamW8bit", "state_dict_to_float32"]

_STORE = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 3}
_ROLES = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
_FLAVOUR = {"linear": 0, "sqrt": 1}
_DTYPE_CODE = {0: 0, 1: 2, 2: 2, 3: 3}  # param store -> _C.adam's dtype code  # torchao's arithmetic / fastlr's (see quant8_kernels.hpp)


class _Call:
    """One fused kernel call of a group's step, as the cached plan repeats it
    (_precision._cached_step): the members (positions in the step's list of updated
    params), their numels and addresses; lr, betas, eps and weight decay are read from the
    group at each call."""

    __slots__ = ("members", "checks", "g_dtype", "store", "q8", "numel", "p_addr", "state_addrs")

    def run(self, opt, group, g_addr, step, gs):
        lr = group["lr"]
        lr = float(lr) if isinstance(lr, Tensor) else lr
        beta1, beta2 = group["betas"]
        a = self.state_addrs  # codes and scales (or 32-bit state and None) per role of _ROLES
        if not self.q8 and opt._encoding == "sqrt":  # 32-bit state: torch.optim.Adam's kernel
            _C.adam(_DTYPE_CODE[self.store], self.numel, self.p_addr, g_addr, a[0], a[2], a[4], step, lr, None,
                    beta1, None, beta2, group["eps"], group["weight_decay"], opt._decoupled, group["amsgrad"],
                    False, stochastic_rounding=self.store == 2, seed=opt.seed)
            return
        _C.adam8(self.store, opt.block_size, self.q8, _FLAVOUR[opt._encoding], self.numel, self.p_addr, g_addr,
                 *a, step, lr, None, beta1, None, beta2, group["eps"], group["weight_decay"], opt._decoupled,
                 group["amsgrad"], opt.seed)


class _Adam8bitBase(torch.optim.Optimizer):
    _decoupled = False
    _encoding = "linear"
    # for _precision's cached step (one plan per group, as fastlr.optim's precision groups)
    _kind = "adam8bit"
    _has_step = True

    def __init__(self, params, lr, betas, eps, weight_decay, amsgrad, *, block_size,
                 bf16_stochastic_round, compile_backend=None, seed=0, variant="torchao"):
        if isinstance(lr, Tensor):
            if lr.numel() != 1:
                raise ValueError("Tensor lr must be 1-element")
        elif not isinstance(lr, (int, float)) or isinstance(lr, bool):
            hint = ""
            if isinstance(lr, _Schedule):
                hint = ("; for an in-kernel schedule with 8-bit state use "
                        "fastlr.optim.AdamW(params, lr=schedule, state_dtype=\"8bit\")")
            raise TypeError(f"lr must be a float or a 1-element Tensor, got {type(lr).__name__}{hint}")
        if not 0.0 <= float(lr):
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if isinstance(betas, (str, bytes)) or not hasattr(betas, "__len__") or len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        if not 0.0 <= betas[0] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
        if not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if isinstance(block_size, bool) or not isinstance(block_size, int) or not 1 <= block_size <= 4096:
            raise ValueError(f"block_size must be an integer in [1, 4096], got {block_size!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
            raise ValueError(f"seed must be an integer in [0, 2**64), got {seed!r}")
        if variant not in ("torchao", "fastlr"):
            raise ValueError(f"variant must be 'torchao' or 'fastlr', got {variant!r}")
        self._encoding = "linear" if variant == "torchao" else "sqrt"
        defaults = dict(lr=lr, betas=tuple(float(b) for b in betas), eps=eps, weight_decay=weight_decay,
                        amsgrad=bool(amsgrad))
        self._fastlr_plans = {}
        super().__init__(params, defaults)
        self.state = _State(self.state)  # counts its mutations: cached plans see replaced state
        self.block_size = block_size
        self.bf16_stochastic_round = bool(bf16_stochastic_round)
        self.compile_backend = compile_backend  # accepted for torchao compatibility; nothing is compiled
        self.seed = seed

    _OPTIONS = ("block_size", "bf16_stochastic_round", "compile_backend", "seed", "_encoding")

    def __getstate__(self):
        # torch's keeps defaults, state and param_groups only: a copy or an unpickled
        # optimizer would lose its block size, variant and seed
        return {**super().__getstate__(), **{k: self.__dict__[k] for k in self._OPTIONS}}

    def __setstate__(self, state):
        super().__setstate__(state)
        if not isinstance(self.state, _State):
            self.state = _State(self.state)
        self._fastlr_plans = {}
        for group in self.param_groups:
            group.setdefault("amsgrad", False)

    # ------------------------------------------------------------------ state ---
    def _quantized(self, p):
        n = p.numel()
        # torchao's rule; the fastlr variant also quantizes a partial last block; a DTensor
        # (FSDP2) only when its shards are whole rows of whole blocks (its blocks are then
        # the whole tensor's, _quant8_state)
        whole_rows = not _quant8_state.is_dtensor(p) or _quant8_state.blocks_per_row(p, self.block_size) is not None
        return n >= _quant8.MIN_QUANT8_NUMEL and (self._encoding == "sqrt" or n % self.block_size == 0) and whole_rows

    def _init_state(self, group, p, state):
        state["step"] = torch.tensor(0.0)
        for role in _ROLES if group["amsgrad"] else _ROLES[:2]:
            self._zero_role(p, role, state)

    def _zero_role(self, p, role, state):
        if not self._quantized(p):
            state[role] = torch.zeros_like(p, memory_format=torch.contiguous_format)
            return
        _quant8_state.new_role(state, role, p, block=self.block_size)

    # ------------------------------------------------------------------- step ---
    @_compiler_boundary
    @_profile_hook_step
    def step(self, closure=None):
        """One fused 8-bit step per param group (per dtype, per quantized/32-bit state
        and per step count)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if not isinstance(self.state, _State):  # reassigned by hand, e.g. to reset it
            self.state = _State(self.state)
        prev = torch.is_grad_enabled()  # torch.no_grad(), without its Python object
        torch._C._set_grad_enabled(False)
        try:
            for group in self.param_groups:
                self._step_group(group)
        finally:
            torch._C._set_grad_enabled(prev)
        return loss

    def _step_group(self, group):
        # what the calls depend on besides the params, grads and state
        key = (group["amsgrad"], self.block_size, self._encoding, self.bf16_stochastic_round, self.seed)
        if _precision._cached_step(self, group, key, 1.0):
            return
        name = type(self).__name__
        entries = []
        seen = set()
        for j, p in enumerate(group["params"]):
            g = p.grad
            if g is None or id(p) in seen:
                continue  # (a param listed twice is updated once: one call must not write it twice)
            seen.add(id(p))
            if g.is_sparse:
                raise RuntimeError("Sparse gradient is not supported")
            if p.device.type != "cpu":
                raise RuntimeError(f"fastlr.optim.{name}: params[{j}] is on {p.device}; "
                                   "the 8-bit kernels run on CPU tensors")
            store = _STORE.get(p.dtype)
            if store is None:
                raise TypeError(f"fastlr.optim.{name}: params[{j}] has dtype {p.dtype}; "
                                "8-bit optimizers support float32, bfloat16 and float16 params")
            if g.shape != p.shape or g.dtype != p.dtype:
                raise RuntimeError(f"fastlr.optim.{name}: the grad of params[{j}] has shape "
                                   f"{tuple(g.shape)} and dtype {g.dtype}, but the param has shape "
                                   f"{tuple(p.shape)} and dtype {p.dtype}")
            if store == 1 and self.bf16_stochastic_round:
                store = 2
            entries.append((p, g, j, store))
        # every state checked before anything is written
        prepared = []
        for p, g, j, store in entries:
            state = self.state[p]
            if len(state) == 0:
                self._init_state(group, p, state)
            q8 = "exp_avg_codes" in state
            pl, gl = getattr(p, "_local_tensor", p), _local_grad(g, p)  # a DTensor's shards (FSDP2)
            local = state if pl is p else {k: getattr(v, "_local_tensor", v) for k, v in state.items()}
            self._check_state(j, pl, local, group["amsgrad"], q8)
            prepared.append((p, pl, gl, j, local, store, q8, state))
        buckets = {}
        for k, (_, _, _, _, state, store, q8, _) in enumerate(prepared):
            buckets.setdefault((store, q8, float(state["step"]) + 1.0), []).append(k)
        roles = _ROLES if group["amsgrad"] else _ROLES[:2]
        calls = [self._run_bucket(group, roles, store, q8, step, members, prepared)
                 for (store, q8, step), members in buckets.items()]
        if prepared:
            torch._foreach_add_([e[7]["step"] for e in prepared], 1.0)
            # the kernel wrote through raw pointers: tell autograd, as torch's in-place updates do
            bump = [e[0] for e in prepared if not e[0].is_inference()]
            if bump:
                torch.autograd.graph.increment_version(bump)
        _precision._remember(self, group, key, calls, prepared)

    def _run_bucket(self, group, roles, store, q8, step, members, prepared):
        """One fused call over the params of one dtype, storage and step count; returns it
        for the cached plan, or None when temporaries made it a one-off."""
        copy_back = []
        p_addr, g_addr = [], []
        for k in members:
            p, g = prepared[k][1], prepared[k][2]
            pm = p if p.is_contiguous() else p.contiguous()
            if pm is not p:
                copy_back.append((p, pm))
            gm = g if g.is_contiguous() else g.contiguous()
            if gm is not g:
                copy_back.append((None, gm))  # kept alive until the call returns
            p_addr.append(pm.data_ptr())
            g_addr.append(gm.data_ptr())
        states = [prepared[k][4] for k in members]
        call = _Call()
        call.members, call.store, call.q8 = members, store, q8
        call.numel = [prepared[k][1].numel() for k in members]
        call.g_dtype = prepared[members[0]][0].dtype
        call.p_addr, call.state_addrs, call.checks = p_addr, [], []
        for role in _ROLES:
            if role not in roles:
                call.state_addrs += [None, None]
                continue
            keys = (role + "_codes", role + "_scale") if q8 else (role,)
            for key in keys:
                addrs = [s[key].data_ptr() for s in states]
                call.state_addrs.append(addrs)
                call.checks.append((operator.itemgetter(key), addrs))
            if not q8:
                call.state_addrs.append(None)
        call.run(self, group, g_addr, step, 1.0)
        for p, pm in copy_back:
            if p is not None:
                p.copy_(pm)
        sharded = any(prepared[k][1] is not prepared[k][0] for k in members)
        return None if copy_back or sharded else call  # (DTensor shards: not worth caching)

    def _check_state(self, j, p, state, amsgrad, q8):
        roles = _ROLES if amsgrad else _ROLES[:2]
        name = type(self).__name__
        for role in roles:
            if q8:
                _quant8_state.check_role(name, j, role, state.get(role + "_codes"), state.get(role + "_scale"), p,
                                         self.block_size, contiguous_codes=True)
            else:
                t = state.get(role)
                if t is None or t.shape != p.shape or t.dtype != p.dtype or not t.is_contiguous():
                    raise RuntimeError(f"fastlr.optim.{name}: state['{role}'] of params[{j}] must be a "
                                       f"contiguous {p.dtype} tensor of shape {tuple(p.shape)}")

    # ------------------------------------------------------------ state dict ---
    def load_state_dict(self, state_dict):
        """Loads a state_dict of this class, of torch.optim.Adam/AdamW (float state is
        quantized) or of torchao's Adam8bit/AdamW8bit (its codes and scales are taken over;
        torchao keeps exp_avg_sq linear, so a "sqrt" optimizer converts them). Every saved
        state is checked and converted before anything is loaded: a bad one raises
        ValueError/TypeError naming its param and key and leaves the optimizer unchanged."""
        groups = self.param_groups
        saved_groups = state_dict["param_groups"]
        if len(groups) != len(saved_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        for g, (saved, current) in enumerate(zip(saved_groups, groups)):
            if len(saved["params"]) != len(current["params"]):
                raise ValueError("loaded state dict contains a parameter group that doesn't match "
                                 "the size of optimizer's group")
            _quant8.saved_source(saved, self.block_size, f"state_dict['param_groups'][{g}]")
        id_map = dict(zip(chain.from_iterable(g["params"] for g in saved_groups),
                          chain.from_iterable(g["params"] for g in groups)))
        # amsgrad as the loaded groups will have it (torch's load takes the saved group's)
        amsgrad = {id(p): bool(sg.get("amsgrad", False)) for sg, g in zip(saved_groups, groups)
                   for p in g["params"]}
        pending = {}
        plain = {}
        for k, v in state_dict["state"].items():
            p = id_map.get(k)
            if p is None:
                plain[k] = v
                continue
            pending[k] = (p, v)
            plain[k] = {"step": v["step"]} if "step" in v else {}
        saved_block = next((g.get("block_size") for g in saved_groups if "block_size" in g), None)
        if any(g.get("state_dtype") == "8bit" for g in saved_groups):  # fastlr.optim's option: sqrt, 256
            saved_block = _quant8.BLOCK_SIZE
            saved_groups = [{"exp_avg_sq_encoding": "sqrt", **g} for g in saved_groups]
            state_dict = {**state_dict, "param_groups": saved_groups}
        converted = {k: self._convert_state(p, saved, saved_block, state_dict, amsgrad[id(p)], k)
                     for k, (p, saved) in pending.items()}
        super().load_state_dict({"state": plain, "param_groups": saved_groups})
        for group in self.param_groups:  # keys of the saved groups that are ours, not torch's
            group.pop("block_size", None)
            group.pop("exp_avg_sq_encoding", None)
            for key in ("master_weights", "state_dtype", "stochastic_rounding", "seed"):
                group.pop(key, None)  # fastlr.optim's options: this class has its own
        for k, (p, _) in pending.items():
            self.state[p] = converted[k]

    def _convert_state(self, p, saved, saved_block, state_dict, amsgrad, pid):
        """Saved per-param state -> this optimizer's layout for p (checked first)."""
        where = f"fastlr.optim.{type(self).__name__}.load_state_dict: state[{pid!r}]"
        roles = _ROLES if amsgrad else _ROLES[:2]
        block = saved_block or self.block_size
        if not isinstance(saved, Mapping):
            raise TypeError(f"{where} must be a dict, got {type(saved).__name__}")
        if "step" in saved:
            _checkpoint._check_step(saved["step"], f"{where}['step']")
        for role in roles:
            for key in (role, role + "_codes", role + "_scale"):
                if key in saved and not torch.is_tensor(saved[key]):
                    raise TypeError(f"{where}[{key!r}] must be a tensor, got {type(saved[key]).__name__}")
            for key, pair in ((role + "_codes", role + "_scale"), (role + "_scale", role + "_codes")):
                if key in saved and pair not in saved:
                    raise ValueError(f"{where} has {key!r} but no {pair!r} (8-bit state is codes and scales)")
            for key in (role + "_codes", role + "_scale"):
                if key in saved:
                    _quant8_state.check_saved(where, key, saved[key], p, block)
        src_encoding = next((g.get("exp_avg_sq_encoding") for g in state_dict["param_groups"]
                             if "exp_avg_sq_encoding" in g), "linear")
        out = {"step": torch.as_tensor(saved.get("step", 0.0), dtype=torch.float32).clone().reshape(())}
        if _quant8_state.is_dtensor(p):  # resharded by torch.distributed.checkpoint: kept as saved
            q8 = self._quantized(p)
            _quant8_state.check_sharded_layout(where, saved, roles, q8, (block, src_encoding),
                                               (self.block_size, self._encoding))
            _quant8_state.keep_sharded(out, saved, roles, q8)
            for role in roles:
                if role in out:
                    out[role] = out[role].to(p.dtype)
                elif role + "_codes" not in out:
                    self._zero_role(p, role, out)
            return out
        _quant8_state.convert_loaded(out, saved, p, roles,
                                     (self.block_size, self._encoding) if self._quantized(p) else None, p.dtype,
                                     (block, src_encoding), absent_zeros=True)
        return out

    def state_dict(self):
        sd = super().state_dict()
        for g in sd["param_groups"]:
            g["block_size"] = self.block_size
            g["exp_avg_sq_encoding"] = self._encoding
        return sd


def state_dict_to_float32(state_dict):
    """A state_dict of Adam8bit / AdamW8bit (or of an 8-bit fastlr optimizer) with every
    8-bit state dequantized to float32 ``exp_avg`` / ``exp_avg_sq`` / ``max_exp_avg_sq``:
    ``torch.optim.Adam/AdamW`` (and fastlr's 32-bit optimizers) load it and continue.
    A state_dict of ``fastlr.optim.Adam/AdamW(state_dtype="8bit")`` goes through
    ``fastlr.optim.to_torch_state_dict`` (fastlr's encoding; the options are dropped)."""
    groups = state_dict["param_groups"]
    if any(g.get("state_dtype") == "8bit" for g in groups):
        from ._precision import to_torch_state_dict

        return to_torch_state_dict(state_dict)
    block = next((g["block_size"] for g in groups if "block_size" in g), _quant8.BLOCK_SIZE)
    encoding = next((g["exp_avg_sq_encoding"] for g in groups if "exp_avg_sq_encoding" in g), "linear")
    out_state = {k: _quant8_state.dequantized(s, (block, encoding)) for k, s in state_dict["state"].items()}
    out_groups = []
    for g in groups:
        g = dict(g)
        g.pop("block_size", None)
        g.pop("exp_avg_sq_encoding", None)
        out_groups.append(g)
    return {"state": out_state, "param_groups": out_groups}


class Adam8bit(_Adam8bitBase):
    """``torchao.optim.Adam8bit`` on the CPU, fused: Adam with block-wise 8-bit ``exp_avg``
    (signed dynamic map) and ``exp_avg_sq`` (unsigned map), L2 weight decay.

    Same constructor as torchao's (``block_size=256``, ``bf16_stochastic_round=False``;
    ``compile_backend`` is accepted and unused: nothing is compiled) and its semantics:
    per step, ``m = lerp(m, g, 1−β1)``, ``v = lerp(v, g², 1−β2)`` in float32 from the
    dequantized state, ``p −= lr·(m/bc1)/(√v/√bc2 + eps)``, then m and v are re-quantized
    (scale = block absmax, nearest code). Tensors below 4096 elements or not divisible into
    blocks keep 32-bit state (the param's dtype), as torchao. ``seed`` keys the stochastic
    rounding of bf16 params (reproducible, unlike torchao's). ``variant="fastlr"`` switches
    to torch.optim.Adam's arithmetic and fastlr's encoding (sqrt(exp_avg_sq) quantized, the
    zero-code guard; see the README), which tracks float32 Adam on heavy-tailed gradients.

    State keys: ``step``; ``exp_avg_codes`` (uint8, the param's shape) and
    ``exp_avg_scale`` (float32, one per block), the same for ``exp_avg_sq`` and, with
    amsgrad, ``max_exp_avg_sq``; or ``exp_avg`` / ``exp_avg_sq`` for 32-bit tensors.
    ``state_dict_to_float32`` converts a state_dict for ``torch.optim.Adam``.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False, *,
                 block_size=256, bf16_stochastic_round=False, compile_backend=None, seed=0,
                 variant="torchao"):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, block_size=block_size,
                         bf16_stochastic_round=bf16_stochastic_round, compile_backend=compile_backend,
                         seed=seed, variant=variant)


class AdamW8bit(_Adam8bitBase):
    """``torchao.optim.AdamW8bit`` on the CPU, fused: :class:`Adam8bit` with decoupled weight
    decay (``p −= lr·weight_decay·p`` first), default weight_decay 1e-2.

    >>> opt = AdamW8bit(model.parameters(), lr=1e-3)  # doctest: +SKIP
    """

    _decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, *,
                 block_size=256, bf16_stochastic_round=False, compile_backend=None, seed=0,
                 variant="torchao"):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, block_size=block_size,
                         bf16_stochastic_round=bf16_stochastic_round, compile_backend=compile_backend,
                         seed=seed, variant=variant)

