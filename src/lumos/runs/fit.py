"""``lumos fit``: train a config into its run directory, under a budget or a tolerance.

Both kinds of run start with the same :func:`_set_up` (the workload, the resolved config, the
prepared run directory, threads, device and data) and end with the same
:func:`~lumos.runs.results.finish_run`.
"""

from __future__ import annotations

import importlib.util
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import distributed
from ..errors import ConfigurationError
from .catalog import resolve_workload
from .config import RunConfig, recipe_of, resolved, resume_compared, write_config
from .directory import RunLock, prepare_run_dir, write_metrics_csv
from .results import RunResult, finish_run, validation_metrics


def build_sparse_model(config: RunConfig, workload, data):
    """The workload's model, seeded and sparsified exactly as ``config`` says."""
    from .. import GateOptions
    from ..workloads import build_sparse

    # a tolerance run walks its own budget on a model sparsified with budget 1.0
    budget = config.budget if config.tolerance is None else 1.0
    return build_sparse(workload, data, budget=budget, seed=config.seed,
                        feature_penalty=config.feature_penalty, budget_on=config.budget_on,
                        gates=GateOptions(budget_warmup=config.warmup,
                                          width_multiple=config.width_multiple))


@dataclass
class _Setup:
    """What a run trains with, once its directory is ready."""

    config: RunConfig  # resolved: the recipe's values filled in
    workload: object
    data: object
    device: torch.device
    ctx: distributed.ProcessContext
    show: bool | None  # progress bars on this process
    lock: RunLock | None = None  # the run directory's lock (rank 0)

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def _set_up(config: RunConfig, out: Path, resume: bool, progress: bool | None, *,
            cpu_only: bool = False) -> _Setup:
    """Resolve the workload and config, prepare (or check, on resume) and lock the run
    directory and write ``config.yaml`` on rank 0, set the threads, pick the device, then read
    the data (rank 0 generates them first, so the others read its cache)."""
    ctx = distributed.current()
    workload = resolve_workload(config.workload)
    config = resolved(config, workload)
    lock = None
    if ctx.is_main:
        lock = prepare_run_dir(out, bool(resume), config)
    try:
        return _set_up_locked(config, workload, out, progress, ctx, lock, cpu_only)
    except BaseException:
        if lock is not None:
            lock.release()
        raise


def _set_up_locked(config, workload, out, progress, ctx, lock, cpu_only) -> _Setup:
    if ctx.is_main:
        write_config(config, out / "config.yaml")
    distributed.barrier()
    if config.threads:
        torch.set_num_threads(config.threads)
    device = distributed.device_for(ctx, config.device)
    if cpu_only and device.type != "cpu":
        raise ConfigurationError("tolerance mode runs on the CPU for now; give device: cpu.")
    show = progress if ctx.is_main else False
    data = workload.data(config.size, config.seed, config.cache_dir, show) if ctx.is_main else None
    distributed.barrier()
    if data is None:
        data = workload.data(config.size, config.seed, config.cache_dir, False)
    return _Setup(config, workload, data, device, ctx, show, lock)


def fit_run(
    config: RunConfig,
    out: str | os.PathLike,
    *,
    resume: bool | str | os.PathLike = False,
    progress: bool | None = None,
) -> RunResult | None:
    """Train ``config`` into the run directory ``out``; returns the result on rank 0.

    Under ``torchrun`` every rank calls this; a restarted worker group (``--max-restarts``)
    resumes from the last checkpoint by itself.

    ``resume``: True continues from the newest intact checkpoint in ``out/checkpoints``; a
    path continues from that checkpoint file (its configuration must match).
    """
    distributed.init_from_env()
    out = Path(out)
    if isinstance(resume, (str, os.PathLike)):
        resume = Path(resume)
        if not resume.is_file():
            raise ConfigurationError(
                f"--resume {resume}: no such checkpoint file; give a ckpt-*.pt file (see "
                f"{out / 'checkpoints'}), or --resume alone for the newest intact one."
            )
    else:
        resume = bool(resume) or distributed.restart_count() > 0
    if config.tolerance is not None:
        return _fit_tolerance(config, out, bool(resume), progress)
    run = _set_up(config, out, resume, progress)
    try:
        return _fit_budget(run, out, resume)
    finally:
        run.release()


def _fit_budget(run: _Setup, out: Path, resume) -> RunResult | None:
    """``budget:`` runs: train the sparsified model (resumable, on every process)."""
    from ..training import History
    from ..training.state import run_config
    from ..workloads import train_recipe

    config, workload, data, ctx = run.config, run.workload, run.data, run.ctx
    sm = build_sparse_model(config, workload, data)

    def write_progress(epoch: int, history: History) -> None:
        if ctx.is_main:
            write_metrics_csv(out / "metrics.csv", history, workload.primary)

    start = time.perf_counter()
    # recorded in, and checked against, every checkpoint (the keys --resume may not change)
    with run_config(resume_compared(config.to_dict())):
        history = train_recipe(
            sm, workload, data, recipe_of(config, workload), seed=config.seed,
            gate_lr=config.gate_lr,
            val_data=data.loader("val", 256, shuffle=False), metrics=workload.metrics,
            on_epoch=write_progress, record_gates=config.record_gates,
            grad_clip=config.grad_clip, device=run.device, progress=run.show,
            checkpoint_dir=out / "checkpoints", checkpoint_every=config.checkpoint_every or None,
            keep_checkpoints=config.keep_checkpoints, resume=resume,
        )
    seconds = time.perf_counter() - start
    dense = _dense_baseline(run) if config.dense_baseline else None
    result = None
    if ctx.is_main:
        result = finish_run(out, config, workload, data, sm, seconds, dense, run.device,
                            ctx.world_size, history=history)
    distributed.barrier()
    return result


def _dense_baseline(run: _Setup) -> dict:
    """The dense model trained with the same recipe and seed: its metrics and size."""
    from ..measure import count_params
    from ..workloads import build_dense, train_recipe

    config = run.config
    dense = build_dense(run.workload, run.data, seed=config.seed)
    train_recipe(dense, run.workload, run.data, recipe_of(config, run.workload),
                 seed=config.seed,
                 grad_clip=config.grad_clip, device=run.device, progress=run.show)
    return {"metrics": validation_metrics(dense, run.data, run.workload, run.device),
            "params": count_params(dense)}


def _fit_tolerance(config: RunConfig, out: Path, resume: bool, progress) -> RunResult | None:
    """``tolerance:`` runs: :func:`lumos.tolerance.fit_within_tolerance` walks the budget down
    in one process; the run directory is written as for a budget run (no mid-run resume)."""
    if importlib.util.find_spec("lumos.tolerance") is None:
        raise ConfigurationError(
            "tolerance mode is not available in this version; give budget: (a kept "
            "parameter fraction) instead."
        )
    if distributed.current().distributed:
        raise ConfigurationError(
            "tolerance mode runs in one process; launch it without torchrun, or give "
            "budget: to train on several processes."
        )
    if resume:
        raise ConfigurationError(
            "a tolerance run cannot be resumed; start it again in a new folder (--out DIR)."
        )
    run = _set_up(config, out, resume=False, progress=progress, cpu_only=True)
    try:
        return _tolerance_walk(run, out)
    finally:
        run.release()


def _tolerance_walk(run: _Setup, out: Path) -> RunResult:
    from .. import GateOptions
    from ..checkpoint import CheckpointManager
    from ..tolerance import fit_within_tolerance
    from ..workloads import build_dense, example_inputs, feature_options

    config, workload, data = run.config, run.workload, run.data
    model = build_dense(workload, data, seed=config.seed)
    start = time.perf_counter()
    result = fit_within_tolerance(
        model, example_inputs(data), data.loader("train", config.batch_size, shuffle=True,
                                                 seed=config.seed),
        data.loader("val", 256, shuffle=False), metrics=workload.metrics,
        primary=workload.primary, higher_is_better=workload.higher_is_better,
        epochs=config.epochs, tolerance=config.tolerance, loss_fn=workload.loss, lr=config.lr,
        weight_decay=config.weight_decay, batch_size=config.batch_size, seed=config.seed,
        lr_schedule=recipe_of(config, workload).lr_schedule,
        feature_penalty=config.feature_penalty, budget_on=config.budget_on,
        gates=GateOptions(width_multiple=config.width_multiple),
        **feature_options(model, data),
    )
    seconds = time.perf_counter() - start
    sm = result.model
    CheckpointManager(out / "checkpoints", config.keep_checkpoints).save(
        {"model": sm.state_dict(), "position": {"finished": True, "epoch": config.epochs},
         "run": {"tolerance": config.tolerance}}, config.epochs)
    dense_params = float(sm.dense_params)
    curve = [{"epoch": p.epoch + 1, "params": dense_params * p.kept_fraction,
              "metric": p.metric, "phase": p.phase, "within": p.within} for p in result.walk]
    dense = {"metrics": {workload.primary: result.reference}, "params": None}
    return finish_run(out, config, workload, data, sm, seconds, dense, run.device, 1,
                      curve=curve, extra={"tolerance_result": result.to_dict()},
                      gate_history=result)
