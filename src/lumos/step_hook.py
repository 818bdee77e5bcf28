"""Optimiser steps reach the sparse models whose gates they update.

``SparseModel.step()`` moves the budget controller once per optimiser step. A user's first
loop often never calls it; a global optimiser step post-hook finds the sparse models whose gate
parameter the stepping optimiser holds and steps them, until their first explicit call.

Split steps (``GateOptions.gate_step_every``) reach any loop the same way, in a pre-hook: on a
deterministic step the gates' gradient (the penalty's) is dropped, so the gates learn from
noisy steps alone, and each optimiser step counts once towards the next phase.
"""

from __future__ import annotations

import weakref
from typing import Any

from torch.optim import Optimizer
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

#: every live sparse model, by the id of its gate parameter
_BY_GATES: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()


def register(sm: Any) -> None:
    """Let optimiser steps that update ``sm.gates.log_alpha`` step ``sm``."""
    _BY_GATES[id(sm.gates.log_alpha)] = sm


def _models_stepped_by(optimizer: Optimizer) -> list[Any]:
    """The sparse models whose gate parameter ``optimizer`` holds, each once."""
    found: dict[int, Any] = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            sm = _BY_GATES.get(id(p))
            if sm is not None and sm.gates.log_alpha is p:
                found[id(sm)] = sm
    return list(found.values())


def _after_optimizer_step(optimizer: Optimizer, args, kwargs) -> None:
    if not _BY_GATES:
        return
    for sm in _models_stepped_by(optimizer):
        sm._optimizer_stepped()


register_optimizer_step_post_hook(_after_optimizer_step)


def _before_optimizer_step(optimizer: Optimizer, args, kwargs) -> None:
    """Split steps: on a deterministic step, drop the gates' gradient (``grad = None``: the
    optimiser skips them, momentum included). The optimiser that holds the gates counts the
    step, so one with the weights alone beside it does not count it twice."""
    if not any(sm.gates.split_every > 1 for sm in _BY_GATES.values()):
        return  # the default: nothing is split, no pass over the optimiser's parameters
    for sm in _models_stepped_by(optimizer):
        gates = sm.gates
        if gates.phase == "deterministic":
            gates.log_alpha.grad = None
        gates.split_stepped()


register_optimizer_step_pre_hook(_before_optimizer_step)
