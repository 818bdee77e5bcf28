"""Ship a compacted model in a form that loads without LUMOS.

Four formats, each written next to an ``export.json`` that says how to load it and records a
check made right after writing (the reloaded file run on example inputs, compared with the
model in memory):

- ``torchscript``: ``torch.jit.load("model.torchscript.pt")`` - torch only.
- ``onnx``: ``model.onnx`` for ONNX Runtime and other ONNX tools (needs ``onnx`` and
  ``onnxscript`` to write; the batch and graph-size dims are dynamic).
- ``fast``: ``model.fast.pt``, the fastest form measured here that loads with torch alone:
  BatchNorm folded into the conv/linear before it, then TorchScript - plain, frozen, or frozen
  and ``torch.jit.optimize_for_inference``d, whichever ran fastest at batch 1 and at the
  example's batch on the machine that exported it. ``export.json`` records the timings against
  the plain compacted module. Load it with ``torch.jit.load``; it is an inference-only module.
- ``state_dict``: ``state_dict.pt``, the compacted weights (``torch.load(weights_only=True)``)
  for your own copy of the architecture at the compacted widths listed in ``architecture.txt``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import io
import json
import logging
import os
import re
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from .copying import copy_model
from .errors import CheckpointError, ConfigurationError, UnsupportedModelError
from .measure import call_latency, latency

FORMATS = ("torchscript", "onnx", "fast", "state_dict")


@dataclass
class ExportResult:
    """Where the exported files are and how far the reloaded model's outputs were off."""

    format: str
    files: list[str]
    input_names: list[str]
    max_abs_diff: float
    checked_with: str
    #: what the writer measured or changed (the ``fast`` form: timings, folded BatchNorms)
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _input_names(model: nn.Module, n: int) -> list[str]:
    if isinstance(model, torch.fx.GraphModule):
        names = [node.target for node in model.graph.nodes if node.op == "placeholder"]
    else:
        names = list(inspect.signature(model.forward).parameters)
    return [str(x) for x in names[:n]] + [f"input_{i}" for i in range(len(names), n)]


def _torch_geometric_layers(model: nn.Module) -> list[str]:
    return sorted({type(m).__name__ for m in model.modules()
                   if type(m).__module__.startswith("torch_geometric")})


def _first_line(exc: BaseException) -> str:
    text = _plain(str(exc)).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


def _plain(text: str) -> str:
    """``text`` without terminal colour codes (torch.onnx colours its messages)."""
    return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)


def _onnx_reason(exc: BaseException) -> str:
    """What torch.onnx says went wrong: its "Exception summary" (the error behind its three
    paragraphs of next steps), else its first line, without colour codes."""
    text = _plain(str(exc))
    summary = re.search(r"## Exception summary\s*\n\s*(\S.*)", text)
    if summary is None:
        return _first_line(exc)
    return re.sub(r"^<class '([\w.]+)'>:\s*", r"\1: ", summary.group(1).strip())[:300]


def _max_diff(a, b) -> float:
    a = a if isinstance(a, (tuple, list)) else (a,)
    b = b if isinstance(b, (tuple, list)) else (b,)
    return max(float((torch.as_tensor(x).double() - torch.as_tensor(y).double()).abs().max())
               for x, y in zip(a, b))


def _check(expected, got, fmt: str, tolerance: float = 1e-4) -> float:
    diff = _max_diff(expected, got)
    scale = max(float(torch.as_tensor(e).abs().max()) for e in
                (expected if isinstance(expected, (tuple, list)) else (expected,)))
    if not diff <= tolerance * max(1.0, scale):
        raise UnsupportedModelError(
            f"the {fmt} export reloads but its outputs differ from the model's by {diff:.3g}; "
            "this model does not survive the format: use another --format."
        )
    return diff


def export_model(
    model: nn.Module,
    example_inputs: tuple[Tensor, ...],
    folder: str | os.PathLike,
    fmt: str,
) -> ExportResult:
    """Write ``model`` (a compacted module) to ``folder`` in ``fmt`` and verify the reload."""
    if fmt not in FORMATS:
        raise ConfigurationError(f"unknown export format {fmt!r}; choose one of {FORMATS}.")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = model.cpu().eval()
    inputs = tuple(t.cpu() for t in example_inputs)
    names = _input_names(model, len(inputs))
    with torch.no_grad():
        expected = model(*inputs)
    writer = {"torchscript": _torchscript, "onnx": _onnx, "fast": _fast,
              "state_dict": _state_dict}[fmt]
    result = writer(model, inputs, names, expected, folder)
    meta = result.to_dict() | {
        "torch": torch.__version__,
        "input_shapes": {n: list(t.shape) for n, t in zip(names, inputs)},
        "input_dtypes": {n: str(t.dtype) for n, t in zip(names, inputs)},
        "load": _HOW_TO_LOAD[fmt],
    }
    (folder / "export.json").write_text(json.dumps(meta, indent=1))
    return result


_HOW_TO_LOAD = {
    "torchscript": "model = torch.jit.load('model.torchscript.pt'); model(*inputs)",
    "onnx": "onnxruntime.InferenceSession('model.onnx').run(None, {name: array, ...})",
    "fast": "model = torch.jit.load('model.fast.pt'); model(*inputs)  # inference only",
    "state_dict": "your_model.load_state_dict(torch.load('state_dict.pt', weights_only=True)) "
                  "with the widths in architecture.txt",
}


def _script(model: nn.Module, fmt: str) -> torch.jit.ScriptModule:
    pyg = _torch_geometric_layers(model)
    if pyg:
        raise UnsupportedModelError(
            f"the model uses torch-geometric layers ({', '.join(pyg)}); torch-geometric layers "
            "cannot be TorchScripted and reloaded (a torch-geometric limitation, not LUMOS's). "
            "Export with --format onnx or --format state_dict instead."
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated in favour of torch.export
        try:
            return torch.jit.script(model)
        except Exception as exc:  # noqa: BLE001 - the reason is reported below
            first = exc
        # Python the compiler rejects (unscriptable helpers, string annotations under
        # ``from __future__ import annotations``) is often gone from the model's fx trace,
        # whose generated code scripts once its type annotations are dropped (fx writes a
        # string annotation as an unknown name such as ``_torch_Tensor_``); the reload check
        # after writing still compares the outputs with the model's.
        with contextlib.suppress(Exception):
            return torch.jit.script(_untyped_trace(model))
    raise UnsupportedModelError(
        f"TorchScript cannot compile this model ({_first_line(first)}), which the {fmt} "
        "format needs; export with --format onnx or --format state_dict instead."
    ) from None


def _untyped_trace(model: nn.Module) -> torch.fx.GraphModule:
    """The model's fx graph (a copy, for a GraphModule) with no type annotations."""
    gm = copy_model(model) if isinstance(model, torch.fx.GraphModule) \
        else torch.fx.symbolic_trace(model)
    for node in gm.graph.nodes:
        node.type = None
    gm.recompile()
    return gm


def _save_and_reload(scripted, path: Path, inputs, expected, fmt: str) -> tuple[object, float]:
    """Write ``scripted``, load it back and compare its outputs; a file that does not load or
    does not reproduce the model is removed, not left for the user to find."""
    try:
        scripted.save(str(path))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                reloaded = torch.jit.load(str(path))
            except RuntimeError as exc:
                raise UnsupportedModelError(
                    f"the {fmt} file was written but torch.jit.load cannot read it back "
                    f"({_first_line(exc)}); use another --format.") from None
        with torch.no_grad():
            return reloaded, _check(expected, reloaded(*inputs), fmt)
    except Exception:
        path.unlink(missing_ok=True)
        raise


def _torchscript(model, inputs, names, expected, folder: Path) -> ExportResult:
    path = folder / "model.torchscript.pt"
    _, diff = _save_and_reload(_script(model, "torchscript"), path, inputs, expected,
                               "torchscript")
    return ExportResult("torchscript", [path.name], names, diff, "torch.jit.load")


def _fast(model, inputs, names, expected, folder: Path) -> ExportResult:
    """Fold BatchNorm, script, and keep the fastest TorchScript form that survives a reload.

    Every form is saved, loaded back and checked before it is timed, and the loaded copy is
    what is timed: some frozen or ``optimize_for_inference`` graphs run in memory but do not
    load again (torch raises on ``torch.jit.load``), and those are not offered.
    """
    folded, n_folded = fold_batchnorm(model, inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = _script(folded, "fast").eval()
        forms = {"scripted": scripted}
        # torch.jit.freeze returns a frozen clone, so each form starts from the same script
        with contextlib.suppress(Exception):  # an optimisation that does not apply is skipped
            forms["frozen"] = torch.jit.freeze(scripted)
        with contextlib.suppress(Exception):
            forms["frozen+optimize_for_inference"] = torch.jit.optimize_for_inference(
                torch.jit.freeze(scripted))
    batches = _batch_sizes(model, inputs, expected)
    plain = {label: latency(model, x) for label, x in batches.items()}
    timings: dict[str, dict[str, float]] = {}
    diffs: dict[str, float] = {}
    dropped: dict[str, str] = {}
    candidates = {name: folder / f".fast-candidate-{i}.pt" for i, name in enumerate(forms)}
    try:
        for name, form in forms.items():
            try:
                loaded, diffs[name] = _save_and_reload(form, candidates[name], inputs, expected,
                                                       "fast")
            except Exception as exc:  # noqa: BLE001 - a form that fails its reload is not offered
                dropped[name] = _first_line(exc)
                continue
            timings[name] = {label: _latency_of(loaded, x) for label, x in batches.items()}
    except BaseException:
        for candidate in candidates.values():
            candidate.unlink(missing_ok=True)
        raise
    if not timings:
        raise UnsupportedModelError(
            "no TorchScript form of this model reloads with its outputs ("
            + "; ".join(f"{k}: {v}" for k, v in dropped.items()) + "); export with "
            "--format onnx or --format state_dict instead.")
    # the form whose worst ratio to the plain module (over the batch sizes timed) is lowest
    best = min(timings, key=lambda f: max(timings[f][b] / plain[b] for b in batches))
    path = folder / "model.fast.pt"
    for name, candidate in candidates.items():
        if name == best:
            candidate.replace(path)
        else:
            candidate.unlink(missing_ok=True)
    details = {
        "form": best,
        "batchnorm_folded": n_folded,
        "threads": torch.get_num_threads(),
        "latency_s": {"plain compacted": plain} | timings,
        "speedup_vs_plain": {b: plain[b] / timings[best][b] for b in batches},
        "forms_not_offered": dropped,
    }
    return ExportResult("fast", [path.name], names, diffs[best], "torch.jit.load", details)


def _latency_of(module, inputs) -> float:
    # frozen TorchScript runs its first calls through the profiling executor: warm up more
    return call_latency(lambda: module(*inputs), repeats=30, warmup=10)


def _batch_sizes(model, inputs, expected) -> dict[str, tuple]:
    """The example's inputs, and their first sample alone when the model takes that (a batch
    of 1 is where per-call overhead shows); graph inputs, whose rows are nodes, only whole."""
    out = {f"batch {inputs[0].shape[0]}" if inputs and inputs[0].dim() else "example": inputs}
    rows = {t.shape[0] for t in inputs if t.dim()}
    if len(rows) != 1 or rows == {1}:
        return out
    one = tuple(t[:1] for t in inputs)
    try:
        with torch.no_grad():
            got = model(*one)
    except Exception:  # noqa: BLE001 - the model does not take a slice: time the example only
        return out
    first = got[0] if isinstance(got, (tuple, list)) else got
    whole = expected[0] if isinstance(expected, (tuple, list)) else expected
    if torch.is_tensor(first) and first.dim() and first.shape[0] == 1 and whole.shape[0] > 1:
        out = {"batch 1": one} | out
    return out


#: the layers a following BatchNorm folds into, and whether the layer is transposed
_FOLDS_INTO: dict[type, bool] = {nn.Conv1d: False, nn.Conv2d: False, nn.Conv3d: False,
                                 nn.ConvTranspose1d: True, nn.ConvTranspose2d: True,
                                 nn.ConvTranspose3d: True, nn.Linear: False}


def fold_batchnorm(model: nn.Module, example_inputs: tuple[Tensor, ...]
                   ) -> tuple[nn.Module, int]:
    """A copy of ``model`` with each eval-mode BatchNorm folded into the conv or linear layer
    right before it, when that layer feeds nothing else and is called once.

    Folding is exact in exact arithmetic (BatchNorm in eval mode is an affine map per
    channel), and it saves one pass over the activations per BatchNorm. A Linear folds only
    when its output is 2-D (BatchNorm1d then normalises the linear's own features). The copy is
    checked against ``model`` on ``example_inputs``; if it differs, ``model`` is returned
    unchanged.

    Args:
        model: an eval-mode module, usually a compacted ``torch.fx.GraphModule`` (one with
            any submodule in training mode is returned as it is). It is not changed.
        example_inputs: positional inputs to check the folded copy with.

    Returns:
        ``(module, number of BatchNorms folded)``; the module is ``model`` itself when nothing
        was folded.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()
        >>> folded, n = fold_batchnorm(net, (torch.randn(2, 3, 8, 8),))
        >>> n, any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
        (1, False)
    """
    from torch.fx.passes.shape_prop import ShapeProp
    from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

    if any(m.training for m in model.modules()):
        return model, 0  # BatchNorm in training mode normalises by the batch: nothing folds
    try:
        gm = copy_model(model)
        if not isinstance(gm, torch.fx.GraphModule):
            gm = torch.fx.symbolic_trace(gm)
        ShapeProp(gm).propagate(*example_inputs)
    except Exception:  # noqa: BLE001 - a model fx cannot trace keeps its BatchNorms
        return model, 0
    modules = dict(gm.named_modules())
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    folded = 0
    for node in list(gm.graph.nodes):
        bn = modules.get(node.target) if node.op == "call_module" else None
        if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or bn.running_mean is None \
                or len(node.args) != 1 or node.kwargs:
            continue
        prev = node.args[0]
        if not isinstance(prev, torch.fx.Node) or prev.op != "call_module" \
                or len(prev.users) != 1 or calls.get(prev.target) != 1:
            continue
        layer = modules[prev.target]
        transposed = _FOLDS_INTO.get(type(layer))
        if transposed is None:
            continue
        if isinstance(layer, nn.Linear):
            meta = prev.meta.get("tensor_meta")
            if meta is None or len(getattr(meta, "shape", ())) != 2 \
                    or layer.out_features != bn.num_features:
                continue
            fused = fuse_linear_bn_eval(layer, bn)
        else:
            if layer.out_channels != bn.num_features:
                continue
            fused = fuse_conv_bn_eval(layer, bn, transpose=transposed)
        gm.set_submodule(prev.target, fused)
        modules[prev.target] = fused
        node.replace_all_uses_with(prev)
        gm.graph.erase_node(node)
        folded += 1
    if not folded:
        return model, 0
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    with torch.no_grad():
        try:
            _check(model(*example_inputs), gm(*example_inputs), "folded BatchNorm")
        except UnsupportedModelError:
            return model, 0
    return gm, folded


def onnx_available() -> list[str]:
    """The packages ONNX export needs that are missing (empty when it can run)."""
    return [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]


def _onnx(model, inputs, names, expected, folder: Path) -> ExportResult:
    missing = onnx_available()
    if missing:
        raise ConfigurationError(
            f"ONNX export needs the package(s) {missing}: pip install onnx onnxscript "
            "(or pip install 'lumos-sciml[export]'); or use --format torchscript / state_dict."
        )
    path = folder / "model.onnx"
    auto = torch.export.Dim.AUTO
    dynamic = tuple({d: auto for d in range(t.dim())} for t in inputs)
    fixed = False
    try:
        _export_onnx(model, inputs, path, names, dynamic)
    except Exception as exc:
        # sizes that decide slices (an FNO's kept modes) cannot stay symbolic: the shapes of
        # the example are then fixed in the file, which says so
        try:
            _export_onnx(model, inputs, path, names, None)
            fixed = True
        except Exception:
            raise UnsupportedModelError(
                f"torch.onnx could not export this model ({_onnx_reason(exc)}); use --format "
                "torchscript or --format state_dict instead."
            ) from None
    got, checker = run_onnx(path, dict(zip(names, inputs)))
    diff = _check(expected, torch.from_numpy(got[0]), "onnx")
    if fixed:
        shapes = ", ".join(f"{n} {tuple(t.shape)}" for n, t in zip(names, inputs))
        checker += (f"; input shapes fixed to the example's ({shapes}): its sizes decide "
                    "slices that ONNX cannot keep symbolic")
    return ExportResult("onnx", [path.name], names, diff, checker)


def _export_onnx(model, inputs, path: Path, names, dynamic) -> None:
    noise = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(noise), \
            contextlib.redirect_stderr(noise), _quiet_torch_logs():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, inputs, str(path), dynamo=True, input_names=names,
                          output_names=["output"], dynamic_shapes=dynamic,
                          external_data=False, verbose=False)


@contextlib.contextmanager
def _quiet_torch_logs():
    """torch.export / torch.onnx log progress and harmless notes (missing torchvision ops)."""
    logger = logging.getLogger("torch")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def run_onnx(path: str | os.PathLike, feeds: dict[str, Tensor]) -> tuple[list, str]:
    """Run an ONNX file: onnxruntime if installed, else onnx's reference evaluator."""
    arrays = {k: v.numpy() for k, v in feeds.items()}
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        wanted = {i.name for i in session.get_inputs()}
        return session.run(None, {k: v for k, v in arrays.items() if k in wanted}), "onnxruntime"
    from onnx.reference import ReferenceEvaluator

    evaluator = ReferenceEvaluator(str(path))
    wanted = set(evaluator.input_names)
    return evaluator.run(None, {k: v for k, v in arrays.items() if k in wanted}), "onnx.reference"


def _state_dict(model, inputs, names, expected, folder: Path) -> ExportResult:
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    path = folder / "state_dict.pt"
    torch.save(state, path)
    lines = ["# compacted architecture: build these layers, then load_state_dict(state_dict.pt)",
             "", str(model), "", "# parameter shapes"]
    lines += [f"{k}: {tuple(v.shape)}" for k, v in state.items()]
    if isinstance(model, torch.fx.GraphModule):
        lines += ["", "# forward (torch.fx code of the compacted model)", model.code.strip()]
    (folder / "architecture.txt").write_text("\n".join(lines) + "\n")
    reloaded = torch.load(path, weights_only=True)
    twin = copy_model(model)
    twin.load_state_dict(reloaded)
    with torch.no_grad():
        diff = _check(expected, twin(*inputs), "state_dict")
    return ExportResult("state_dict", [path.name, "architecture.txt"], names, diff,
                        "load_state_dict(torch.load(weights_only=True))")


def export_run(run_dir: str | os.PathLike, fmt: str, out: str | os.PathLike | None = None
               ) -> tuple[Path, ExportResult]:
    """Export the compacted model of a finished run (rebuilt from its weights-only checkpoint)."""
    from .runs import load_run

    if fmt not in FORMATS:
        raise ConfigurationError(f"unknown export format {fmt!r}; choose one of {FORMATS}.")
    _, _, data, sm = load_run(run_dir)
    small = sm.compact()
    inputs, _ = data.example_batch("val", 8)
    folder = Path(out) if out is not None else Path(run_dir) / "export" / fmt
    fix = ("choose a writable folder with --out DIR" if out is not None else
           "make the run directory writable, or write the export elsewhere with --out DIR")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        writable = os.access(folder, os.W_OK | os.X_OK)
    except OSError as exc:
        raise CheckpointError(f"cannot create {folder} ({exc.strerror or exc}); {fix}.") from None
    if not writable:
        raise CheckpointError(f"cannot write the export: {folder} is read-only; {fix}.")
    try:
        return folder, export_model(small, tuple(inputs), folder, fmt)
    except OSError as exc:
        raise CheckpointError(
            f"cannot write the export to {folder} ({exc.strerror or exc}); {fix}."
        ) from None
