"""Structured pruning at equal parameter count: LUMOS vs. Torch-Pruning vs. unstructured masks.

For one workload, in one process and from the same initial weights:

* **dense**: the workload recipe (``E`` epochs), the reference for metric and latency;
* **LUMOS**: ``sparsify(budget=b)``, ``E`` epochs, ``compact()``: its parameter count is the
  target every peer is pruned to;
* **Torch-Pruning** (``torch_pruning``, magnitude and Taylor importance): dense pre-training for
  half the epochs, then ``S`` rounds of (prune to the next point of a geometric schedule that
  ends at LUMOS's parameter count, fine-tune) that use the other half: ``E`` epochs in all;
* **global magnitude masks** (``torch.nn.utils.prune.global_unstructured``, L1): the same
  schedule, masks made permanent at the end: the non-zero count matches, the dense tensors stay.

Recorded per method: task metric, parameters (and non-zeros), FLOPs per sample
(:func:`lumos.count_flops`), CPU latency ratio to the dense model timed in alternating rounds
in the same run (``benchmarks.suite.paired_latency``), and wall time of the whole procedure
(pre-training, pruning, fine-tuning; for LUMOS sparsify + train + compact). A method that cannot
handle an architecture is recorded with ``status: "error"`` and its error message.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
import traceback
from collections.abc import Callable

import torch
from torch import nn

from lumos.measure import count_flops, count_params
from lumos.training import predict
from lumos.workloads import (
    build_dense,
    example_inputs,
    feature_argument,
    get_workload,
    sparsify_features,
    train_recipe,
)

from ..suite import paired_latency

PEER_METHODS = ("tp_magnitude", "tp_taylor", "unstructured_magnitude")
METHOD_LABELS = {
    "dense": "dense",
    "lumos": "LUMOS",
    "tp_magnitude": "Torch-Pruning (magnitude)",
    "tp_taylor": "Torch-Pruning (Taylor)",
    "unstructured_magnitude": "global magnitude masks",
}


#: CPU seconds Torch-Pruning may spend building its dependency graph (a dense model's takes
#: well under one; on some architectures it runs on for many minutes while its memory grows)
PRUNER_BUILD_LIMIT_S = 60


class PeerTimeout(RuntimeError):
    """A peer exceeded its CPU-time limit."""


@contextlib.contextmanager
def cpu_time_limit(seconds: float, what: str):
    """Raise :class:`PeerTimeout` inside the block after ``seconds`` of this process's user CPU
    time (CPU, not wall, time: the limit means the same on a loaded machine)."""
    main = threading.current_thread() is threading.main_thread()
    if not (hasattr(signal, "setitimer") and main):
        yield
        return

    def stop(signum, frame):
        raise PeerTimeout(f"{what} did not finish within {seconds:.0f} CPU seconds")

    previous = signal.signal(signal.SIGVTALRM, stop)
    signal.setitimer(signal.ITIMER_VIRTUAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_VIRTUAL, 0)
        signal.signal(signal.SIGVTALRM, previous)


class Setup:
    """Everything a method needs from a workload: data, recipe, model factory, evaluation."""

    def __init__(self, name: str, size: str, seed: int, cache_dir=None) -> None:
        self.name = name
        self.size = size
        self.seed = seed
        self.workload = get_workload(name)
        self.data = self.workload.data(size, seed=seed, cache_dir=cache_dir)
        self.recipe = self.workload.recipes[size]
        self.val = self.data.loader("val", 512, shuffle=False)
        self.one = self.data.example_batch("val", 1)[0]
        self.big = self.data.example_batch("val", 256)[0]
        self.example = example_inputs(self.data)

    def build(self) -> nn.Module:
        return build_dense(self.workload, self.data, seed=self.seed)

    def fit(self, model: nn.Module, epochs: int, stage: int = 0) -> None:
        """``epochs`` epochs of the workload recipe (a fresh Adam, as after any pruning step)."""
        train_recipe(model, self.workload, self.data, self.recipe, seed=self.seed,
                     epochs=epochs, train_seed=self.seed + 1000 * stage)

    def metric(self, model: nn.Module) -> float:
        pred, target = predict(model, self.val)
        return float(self.workload.metrics(pred, target)[self.workload.primary])

    def batches(self, n: int):
        """The first ``n`` training batches (for gradient-based importance)."""
        loader = self.data.loader("train", self.recipe.batch_size, shuffle=True, seed=self.seed)
        for k, batch in enumerate(loader):
            if k >= n:
                break
            yield batch


def schedule(epochs: int, max_rounds: int = 5) -> tuple[int, list[int]]:
    """Split ``epochs`` into dense pre-training and ``rounds`` prune-then-fine-tune blocks.

    Half the epochs (at least one) pre-train; the rest is shared by up to ``max_rounds``
    rounds, the last taking the remainder, so the total always equals ``epochs``.
    """
    pre = max(1, epochs // 2)
    rest = epochs - pre
    rounds = max(1, min(max_rounds, rest))
    per = [rest // rounds] * rounds
    per[-1] += rest - sum(per)
    return pre, per


def targets(dense: int, final: int, rounds: int) -> list[int]:
    """Parameter counts after each round: geometric from ``dense`` to ``final``."""
    return [int(round(dense * (final / dense) ** ((k + 1) / rounds))) for k in range(rounds)]


def nonzero_params(model: nn.Module) -> int:
    return sum(int(torch.count_nonzero(p)) for p in {id(p): p for p in model.parameters()}.values())


def masked_nonzero(model: nn.Module) -> int:
    """Non-zero parameters as the forward sees them (``weight_orig * weight_mask`` while
    ``torch.nn.utils.prune`` masks are attached)."""
    total = 0
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if name.endswith("_orig") and hasattr(module, name[: -len("_orig")]):
                p = getattr(module, name[: -len("_orig")])
            total += int(torch.count_nonzero(p))
    return total


def output_layers(model: nn.Module, inputs: tuple) -> list[nn.Module]:
    """The last Linear/Conv layer run in forward: its outputs are the model's, never pruned."""
    order: list[nn.Module] = []
    hooks = [m.register_forward_hook(lambda mod, i, o: order.append(mod))
             for m in model.modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in hooks:
            h.remove()
    return order[-1:]


# ---- Torch-Pruning ---------------------------------------------------------------------------
def tp_prune(setup: Setup, model: nn.Module, importance: str,
             size_of: Callable[[nn.Module], int] = count_params) -> Callable[[int], int]:
    """A function ``prune_to(goal)`` that removes channels with Torch-Pruning until
    ``size_of(model)`` (parameters, or FLOPs per sample) is at most ``goal`` (1% channel steps,
    TP's default uniform layer ratios); it returns the number of pruner steps taken."""
    import torch_pruning as tp

    imp = (tp.importance.GroupMagnitudeImportance(p=2) if importance == "magnitude"
           else tp.importance.GroupTaylorImportance())
    heads = {m: m.num_heads for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
    model.eval()
    with cpu_time_limit(PRUNER_BUILD_LIMIT_S, "torch_pruning.MetaPruner building the "
                        "dependency graph"):
        pruner = tp.pruner.MetaPruner(
            model, setup.example, importance=imp, pruning_ratio=0.99, iterative_steps=100,
            ignored_layers=output_layers(model, setup.example), num_heads=heads,
        )

    def prune_to(goal: int) -> int:
        taken = 0
        while size_of(model) > goal and pruner.current_step < pruner.iterative_steps:
            if importance == "taylor":
                model.train()
                model.zero_grad()
                for inputs, target in setup.batches(2):
                    setup.workload.loss(model(*inputs), target).backward()
            model.eval()
            pruner.step()
            taken += 1
        model.zero_grad(set_to_none=True)
        return taken

    return prune_to


def run_tp(setup: Setup, importance: str, target: int, dense_out: torch.Tensor,
           size_of: Callable[[nn.Module], int] = count_params) -> nn.Module:
    model = setup.build()
    pre, per = schedule(setup.recipe.epochs)
    setup.fit(model, pre)
    prune_to = tp_prune(setup, model, importance, size_of)
    goals = targets(size_of(model), target, len(per))
    for k, (goal, epochs) in enumerate(zip(goals, per, strict=True)):
        prune_to(goal)
        _check_output(model, setup, dense_out)
        setup.fit(model, epochs, stage=k + 1)
    return model


# ---- unstructured magnitude masks --------------------------------------------------------------
def prunable(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """Every weight matrix/kernel (dim >= 2) of every module, biases and norms excluded."""
    out = []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if p.dim() >= 2:
                out.append((module, name))
    return out


def run_unstructured(setup: Setup, target: int, dense_out: torch.Tensor) -> nn.Module:
    from torch.nn.utils import prune

    model = setup.build()
    pre, per = schedule(setup.recipe.epochs)
    setup.fit(model, pre)
    params = prunable(model)
    # prune's masks are applied by a pre-hook on the owning module's forward, which never runs
    # when a parent reads the weight directly (MultiheadAttention's out_proj): apply them all
    # before every forward of the whole model instead
    hook = model.register_forward_pre_hook(lambda *_: _apply_masks(params))
    total = count_params(model)
    goals = targets(total, target, len(per))
    for k, (goal, epochs) in enumerate(zip(goals, per, strict=True)):
        # an int amount counts still-unmasked weights: prune what is needed to reach ``goal``
        amount = max(0, masked_nonzero(model) - goal)
        prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=amount)
        _check_output(model, setup, dense_out)
        setup.fit(model, epochs, stage=k + 1)
    for module, name in params:
        prune.remove(module, name)
    hook.remove()
    return model


def _apply_masks(params: list[tuple[nn.Module, str]]) -> None:
    for module, name in params:
        if hasattr(module, name + "_mask"):
            setattr(module, name, getattr(module, name + "_orig") * getattr(module, name + "_mask"))


def _check_output(model: nn.Module, setup: Setup, dense_out: torch.Tensor) -> None:
    with torch.no_grad():
        out = model.eval()(*setup.one)
    if out.shape != dense_out.shape:
        raise RuntimeError(f"pruned model outputs shape {tuple(out.shape)}, dense "
                           f"{tuple(dense_out.shape)}")


# ---- the comparison --------------------------------------------------------------------------
def measure(setup: Setup, dense: nn.Module, model: nn.Module, wall_s: float) -> dict:
    lat1 = paired_latency(dense, model, setup.one)
    lat256 = paired_latency(dense, model, setup.big)
    return {
        "status": "ok",
        "metric": setup.metric(model),
        "params": count_params(model),
        "nonzero_params": nonzero_params(model),
        "flops": count_flops(model, setup.one),
        "latency_b1_s": lat1[1],
        "latency_b256_s": lat256[1],
        "speedup_b1": lat1[0] / lat1[1],
        "speedup_b256": lat256[0] / lat256[1],
        "wall_s": wall_s,
    }


def run_structured(name: str, size: str, budget: float, seed: int = 0, cache_dir=None,
                   methods: tuple[str, ...] = PEER_METHODS, budget_on: str = "params") -> dict:
    """Dense, LUMOS and every peer in ``methods`` on workload ``name`` (see module doc).

    ``budget_on="flops"``: LUMOS's budget is on FLOPs and every peer is pruned to LUMOS's
    FLOPs per sample instead of its parameter count; unstructured masks, which remove no
    FLOPs, are left out."""
    setup = Setup(name, size, seed, cache_dir)
    if budget_on == "flops":
        methods = tuple(m for m in methods if m != "unstructured_magnitude")

    def size_of(model: nn.Module) -> int:
        return count_params(model) if budget_on == "params" else count_flops(model, setup.one)

    wl, recipe = setup.workload, setup.recipe
    results: dict[str, dict] = {}

    start = time.perf_counter()
    dense = setup.build()
    setup.fit(dense, recipe.epochs)
    dense_wall = time.perf_counter() - start
    dense.eval()
    with torch.no_grad():
        dense_out = dense(*setup.one)
    results["dense"] = measure(setup, dense, dense, dense_wall)

    start = time.perf_counter()
    base = setup.build()
    arg = feature_argument(base, setup.data.feature_arg)
    # as a user runs it (and as benchmarks.suite does): feature gates on the scored input
    sm = sparsify_features(base, setup.data, budget=budget, budget_on=budget_on)
    setup.fit(sm, recipe.epochs)
    small = sm.compact()
    results["lumos"] = measure(setup, dense, small, time.perf_counter() - start)
    features_kept = sm.selected_features()[arg]
    feature_scores = sm.feature_scores()[arg].tolist()
    target = results["lumos"][budget_on]

    runners = {
        "tp_magnitude": lambda: run_tp(setup, "magnitude", target, dense_out, size_of),
        "tp_taylor": lambda: run_tp(setup, "taylor", target, dense_out, size_of),
        "unstructured_magnitude": lambda: run_unstructured(setup, target, dense_out),
    }
    for method in methods:
        start = time.perf_counter()
        try:
            model = runners[method]()
            results[method] = measure(setup, dense, model, time.perf_counter() - start)
        except Exception as exc:  # a peer that cannot handle the architecture is a result
            results[method] = {
                "status": "error",
                "error": f"{type(exc).__name__}: {_first_line(exc)}",
                "where": _where(exc),
                "wall_s": time.perf_counter() - start,
            }
        print(f"[peers] {name} {method}: {_summary(results[method])}", flush=True)

    for method, r in results.items():
        if r["status"] == "ok":
            r["params_ratio"] = r["params"] / results["dense"]["params"]
            r["nonzero_ratio"] = r["nonzero_params"] / results["dense"]["params"]
            r["flops_ratio"] = r["flops"] / max(results["dense"]["flops"], 1)
            reached = (r["nonzero_params"] if budget_on == "params" else r["flops"])
            r["reached_target"] = reached <= target * 1.001 or method == "dense"
    pre, per = schedule(recipe.epochs)
    return {
        "workload": name,
        "title": wl.title,
        "architecture": wl.architecture,
        "size": size,
        "budget": budget,
        "budget_on": budget_on,
        "seed": seed,
        "epochs": recipe.epochs,
        "peer_schedule": {"pretrain_epochs": pre, "prune_rounds": len(per),
                          "finetune_epochs_per_round": per},
        "feature_argument": arg,
        "metric": wl.primary,
        "higher_is_better": wl.higher_is_better,
        "target_params": results["lumos"]["params"],
        "target_flops": results["lumos"]["flops"],
        "features_kept": features_kept,
        "feature_scores": feature_scores,
        "methods": results,
    }


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else "")[:300]


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return ""
    return f"{frames[-1].filename.split('site-packages/')[-1]}:{frames[-1].lineno}"


def _summary(r: dict) -> str:
    if r["status"] != "ok":
        return f"ERROR {r['error']} ({r['wall_s']:.0f}s)"
    return (f"metric {r['metric']:.4f}, params {r['params']}, nonzero {r['nonzero_params']}, "
            f"speed-up b256 {r['speedup_b256']:.2f}x, {r['wall_s']:.0f}s")


def is_better(a: float, b: float, higher_is_better: bool) -> bool:
    return a > b if higher_is_better else a < b


def relative_gap(lumos_metric: float, peer_metric: float, higher_is_better: bool) -> float:
    """Signed gap in LUMOS's favour, relative to the peer's metric (positive: LUMOS better)."""
    d = lumos_metric - peer_metric if higher_is_better else peer_metric - lumos_metric
    return d / max(abs(peer_metric), 1e-12)


__all__ = ["METHOD_LABELS", "PEER_METHODS", "is_better", "relative_gap", "run_structured",
           "schedule", "targets"]
