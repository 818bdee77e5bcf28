"""Run one third-party zoo entry through LUMOS and check what LUMOS promises.

:func:`run_entry` builds the model, sparsifies it at ``budget=0.3``, trains ~50 steps on one
small random batch, compacts it and checks:

- **faithful**: before training, the gated model with its gates open computes what the original
  model computes (eval, example inputs);
- **exact**: the compacted model computes what the gated model computes (eval), on the example
  inputs and at two other batch sizes (1 and 7), within ``1e-4`` of the largest output
  magnitude (at least 1);
- **finite**: the trained model's eval output and the compacted weights hold no NaN/Inf (when
  they do, the same recipe is rerun without LUMOS to say whose divergence it is);
- **repeatable**: two eval calls of the gated and of the compacted model give equal outputs;
- **params**: ``lumos.count_params`` of the compacted model equals the cost model's
  ``sm.compacted_counts()["params"]`` (the cost model's dense total is recorded too: it leaves
  out parameters the forward never uses, which compaction drops);
- **reload**: ``torch.save`` of the compacted model loads and runs, with the same output, in a
  process where ``import lumos`` fails (``sys.modules["lumos"] = None``).

A model LUMOS refuses (a :class:`lumos.LumosError` other than ``CompactionError``) is a
*refusal*: the guarantee holds if the message names a module of the model (its path or class)
or a source line. Anything else (another exception type, a ``CompactionError``, a failed
check) is a *failure*. It also measures how much of the model LUMOS can prune: the share of the
dense parameters that vanish when every gate is closed (``1 - cost(all gates 0) / dense``).
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import lumos

from .zoo import Entry

BUDGET = 0.3
STEPS = 50
LR, GATE_LR = 3e-3, 0.2
OTHER_BATCHES = (1, 7)
RTOL = 1e-4  # |gated - compacted| <= RTOL * max(1, max |gated|)
GATED_SHARE = 0.5  # a model is "gated" when at least this share of its parameters is prunable
TESTS_DIR = Path(__file__).resolve().parent.parent


@dataclass
class Result:
    name: str
    package: str
    family: str
    outcome: str = "failed"  # exact | refused | failed | skipped | broken (fails without LUMOS)
    stage: str = "build"  # where it stopped: build, sparsify, train, compact, check, done
    reason: str = ""
    error_type: str = ""
    dense_params: int | None = None
    gates: int | None = None
    prunable: float | None = None  # 1 - cost(all gates closed) / dense
    floor: float | None = None  # sm.smallest_fraction() before training
    kept: float | None = None  # sm.kept_fraction() after training
    compacted_params: int | None = None
    predicted_params: float | None = None
    cost_dense_params: float | None = None  # the cost model's dense total (params forward uses)
    faithful_diff: float | None = None  # open gates vs. original model
    max_diff: float | None = None  # max |gated - compacted| over every batch checked
    finite: bool | None = None  # the trained gated model's eval output has no NaN/Inf
    dense_finite: bool | None = None  # (only when not finite) the same recipe without LUMOS
    repeatable: bool | None = None
    params_equal: bool | None = None
    reloads: bool | None = None
    names_module: bool | None = None  # refusals: the message names a module or line
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def gated(self) -> bool:
        return self.prunable is not None and self.prunable >= GATED_SHARE

    @property
    def ok(self) -> bool:
        """The guarantee held: exact and every check passed, or a refusal naming a module."""
        return self.outcome == "exact" or (self.outcome == "refused" and bool(self.names_module))

    @property
    def status(self) -> str:
        if self.outcome == "exact":
            if self.gated:
                return "gated+exact"
            return f"exact, not gated ({_pct(self.prunable)} prunable)"
        if self.outcome == "refused":
            return f"refused: {self.reason}"
        if self.outcome == "skipped":
            return f"skipped: {self.reason}"
        if self.outcome == "broken":
            return f"model does not run without LUMOS: {self.reason}"
        return f"FAILED ({self.stage}): {self.reason}"

    def as_dict(self) -> dict:
        return {**asdict(self), "gated": self.gated, "ok": self.ok, "status": self.status}


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


# ---- outputs -------------------------------------------------------------------------------
def _leaves(value) -> list:
    if isinstance(value, dict):
        return [leaf for k in value for leaf in _leaves(value[k])]
    if isinstance(value, (tuple, list)):
        return [leaf for v in value for leaf in _leaves(v)]
    return [value]


def _loss(output, target) -> Tensor:
    terms = [F.mse_loss(o, t) for o, t in zip(_leaves(output), _leaves(target))
             if isinstance(o, Tensor) and isinstance(t, Tensor)]
    if not terms:
        raise RuntimeError("the model output has no floating tensor to train on")
    return torch.stack(terms).sum()


def max_difference(a, b) -> tuple[float, float]:
    """(max |a - b|, max |b|) over the tensors of two outputs; inf if the structures differ."""
    la, lb = _leaves(a), _leaves(b)
    if len(la) != len(lb):
        return math.inf, 0.0
    diff = scale = 0.0
    for x, y in zip(la, lb):
        if isinstance(x, Tensor) != isinstance(y, Tensor):
            return math.inf, 0.0
        if not isinstance(x, Tensor):
            if x != y:
                return math.inf, 0.0
            continue
        if x.shape != y.shape:
            return math.inf, 0.0
        if not x.is_floating_point():
            if not torch.equal(x, y):
                return math.inf, 0.0
            continue
        if x.numel() == 0:
            continue
        xd, yd = x.detach().double(), y.detach().double()
        if not torch.equal(torch.isnan(xd), torch.isnan(yd)):
            return math.inf, 0.0
        d = torch.nan_to_num((xd - yd).abs(), nan=0.0)
        diff = max(diff, float(d.max()))
        scale = max(scale, float(torch.nan_to_num(yd.abs(), nan=0.0).max()))
    return diff, scale


def within(diff: float, scale: float) -> bool:
    return diff <= RTOL * max(1.0, scale)


def identical(a, b) -> bool:
    la, lb = _leaves(a), _leaves(b)
    if len(la) != len(lb):
        return False
    for x, y in zip(la, lb):
        if isinstance(x, Tensor) and isinstance(y, Tensor):
            if x.shape != y.shape or not torch.equal(torch.nan_to_num(x), torch.nan_to_num(y)):
                return False
        elif isinstance(x, Tensor) or isinstance(y, Tensor) or x != y:
            return False
    return True


# ---- refusals ------------------------------------------------------------------------------
def names_a_module(message: str, model: nn.Module) -> bool:
    """Does a refusal name something the user can find: a submodule's path (quoted) or class,
    or a source line (``file.py:123`` / ``line 123``)?"""
    for path, module in model.named_modules():
        if path and (f"'{path}'" in message or f"`{path}`" in message
                     or f'"{path}"' in message):
            return True
        if path and type(module).__name__ in message:
            return True
    return bool(re.search(r"\.py[:\", ]+(line )?\d+|line \d+", message))


def _short(error: BaseException | Warning | str, limit: int = 300) -> str:
    """One line, at most ``limit`` characters, paths shown from the package on."""
    text = " ".join(str(error).split())
    text = re.sub(r"[^\s\"'(]*/site-packages/", "", text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---- reload without LUMOS ------------------------------------------------------------------
_WORKER = r"""
import json, sys, types, importlib.util
sys.modules["lumos"] = None  # any import of lumos, also from unpickling, fails
sys.path.insert(0, sys.argv[1])  # the tests folder: a user's own helper classes
if importlib.util.find_spec("wandb") is None:  # neuraloperator 0.3.0 imports it, unused
    sys.modules["wandb"] = types.ModuleType("wandb")
import torch
torch.set_num_threads(1)
from torchvision_cpu import ensure_torchvision_importable  # its CUDA wheel on CPU
ensure_torchvision_importable()

def leaves(v):
    if isinstance(v, dict):
        return [x for k in v for x in leaves(v[k])]
    if isinstance(v, (tuple, list)):
        return [x for y in v for x in leaves(y)]
    return [v]

for line in sys.stdin:
    request = json.loads(line)
    try:
        model = torch.load(request["model"], weights_only=False)
        io = torch.load(request["io"], weights_only=False)
        model.eval()
        with torch.no_grad():
            out = model(*io["inputs"])
        ok = True
        for a, b in zip(leaves(out), leaves(io["expected"])):
            if isinstance(a, torch.Tensor):
                ok = ok and a.shape == b.shape and bool(torch.allclose(
                    a.double(), b.double(), rtol=1e-5, atol=1e-6, equal_nan=True))
            else:
                ok = ok and a == b
        ok = ok and len(leaves(out)) == len(leaves(io["expected"]))
        lumos_loaded = any(k == "lumos" or k.startswith("lumos.")
                           for k, m in sys.modules.items() if m is not None)
        reply = {"ok": ok and not lumos_loaded,
                 "error": "" if ok else "output differs after reload",
                 "lumos_loaded": lumos_loaded}
    except BaseException as e:
        reply = {"ok": False, "error": f"{type(e).__name__}: {e}"[:400]}
    print(json.dumps(reply), flush=True)
"""


class Reloader:
    """One long-lived Python process without LUMOS that loads saved models and runs them
    (one process for the whole table: starting torch costs seconds)."""

    def __init__(self) -> None:
        self.dir = tempfile.TemporaryDirectory(prefix="lumos-thirdparty-")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": "",
               "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-c", _WORKER, str(TESTS_DIR)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
            cwd=self.dir.name)
        self.count = 0

    def check(self, small: nn.Module, inputs: tuple, expected) -> tuple[bool, str]:
        self.count += 1
        model_path = Path(self.dir.name) / f"small{self.count}.pt"
        io_path = Path(self.dir.name) / f"io{self.count}.pt"
        torch.save(small, model_path)
        torch.save({"inputs": inputs, "expected": expected}, io_path)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"model": str(model_path), "io": str(io_path)}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        model_path.unlink(missing_ok=True)
        io_path.unlink(missing_ok=True)
        if not line:
            return False, "the reload process died"
        reply = json.loads(line)
        return bool(reply["ok"]), reply.get("error", "")

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.dir.cleanup()

    def __enter__(self) -> Reloader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---- one entry -----------------------------------------------------------------------------
def _call(module: nn.Module, inputs: tuple):
    with torch.no_grad():
        return module(*inputs)


def _prunable(sm: lumos.SparseModel) -> float:
    if sm.gates.num_gates == 0 or sm.dense_params <= 0:
        return 0.0
    zeros = torch.zeros(sm.gates.num_gates, dtype=torch.float64)
    return 1.0 - float(sm.cost.total(zeros, "params")) / sm.dense_params


def _finite(output) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in _leaves(output)
               if isinstance(t, Tensor) and t.is_floating_point())


def _dense_stays_finite(entry: Entry, steps: int) -> bool:
    """Train a fresh copy of the model with the same recipe, without LUMOS."""
    case = entry.build()
    model, inputs = case.model, case.inputs
    target = case.make_target(_call(model, inputs))
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    model.train()
    for _ in range(steps):
        loss = _loss(model(*inputs), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return _finite(_call(model, inputs))


def train(sm: lumos.SparseModel, inputs: tuple, target, steps: int = STEPS) -> None:
    opt = torch.optim.Adam(sm.parameter_groups(lr=LR, gate_lr=GATE_LR))
    sm.train()
    for step in range(steps):
        sm.set_progress(step / steps)
        loss = _loss(sm(*inputs), target) + sm.penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()
    sm.set_progress(1.0)
    sm.eval()


def run_entry(entry: Entry, reloader: Reloader | None = None, steps: int = STEPS,
              budget: float = BUDGET) -> Result:
    """Everything above for one entry; never raises for the model's sake (the result says)."""
    result = Result(entry.name, entry.package, entry.family)
    missing = entry.missing()
    if missing:
        result.outcome, result.stage, result.reason = "skipped", "build", missing
        return result
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            _run(entry, result, reloader, steps, budget)
        except lumos.CompactionError as error:  # LUMOS caught its own mismatch
            _failed(result, error, "caught by compact()'s verification: ")
        except lumos.LumosError as error:
            result.outcome, result.error_type = "refused", type(error).__name__
            result.reason = f"{type(error).__name__}: {_short(error)}"
            result.names_module = names_a_module(str(error), _model_of(result))
        except Exception as error:  # noqa: BLE001 - a crash is a result here
            _failed(result, error)
            if result.stage == "build":  # the zoo's fault, not LUMOS's
                result.outcome = "broken"
        result.warnings = sorted({_short(w.message, 600) for w in caught
                                  if issubclass(w.category, lumos.LumosWarning)})
    result.seconds = time.perf_counter() - start
    _MODELS.pop(result.name, None)
    return result


_MODELS: dict[str, nn.Module] = {}


def _model_of(result: Result) -> nn.Module:
    return _MODELS.get(result.name, nn.Module())


def _failed(result: Result, error: BaseException, prefix: str = "") -> None:
    result.outcome, result.error_type = "failed", type(error).__name__
    where = traceback.extract_tb(error.__traceback__)
    frame = where[-1] if where else None
    at = f" [at {Path(frame.filename).name}:{frame.lineno}]" if frame else ""
    result.reason = f"{prefix}{type(error).__name__}: {_short(error)}{at}"


def _run(entry: Entry, result: Result, reloader: Reloader | None, steps: int,
         budget: float) -> None:
    case = entry.build()
    model, inputs = case.model, case.inputs
    _MODELS[result.name] = model
    result.dense_params = lumos.count_params(model)
    reference = _call(model, inputs)
    for n in OTHER_BATCHES:  # the model itself runs at every batch size checked
        _call(model, case.make_batch(n))
    target = case.make_target(reference)

    result.stage = "sparsify"
    sm = lumos.sparsify(model, inputs, budget=budget, **entry.sparsify_kwargs())
    sm.eval()
    result.gates = sm.gates.num_gates
    result.prunable = _prunable(sm)
    result.floor = sm.smallest_fraction()
    result.faithful_diff, scale = max_difference(_call(sm, inputs), reference)

    result.stage = "train"
    train(sm, inputs, target, steps)
    result.kept = sm.kept_fraction()

    result.stage = "compact"
    small = sm.compact()

    result.stage = "check"
    problems = []
    result.finite = _finite(_call(sm, inputs)) and all(
        bool(torch.isfinite(p).all()) for p in small.parameters())
    if not result.finite:
        result.dense_finite = _dense_stays_finite(entry, steps)
        problems.append("training diverged: NaN/Inf in the trained model's output or weights "
                        + ("(the same recipe without LUMOS stays finite)" if result.dense_finite
                           else "(so does the same recipe without LUMOS)"))
    if not within(result.faithful_diff, scale):
        problems.append(f"with open gates the gated model differs from the original by "
                        f"{result.faithful_diff:.3g} (outputs up to {scale:.3g})")
    worst, repeatable = 0.0, True
    for label, batch in [("example", inputs)] + [
            (f"batch {n}", case.make_batch(n)) for n in OTHER_BATCHES]:
        gated, compacted = _call(sm, batch), _call(small, batch)
        repeatable &= identical(gated, _call(sm, batch))
        repeatable &= identical(compacted, _call(small, batch))
        diff, scale = max_difference(compacted, gated)
        worst = max(worst, diff)
        if not within(diff, scale):
            problems.append(f"compacted != gated on the {label} inputs: max |diff| {diff:.3g} "
                            f"(outputs up to {scale:.3g})")
    result.max_diff, result.repeatable = worst, repeatable
    if not repeatable:
        problems.append("eval output not repeatable (two calls differ)")

    result.compacted_params = lumos.count_params(small)
    result.predicted_params = sm.compacted_counts()["params"]
    result.cost_dense_params = sm.dense_params
    result.params_equal = abs(result.compacted_params - result.predicted_params) < 0.5
    if not result.params_equal:
        problems.append(f"params: the compacted model has {result.compacted_params}, the cost "
                        f"model predicted {result.predicted_params:g}")

    if reloader is not None:
        ok, why = reloader.check(small, inputs, _call(small, inputs))
        result.reloads = ok
        if not ok:
            problems.append(f"reload without LUMOS: {why}")
    if problems:
        result.outcome, result.reason = "failed", "; ".join(problems)
        return
    result.outcome, result.stage = "exact", "done"
