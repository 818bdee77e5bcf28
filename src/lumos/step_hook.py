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


def _after_optimizer_step(optimizer: Optimizer, args, kwargs) -> None:
    if not _BY_GATES:
        return
    stepped: set[int] = set()
    for group in optimizer.param_groups:
        for p in group["params"]:
            sm = _BY_GATES.get(id(p))
            if sm is not None and id(sm) not in stepped and sm.gates.log_alpha is p:
                stepped.add(id(sm))
                sm._optimizer_stepped()


register_optimizer_step_post_hook(_after_optimizer_step)


def _before_optimizer_step(optimizer: Optimizer, args, kwargs) -> None:
    """Split steps: on a deterministic step, drop the gates' gradient (``grad = None``: the
    optimiser skips them, momentum included)."""
    for sm in list(_BY_GATES.values()):
        gates = sm.gates
        if gates.split_every <= 1 or gates.phase is None:
            continue
        own = {id(p) for p in sm.parameters()}
        held = False
        for group in optimizer.param_groups:
            for p in group["params"]:
                if id(p) in own:
                    held = True
                    if p is gates.log_alpha and gates.phase == "deterministic":
                        p.grad = None
        if held:
            gates.split_stepped()


register_optimizer_step_pre_hook(_before_optimizer_step)
