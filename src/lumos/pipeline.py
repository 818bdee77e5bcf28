"""``lumos.sparsify``: check → trace → read the channels → insert gates → ``SparseModel``.

Each step is its own module, in the order torch's fx quantization uses (tracer → prepare →
convert): :mod:`lumos.topology.tracer` traces, :mod:`lumos.topology.analysis` reads the
channel groups with the rules of :mod:`lumos.topology.registry`, :mod:`lumos.gating` inserts
the gates, and :mod:`lumos.compaction` later removes them.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from . import topology
from .errors import ConfigurationError, LumosWarning, UnsupportedModelError, UntraceableModelError
from .gates import HardConcreteConfig, fully_open_keep_probability
from .gating import insert_gates
from .inputs import (
    InputSpec,
    bind_example,
    feature_arguments,
    feature_names_for,
    traced_constants,
)
from .options import DEFAULT_FEATURE_PENALTY, GateOptions, merge_deprecated, number
from .sparse_model import SparseModel
from .topology.analysis import ChannelGraph, propagate_shapes


def sparsify(
    model: nn.Module,
    example_inputs,
    *,
    budget: float | None = None,
    budget_on: str = "params",
    lam: float | None = None,
    features: bool | str | Sequence[str] = True,
    feature_names: Sequence[str] | dict[str, Sequence[str]] | None = None,
    feature_penalty: float = DEFAULT_FEATURE_PENALTY,
    strict: bool = False,
    concrete_args: dict | None = None,
    keep: Sequence[str | type[nn.Module]] = (),
    gates: GateOptions | None = None,
    gate_config: HardConcreteConfig | None = None,
    init_keep_probability: float | dict[str, float] | None = None,
    warmup: float | None = None,
) -> SparseModel:
    """Wrap ``model`` so training learns which input features and hidden channels to keep.

    Args:
        model: any ``nn.Module`` torch.fx can trace. Its parameters are shared, not copied.
        example_inputs: a tensor, tuple of positional inputs, or dict of keyword inputs.
        budget: keep at most this fraction of the parameters (0 < budget <= 1); a Lagrangian
            controller finds the penalty strength. Give ``budget`` or ``lam``, not both.
        budget_on: what ``budget`` (or ``lam``) measures: ``"params"`` (the parameter count),
            ``"flops"`` (the multiply-adds of a forward on ``example_inputs``, what
            inference time follows; high-resolution channels cost more than late ones) or
            ``"latency"`` (each layer's FLOPs weighted by its time per FLOP, measured once on
            the model's device at this call: :mod:`lumos.latency`).
        lam: fixed penalty strength on the expected fraction of live parameters.
        features: gate the features of every floating input (True), of none (False), or of
            the named arguments only.
        feature_names: names of the feature columns (for one input), or ``{arg: names}``.
        feature_penalty: strength of the feature-selection pressure (0 disables it).
        strict: raise instead of keeping channels whole when an op has no channel rule.
        concrete_args: constants for torch.fx (e.g. flags that steer Python control flow).
        keep: modules to keep whole, by name (``"encoder"``, ``"head"``) or by class
            (``nn.LayerNorm``): never gated inside, their input and output widths kept, listed
            in ``report()`` (a pretrained encoder, an output head).
        gates: how the gates are shaped, started and trained (temperature, stretch, noise
            schedules, log-alpha clamp, initial keep probability, budget warm-up, final
            freeze-and-fine-tune); see :class:`~lumos.GateOptions`.
        gate_config, init_keep_probability, warmup: deprecated; set them in ``gates``
            (``temperature``/``stretch``, ``init_keep_probability``, ``budget_warmup``).

    Returns:
        A :class:`~lumos.SparseModel` that trains like ``model`` with gates; add its
        ``penalty()`` to the loss, then call ``compact()``.

    Raises:
        ConfigurationError: a bad budget, lam, penalty, feature selection or option.
        InputError: example inputs that do not fit the model or hold NaN/Inf.
        UntraceableModelError: torch.fx cannot trace the model (the message names the
            module and line).
        UnsupportedModelError: ``strict=True`` and some channels have no rule.

    Example:
        >>> import torch, lumos
        >>> net = torch.nn.Sequential(torch.nn.Linear(6, 32), torch.nn.ReLU(),
        ...                           torch.nn.Linear(32, 1))
        >>> sm = lumos.sparsify(net, torch.randn(64, 6), budget=0.25)
        >>> sm.gates.num_gates  # 6 input features + 32 neurons
        38
        >>> sm.eval().compact()(torch.randn(3, 6)).shape
        torch.Size([3, 1])
    """
    _check_model(model)
    budget, lam, feature_penalty = _check_strengths(budget, lam, feature_penalty)
    _check_budget_on(budget_on)
    options = merge_deprecated(gates, gate_config=gate_config,
                               init_keep_probability=init_keep_probability, warmup=warmup)
    if options.starts_half_open():
        warnings.warn(
            f"init_keep_probability={options.init_keep_probability} starts the gates half-open "
            "(the deterministic gate is 1 only from "
            f"{fully_open_keep_probability(options.hard_concrete()):.3f}), so before training "
            "the sparse model's eval output differs from the original model's. Use a higher "
            "value if training should start from the original model.",
            LumosWarning,
            stacklevel=2,
        )
    signature, values = bind_example(model, example_inputs)

    # An optional argument left at None (a mask, a conditioning input), or a flag left at its
    # default, is traced as that constant, so `if cond is not None:` / `if is_causal:` follow
    # the branch the example takes; the sparse model refuses calls that pass something else.
    constants = {k: v for k, v in traced_constants(signature, values).items()
                 if k not in (concrete_args or {})}
    traced = {**constants, **(concrete_args or {})}
    kept_whole = _kept_paths(model, keep)
    gm = topology.trace(model, traced or None, keep=kept_whole, example=values)
    # *args / **kwargs left empty stay in the graph's signature but carry nothing
    variadic = [name for name, p in signature.parameters.items()
                if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    for name in variadic:
        if values.get(name):
            raise UntraceableModelError(
                f"example_inputs pass values through {type(model).__name__}.forward's variadic "
                f"'{name}', which LUMOS cannot trace; give the model explicit named arguments."
            )
    named = {k: v for k, v in values.items() if k not in variadic}
    placeholders = [n for n in gm.graph.nodes
                    if n.op == "placeholder" and not str(n.target).startswith("*")]
    if len(placeholders) == len(named):  # fx renames specialised arguments (cond_1)
        taken = {n.name for n in gm.graph.nodes}
        for node, name in zip(placeholders, named):
            if node.target != name and name not in taken:
                node.target = node.name = name
        gm.recompile()
    example_args = []
    for node in placeholders:
        if node.target not in named:
            raise UntraceableModelError(
                f"forward argument '{node.target}' of {type(model).__name__} could not be matched "
                "to example_inputs (variadic *args/**kwargs are not supported); give the model "
                "explicit named arguments."
            )
        example_args.append(named[node.target])
    propagate_shapes(gm, tuple(example_args))

    wanted = feature_arguments(features, [n.target for n in placeholders])
    feature_inputs = {}
    for node, value in zip(placeholders, example_args):
        floating = isinstance(value, Tensor) and value.is_floating_point()
        if node.target in wanted and floating and value.dim() >= 2:
            dim = ChannelGraph.feature_dim(gm, node.target, value.dim())
            feature_inputs[node.target] = dim % value.dim()
        elif node.target in wanted and floating and features is not True:
            raise ConfigurationError(
                f"features= names '{node.target}', but its example is {value.dim()}-D (shape "
                f"{tuple(value.shape)}): LUMOS gates the features of batched inputs (samples "
                "first, e.g. x.unsqueeze(0) or x.reshape(-1, 1) for one feature)."
            )
        elif node.target in wanted and floating:
            warnings.warn(
                f"input '{node.target}' is {value.dim()}-D (shape {tuple(value.shape)}), so its "
                "features are not gated; pass a batch with samples first (e.g. x.reshape(-1, "
                "1) for one feature per sample) to select features.",
                LumosWarning, stacklevel=2)
    names = feature_names_for(feature_names, feature_inputs,
                              {n.target: v for n, v in zip(placeholders, example_args)})

    graph = ChannelGraph(gm, tuple(example_args), feature_inputs, strict=strict,
                         shapes_known=True, keep=kept_whole, fixed_kinds=options.fixed_kinds())
    if strict:
        _refuse_ungated(graph)
    insert_gates(gm, graph)
    spec = InputSpec(
        signature,
        tuple(example_args),
        {name: (graph.feature_dims[name], space.size)
         for name, space in graph.feature_spaces.items()},
        constants,
        tuple(variadic),
    )
    sm = SparseModel(gm, graph, spec, budget=budget, lam=lam, feature_penalty=feature_penalty,
                     feature_names=names, gate_options=options, budget_on=budget_on)
    if budget is not None and budget < 1.0:
        floor = sm.smallest_fraction()
        if floor > budget:
            sm._warned_unreachable = True
            warnings.warn(sm.unreachable_message(budget, floor), LumosWarning, stacklevel=2)
    return sm


def _kept_paths(model: nn.Module, keep) -> frozenset[str]:
    """Module paths ``keep=`` names (a name, a class, or a list of them), checked."""
    if isinstance(keep, (str, type)):
        keep = [keep]
    names = dict(model.named_modules())
    paths: set[str] = set()
    for item in keep:
        if isinstance(item, str):
            if item not in names or item == "":
                near = [n for n in names if n and (item in n or n in item)][:5]
                raise ConfigurationError(
                    f"keep= names {item!r}, which is not a submodule of "
                    f"{type(model).__name__}" + (f" (did you mean {near}?)" if near else "")
                    + "; use the names of model.named_modules()."
                )
            paths.add(item)
        elif isinstance(item, type) and issubclass(item, nn.Module):
            paths.update(n for n, m in names.items() if n and isinstance(m, item))
        else:
            raise ConfigurationError(
                f"keep= takes module names or nn.Module classes, got {item!r}."
            )
    # a kept module's children are inside it: only the outermost ones are nodes
    return frozenset(p for p in paths
                     if not any(p.startswith(q + ".") for q in paths if q != p))


def _refuse_ungated(graph: ChannelGraph) -> None:
    """``strict=True``: every unit that ends up ungated is an error naming it (outputs, which
    are never pruned, excepted)."""
    problems = [f"{u.where}: {u.reason}" for u in graph.records.ungated]
    problems += [f"'{s.origin}' ({s.kind}, {s.size}): {s.pinned}" for s in graph.pinned_spaces()
                 if s.pinned is not None and not s.pinned.startswith("model output")]
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more"
                                           if len(problems) > 5 else "")
        raise UnsupportedModelError(
            f"strict=True and {len(problems)} unit(s) would stay ungated: {shown}. Ways out: "
            "teach LUMOS the layer with lumos.register_rule(YourLayer, ...) "
            "(docs/custom_layers.md), or call sparsify(..., strict=False) to keep these "
            "channels whole (listed in report())."
        )


def _check_model(model: object) -> None:
    if not isinstance(model, nn.Module):
        raise ConfigurationError(
            f"sparsify expects a torch.nn.Module, got {type(model).__name__}; wrap your function "
            "in a module first."
        )
    if isinstance(model, SparseModel):
        raise ConfigurationError(
            "this model is already a lumos.SparseModel; pass the original model to sparsify, "
            "or keep training the SparseModel you have."
        )
    if hasattr(model, "_orig_mod") and type(model).__name__ == "OptimizedModule":
        raise ConfigurationError(
            "sparsify got a torch.compile'd model, which torch.fx cannot read; pass the "
            "original module (model._orig_mod) and compile the SparseModel or the compacted "
            "model afterwards."
        )
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        raise ConfigurationError(
            f"sparsify got a {type(model).__name__}-wrapped model; pass the module it wraps "
            "(model.module); lumos.training.train wraps the SparseModel in DistributedDataParallel "
            "itself under torchrun.")
    if isinstance(model, torch.jit.ScriptModule):
        raise ConfigurationError(
            f"sparsify got a TorchScript module ({type(model).__name__}, from torch.jit.script "
            "or torch.jit.trace), which torch.fx cannot read; pass the original nn.Module.")
    meta = next((n for n, t in [*model.named_parameters(), *model.named_buffers()]
                 if t.is_meta), None)
    if meta is not None:
        raise ConfigurationError(
            f"the model's '{meta}' is on the meta device (no values): LUMOS runs the model on "
            "its example inputs. Materialise it first (model.to_empty(device='cpu'), then "
            "initialise or load the weights).")


#: what a budget may measure (``sparsify(budget_on=...)``)
BUDGET_MEASURES = ("params", "flops", "latency")


def _check_budget_on(budget_on: object) -> None:
    if budget_on not in BUDGET_MEASURES:
        raise ConfigurationError(
            f"budget_on={budget_on!r}: a budget measures 'params' (the parameter count), "
            "'flops' (multiply-adds on the example inputs) or 'latency' (each layer's time on "
            "this device, measured once), e.g. budget_on='flops'.")


def _check_strengths(budget, lam, feature_penalty) -> tuple[float | None, float | None, float]:
    """The three strengths as floats, checked (numpy and 0-d tensor scalars accepted)."""
    if budget is not None and lam is not None:
        raise ConfigurationError(
            "give either budget= (LUMOS finds the penalty) or lam= (a fixed penalty), not both."
        )
    if budget is not None:
        budget = number(budget, "budget",
                        "a fraction of the dense parameter count in (0, 1]")
        if not 0.0 < budget <= 1.0:
            raise ConfigurationError(
                f"budget must be a fraction of the dense parameter count in (0, 1], got "
                f"{budget!r}; e.g. budget=0.25 keeps at most 25% of the parameters."
            )
    if lam is not None:
        lam = number(lam, "lam", "a finite number >= 0")
        if not (lam >= 0 and math.isfinite(lam)):
            raise ConfigurationError(f"lam must be a finite number >= 0, got {lam!r}.")
    feature_penalty = number(feature_penalty, "feature_penalty", "a number >= 0")
    if not (feature_penalty >= 0 and math.isfinite(feature_penalty)):
        raise ConfigurationError(f"feature_penalty must be >= 0, got {feature_penalty!r}.")
    return budget, lam, feature_penalty

