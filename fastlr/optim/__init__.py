"""Drop-in replacements for torch.optim's SGD, Adam, AdamW, RMSprop and Adagrad.

Same constructor arguments, defaults, param groups, ``state`` and ``state_dict()`` as
the torch class of the same name (a state_dict saved by one loads into the other); the
update of a whole param group is one fastlr kernel call, and ``lr`` (and ``momentum`` /
``betas[0]``) may be a fastlr Schedule evaluated from the group's step count. Every class
also takes ``master_weights``, ``state_dtype``, ``stochastic_rounding`` and ``seed`` (fp32
master weights, bf16 or block-wise 8-bit state, stochastic rounding, fused in the same
pass), and
``to_torch_state_dict`` turns such an optimizer's state_dict into one torch.optim loads.

>>> import torch, fastlr
>>> model = torch.nn.Linear(4, 2)
>>> opt = fastlr.optim.Adam(model.parameters(), lr=fastlr.OneCycle(1e-2, total_steps=100))
"""
try:
    import torch  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised without torch
    raise ImportError(
        'fastlr.optim needs PyTorch: pip install torch (or, in the fastlr checkout, pip install ".[torch]")'
    ) from e

from .adagrad import Adagrad
from .adam import Adam, AdamW
from .adam8bit import Adam8bit, AdamW8bit, state_dict_to_float32
from .rmsprop import RMSprop
from .schedulefree import AdamWScheduleFree, RAdamScheduleFree, SGDScheduleFree
from .sgd import SGD
from ._scheduler import ScheduleLR, to_torch_state_dict, torch_lr_scheduler
from .._plateau import torch_plateau_class as _torch_plateau_class

ReduceLROnPlateau = _torch_plateau_class()  # always a torch.optim.lr_scheduler.ReduceLROnPlateau

__all__ = ["SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "ScheduleLR", "ReduceLROnPlateau",
           "to_torch_state_dict", "torch_lr_scheduler",
           "Adam8bit", "AdamW8bit", "state_dict_to_float32",
           "SGDScheduleFree", "AdamWScheduleFree", "RAdamScheduleFree"]


def _allow_schedules_in_checkpoints():
    """state_dicts of scheduled groups hold Schedule objects: let torch.load's default
    weights_only unpickler rebuild them (they pickle as class + plain arguments)."""
    try:
        from .. import schedules
        from torch.serialization import add_safe_globals
    except ImportError:  # pragma: no cover
        return
    classes = [
        obj for obj in vars(schedules).values()
        if isinstance(obj, type) and issubclass(obj, schedules.Schedule)
    ]
    add_safe_globals(classes)


_allow_schedules_in_checkpoints()
del _allow_schedules_in_checkpoints
