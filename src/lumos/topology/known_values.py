"""Known-value tracing: shapes flow beside the proxies, so shape-dependent Python traces.

Plain torch.fx cannot run ``in_shape = list(x.shape[2:])``, ``if x.dim() == 3 and ...``,
``for i in range(x.size(1))`` or ``len(x.shape)``: a proxy has no length and no truth value.
While LUMOS traces, every proxy also carries the value it has on the example inputs (as the
meta tracers of ``torch.fx.experimental`` and transformers do), and whether that value is
*static*: computed from shapes, dims, dtypes and constants only, never from tensor data.

- A static value may steer Python: iteration, ``len``, ``int``/``index`` and truth take the
  example's value, and the graph gets a guard (``torch._assert``) that the value is the same
  at run time. A model called with inputs the trace does not fit stops with that message
  instead of computing something else.
- A data-dependent value still cannot steer Python: the error is fx's, turned into an
  :class:`~lumos.UntraceableModelError` that names the line.

Example values are computed without autograd, with every module's ``training`` read as False
(BatchNorm does not step its running statistics on the example batch).
"""

from __future__ import annotations

import contextlib
import operator
import os
import traceback
from collections.abc import Iterator
from typing import Any

import torch
from torch import fx
from torch.fx._symbolic_trace import _maybe_revert_all_patches
from torch.fx.node import map_aggregate

from . import mode_flags
from .rule_helpers import source_line, target_path

#: methods and attributes whose result depends on a tensor's shape/type only
_STATIC_METHODS = {"size", "dim", "numel", "nelement", "ndimension", "type", "is_floating_point",
                   "is_complex", "get_device"}
_STATIC_ATTRS = {"shape", "ndim", "dtype", "device", "layout", "is_cuda", "is_cpu", "is_nested",
                 "is_sparse", "is_quantized", "is_meta", "is_mps", "is_complex"}


class _Unknown(Exception):
    pass


class KnownProxy(fx.Proxy):
    """A proxy that can answer ``len``/``iter``/``int`` from its known static value."""

    tracer: KnownValueTracer

    def __getattr__(self, k: str) -> KnownAttribute:
        # ``x.shape`` is fx's lazy Attribute proxy; ours knows its value too
        if k.startswith("__array_"):  # numpy's probes: ``__array__`` below answers it
            raise AttributeError(k)
        return KnownAttribute(self, k)

    def __setitem__(self, key, value) -> None:  # noqa: ANN001
        """``mask[:, h, w, :] = cnt`` on a tensor the forward built (MONAI's Swin window masks).

        A basic index (ints, slices, None, ...) is what it means in torch, a view filled in
        place: ``mask[key].fill_(cnt)`` or ``.copy_(value)``, which fx can trace again when a
        saved model is loaded (fx prints ``operator.setitem`` back as ``a[k] = v``, which
        plain proxies cannot take). Other keys become an ``operator.setitem`` node. The
        example's value changes the same way.
        """
        if _basic_index(key) and isinstance(value, (fx.Proxy, int, float, bool)):
            view = self[key]  # type: ignore[index]  # Proxy.__getitem__
            if isinstance(value, fx.Proxy):
                view.copy_(value)
            else:
                view.fill_(value)
            return
        self.tracer.create_proxy("call_function", operator.setitem, (self, key, value), {})

    def __array__(self, dtype=None, copy=None):  # noqa: ANN001, ANN204 - numpy's protocol
        """``np.array(x.shape[2:])``: a static value as an array, guarded like a condition."""
        import numpy as np

        value = self.tracer.static_value(self)
        if value is _MISSING or isinstance(value, torch.Tensor):
            raise TypeError(f"'{self.node.name}' is not a known static value while tracing: "
                            "numpy cannot take a traced tensor")
        self.tracer.guard(self, value, self.node.name)
        return np.asarray(value, dtype=dtype)

    def __hash__(self) -> int:
        # a static value may be a dict key (``recipes[x.ndim]``); the lookup's ``==`` is then
        # a guarded comparison like any other
        value = self.tracer.static_value(self)
        if value is _MISSING:
            return object.__hash__(self)
        try:
            return hash(value)
        except TypeError:
            return object.__hash__(self)

    def __round__(self, ndigits: int | None = None):
        value = self.tracer.static_value(self)
        if value is _MISSING:
            raise TypeError(f"type Proxy doesn't define __round__ ('{self.node.name}' is not a "
                            "known static value while tracing)")
        self.tracer.guard(self, value, self.node.name)
        return round(value, ndigits) if ndigits is not None else round(value)

    def __len__(self) -> int:
        value = self.tracer.static_value(self)
        if value is _MISSING:
            return super().__len__()
        n = len(value)
        self.tracer.guard(self.tracer.wrapped_call(len, self), n, f"len({self.node.name})")
        return n

    def __index__(self) -> int:
        # Only numbers the caller passed in (``range(steps)``) and ranks (``x.ndim``) become
        # Python ints. A size read off a tensor stays a graph value: ``torch.arange(x.size(1))``
        # must follow the input's length at run time, not be frozen to the example's (torch's
        # argument parser asks for __index__ before it records the call).
        value = self.tracer.static_value(self)
        if value is _MISSING or not isinstance(value, int) or self.node in self.tracer.shaped:
            raise TypeError(f"'{self.node.name}' is not a known integer while tracing")
        self.tracer.guard(self, value, self.node.name)
        return value

    def __int__(self) -> int:
        # ``int(x.shape[1])`` is the model's own request for a constant ("force trace() to
        # generate a constant", MONAI's Swin): granted with a guard, even off a tensor's shape
        value = self.tracer.static_value(self)
        if value is _MISSING or isinstance(value, torch.Tensor) or not isinstance(
                value, (int, float, bool)) or self.node in getattr(self.tracer, "batch", ()):
            # a batch size frozen into the graph would fail on the last, smaller batch
            raise TypeError(f"'{self.node.name}' is not a known integer while tracing")
        self.tracer.guard(self, value, self.node.name)
        return int(value)


class KnownAttribute(fx.proxy.Attribute, KnownProxy):
    """fx's lazy attribute proxy (``x.shape``, ``x.size``) with the known-value answers."""


_MISSING = object()


def _basic_index(key: Any) -> bool:
    """Ints, slices, None and ``...``, alone or in a tuple: indexing that gives a view."""
    items = key if isinstance(key, tuple) else (key,)
    return all(item is None or item is Ellipsis or isinstance(item, slice)
               or (isinstance(item, int) and not isinstance(item, bool)) for item in items)


class KnownValueTracer(fx.Tracer):
    """Mixin for an fx tracer: proxies carry example values (see the module docstring)."""

    def init_known_values(self, example: dict[str, Any] | None) -> None:
        self.example = dict(example or {})
        self.values: dict[fx.Node, Any] = {}
        self.static: set[fx.Node] = set()
        #: static values that depend on a tensor's shape (they may differ between batches)
        self.shaped: set[fx.Node] = set()
        #: values computed from the inputs (the rest comes from parameters, buffers and
        #: constants: the model's state, the same for every batch)
        self.data: set[fx.Node] = set()
        #: static values read off an input's leading dim (the batch: it varies every epoch)
        self.batch: set[fx.Node] = set()

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return KnownProxy(node, self)

    # ---- values beside the graph -----------------------------------------------------------
    def create_proxy(self, kind, target, args, kwargs, name=None, type_expr=None,  # noqa: ANN001
                     proxy_factory_fn=None):  # fx signature
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr,
                                     proxy_factory_fn)
        if not hasattr(self, "values"):
            return proxy
        node = proxy.node
        try:
            # real code, not traced: fx's patches (Module.__call__ and __getattr__, wrapped
            # functions) are lifted, or evaluating would record nodes of its own
            with _maybe_revert_all_patches():
                value, static = self._evaluate(node)
        except _Unknown:
            return proxy
        except Exception:  # the op fails on the example's values: no value, fx decides
            return proxy
        self.values[node] = value
        if node.op == "placeholder" or any(a in self.data for a in node.all_input_nodes):
            self.data.add(node)
        if static:
            self.static.add(node)
            if not _is_rank(node) and (any(a in self.shaped for a in node.all_input_nodes) or (
                    node.op in ("call_method", "call_function") and node.all_input_nodes
                    and any(a not in self.static and a in self.data
                            for a in node.all_input_nodes))):
                self.shaped.add(node)  # read off an input's tensor (x.shape, x.size(1), ...)
            if _reads_dim_zero(node) or any(a in self.batch for a in node.all_input_nodes):
                self.batch.add(node)  # the batch size (or derived from it)
        return proxy

    def _evaluate(self, node: fx.Node) -> tuple[Any, bool]:
        if node.op == "placeholder":
            if node.target not in self.example:
                raise _Unknown
            value = self.example[node.target]
            return value, not isinstance(value, torch.Tensor)
        if node.op == "get_attr":
            path = target_path(node)
            return (self.root.get_submodule(path) if _is_module_path(self.root, node)
                    else _fetch(self.root, path)), False
        if mode_flags.is_flag_node(node):
            return False, False  # example values are computed in eval mode
        arg_nodes = [a for a in node.all_input_nodes]
        for a in arg_nodes:  # fx makes tensor constants (``_tensor_constant0``) without a proxy
            if a not in self.values and a.op == "get_attr":
                with contextlib.suppress(AttributeError):
                    self.values[a] = self._evaluate(a)[0]
        if any(a not in self.values for a in arg_nodes):
            raise _Unknown
        args = map_aggregate(node.args, self._value_of)
        kwargs = map_aggregate(node.kwargs, self._value_of)
        with torch.no_grad():
            target = node.target
            if node.op == "call_function" and callable(target):
                value = target(*args, **kwargs)
            elif node.op == "call_method" and isinstance(target, str):
                value = getattr(args[0], target)(*args[1:], **kwargs)
            elif node.op == "call_module":
                with mode_flags.quiet():
                    value = self.root.get_submodule(target_path(node))(*args, **kwargs)
            else:
                raise _Unknown
        static = all(a in self.static for a in arg_nodes) or (
            node.op == "call_method" and node.target in _STATIC_METHODS) or (
            node.op == "call_function" and node.target is getattr
            and len(node.args) > 1 and node.args[1] in _STATIC_ATTRS)
        if isinstance(value, torch.Tensor) and static and not _from_shape(node):
            static = False  # a tensor built only from constants is data for the graph
        return value, static

    def _value_of(self, a):
        return self.values[a] if isinstance(a, fx.Node) else a

    def state_value(self, proxy: fx.Proxy):
        """The value of a one-element tensor computed from parameters, buffers and constants
        only (never from the inputs), else ``_MISSING``."""
        node = proxy.node
        values, data = getattr(self, "values", {}), getattr(self, "data", ())
        value = values.get(node, _MISSING)
        if node in data or not isinstance(value, torch.Tensor) or value.numel() != 1:
            return _MISSING
        return value

    def static_value(self, proxy: fx.Proxy):
        node = proxy.node
        static = getattr(self, "static", ())  # none when fx re-traces saved code on load
        return self.values[node] if node in static else _MISSING

    # ---- Python control flow on known values -----------------------------------------------
    def wrapped_call(self, fn, proxy: fx.Proxy) -> fx.Proxy:
        """``fn(proxy)`` as a node that stays a node when fx re-traces the saved code on
        ``torch.load`` (``len`` and ``truth`` of a proxy cannot be traced otherwise)."""
        out = self.create_proxy("call_function", fn, (proxy,), {})
        out.node.meta["is_wrapped"] = True
        return out

    def guard(self, proxy: fx.Proxy, value: Any, what: str) -> None:
        """At run time, fail loudly unless ``proxy`` has the value the trace assumed."""
        if not hasattr(self, "values"):
            return
        check = self.create_proxy("call_function", operator.eq, (proxy, value), {})
        self.create_proxy("call_function", torch._assert, (check, _guard_message(what, value)),
                          {})

    def to_bool(self, obj: fx.Proxy) -> bool:
        value = self.static_value(obj)
        if value is _MISSING:
            value = self.state_value(obj)
            if value is _MISSING:
                return super().to_bool(obj)
            truth = bool(value)  # the model's state steers (``if self.initialized:``): guarded
            self.guard(self.wrapped_call(operator.truth, obj), truth,
                       f"the condition '{obj.node.name}' on the model's buffers")
            return truth
        truth = bool(value)
        what = f"the condition '{obj.node.name}'"
        if value is True and hasattr(self, "values"):
            # a condition that held is asserted as it is: the compacted graph then scripts
            # (TorchScript has no ``operator.truth``) and traces (under ``torch.jit.trace``
            # a size comparison is a tensor, which ``== True`` would not take)
            self.create_proxy("call_function", torch._assert, (obj, _guard_message(what, True)),
                              {})
            return truth
        self.guard(self.wrapped_call(operator.truth, obj), truth, what)
        return truth

    def iter(self, obj: fx.Proxy) -> Iterator:
        value = self.static_value(obj)
        if value is _MISSING:
            return super().iter(obj)
        n = len(value)
        self.guard(self.wrapped_call(len, obj), n, f"len({obj.node.name})")
        return iter([obj[i] for i in range(n)])  # type: ignore[index]  # Proxy.__getitem__


_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep
_LUMOS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def _code_location() -> str:
    """The innermost line of the model's code (not torch's, not LUMOS's) now being traced."""
    for frame in reversed(traceback.extract_stack()):
        f = os.path.abspath(frame.filename)
        if not f.startswith((_TORCH_DIR, _LUMOS_DIR)) and not frame.filename.startswith("<"):
            return source_line(frame)
    return "an unknown line"


def _guard_message(what: str, value: Any) -> str:
    return (f"the model was traced by LUMOS for inputs where {what} is {value!r} (Python at "
            f"{_code_location()} decided on it); call it with inputs of the same layout, or "
            "sparsify it with example inputs of this layout")


def _is_rank(node: fx.Node) -> bool:
    """``x.dim()``, ``x.ndim``: a tensor's rank is part of the model's layout, not of one
    batch (the batch size and the resolution vary; the number of dims does not), so it may
    become a Python int (``range(2, x.ndim)``, ``symbols[:x.dim()]``), guarded at run time."""
    if node.op == "call_method":
        return node.target in ("dim", "ndimension")
    return (node.op == "call_function" and node.target is getattr and len(node.args) > 1
            and node.args[1] == "ndim")


def _reads_dim_zero(node: fx.Node) -> bool:
    """``x.size(0)``, ``x.shape[0]``, ``x.size()[0]``: a tensor's leading (batch) size."""
    if node.op == "call_method" and node.target == "size":
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        return isinstance(dim, int) and dim == 0
    if node.op == "call_function" and node.target is operator.getitem and \
            isinstance(node.args[1], int) and node.args[1] == 0:
        src = node.args[0]
        return isinstance(src, fx.Node) and (
            (src.op == "call_function" and src.target is getattr and src.args[1] == "shape")
            or (src.op == "call_method" and src.target == "size" and len(src.args) == 1))
    return False


def _from_shape(node: fx.Node) -> bool:
    """Whether a static tensor comes from a shape (``torch.tensor(x.shape)``): then still
    static. Tensors made of constants only (``torch.arange(4)``) are ordinary data."""
    return any(isinstance(a, fx.Node) for a in node.all_input_nodes)


def _is_module_path(root: torch.nn.Module, node: fx.Node) -> bool:
    try:
        root.get_submodule(str(node.target))
        return True
    except AttributeError:
        return False


def _fetch(root: torch.nn.Module, path: str):
    obj: Any = root
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


@contextlib.contextmanager
def jit_isinstance_patched(tracer: KnownValueTracer) -> Iterator[None]:
    """``torch.jit.isinstance(proxy, T)`` answers for the proxy's example value (fx would say
    False for any proxy, silently dropping a branch such as a skip connection)."""
    original = torch.jit.isinstance

    def patched(obj, target_type):  # noqa: ANN001
        if isinstance(obj, fx.Proxy) and obj.node in tracer.values:
            return original(tracer.values[obj.node], target_type)
        return original(obj, target_type)

    torch.jit.isinstance = patched
    try:
        yield
    finally:
        torch.jit.isinstance = original


@contextlib.contextmanager
def tensor_conversions_patched() -> Iterator[None]:
    """``torch.as_tensor(proxy)`` / ``torch.asarray(proxy)`` of a traced tensor are the tensor
    itself (or ``.to(dtype, device)`` of it): torch does not dispatch them to fx, which would
    then probe the proxy as an array or a sequence and fail (MONAI's HighResNet). And
    ``torch.zeros(n, 4)`` with ``n`` read off a tensor is called with one size tuple."""
    originals = {name: getattr(torch, name) for name in ("as_tensor", "asarray")}

    def make(original):
        def patched(data, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
            if not isinstance(data, fx.Proxy):
                return original(data, *args, **kwargs)
            dtype = kwargs.get("dtype", args[0] if args else None)
            device = kwargs.get("device", args[1] if len(args) > 1 else None)
            if dtype is None and device is None:
                return data
            return data.to(**{k: v for k, v in (("dtype", dtype), ("device", device))
                              if v is not None})

        return patched

    def sizes_as_tuple(original):
        # ``torch.zeros(x.shape[0], 4)``: torch's parser asks each vararg size for __index__,
        # which a size read off a tensor refuses (it must stay a graph value), and then gives
        # up instead of handing the call to fx; the same sizes as one tuple trace.
        def patched(*args, **kwargs):  # noqa: ANN002, ANN003
            if len(args) > 1 and any(isinstance(a, fx.Proxy) for a in args):
                return original(tuple(args), **kwargs)
            return original(*args, **kwargs)

        return patched

    factories = {name: getattr(torch, name) for name in ("zeros", "ones", "empty", "rand",
                                                         "randn")}
    for name, original in originals.items():
        setattr(torch, name, make(original))
    for name, original in factories.items():
        setattr(torch, name, sizes_as_tuple(original))
    try:
        yield
    finally:
        for name, original in {**originals, **factories}.items():
            setattr(torch, name, original)
