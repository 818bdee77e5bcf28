"""``lumos demo``: dense vs. LUMOS on a built-in physics regression with planted noise columns.

Everything is generated in the library (no download) and measured in the same process, so the
printed speed-up is a ratio of two timings taken side by side on this machine.
"""

from __future__ import annotations

import platform
import tempfile
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

from . import sparsify
from .measure import count_flops, count_params, latency
from .metrics import r2
from .training import train
from .workloads.laws import LAWS, make_law_data, train_val_split

DEMO_LAW = "drag"


def demo_mlp(n_inputs: int, width: int = 256, depth: int = 2) -> nn.Sequential:
    """The plain MLP both runs start from (same seed, same initial weights)."""
    layers: list[nn.Module] = []
    d = n_inputs
    for _ in range(depth):
        layers += [nn.Linear(d, width), nn.SiLU()]
        d = width
    layers.append(nn.Linear(d, 1))
    return nn.Sequential(*layers)


@dataclass
class DemoResult:
    law: str
    description: str
    budget: float
    epochs: int
    r2_dense: float
    r2_lumos: float
    params_dense: int
    params_lumos: int
    flops_dense: int
    flops_lumos: int
    latency_b256_dense: float
    latency_b256_lumos: float
    latency_b1_dense: float
    latency_b1_lumos: float
    train_seconds_dense: float
    train_seconds_lumos: float
    #: ``lumos export --format fast`` of each model: {"batch 1": s, "batch 256": s}, or the
    #: reason it could not be made
    fast_dense: dict | str
    fast_lumos: dict | str
    features_total: int
    features_kept: list[str]
    true_features: list[str]
    noise_features: list[str]
    machine: str

    @property
    def speedup_b256(self) -> float:
        return self.latency_b256_dense / self.latency_b256_lumos

    @property
    def speedup_b1(self) -> float:
        return self.latency_b1_dense / self.latency_b1_lumos

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(speedup_b256=self.speedup_b256, speedup_b1=self.speedup_b1)
        return d


def run_demo(
    budget: float = 0.25,
    epochs: int = 40,
    width: int = 256,
    n_samples: int = 4096,
    n_noise: int = 12,
    law: str = DEMO_LAW,
    seed: int = 0,
) -> DemoResult:
    data = make_law_data(law, n_samples=n_samples, n_noise=n_noise, seed=seed)
    tr, va = train_val_split(data, 0.2, seed=seed)
    x_tr, y_tr = torch.from_numpy(tr.X), torch.from_numpy(tr.y)
    x_va, y_va = torch.from_numpy(va.X), torch.from_numpy(va.y)
    d = x_tr.shape[1]

    torch.manual_seed(seed)
    dense = demo_mlp(d, width)
    torch.manual_seed(seed)
    sm = sparsify(demo_mlp(d, width), x_tr[:8], budget=budget, feature_names=data.feature_names)

    start = time.perf_counter()
    train(dense, (x_tr, y_tr), epochs=epochs, seed=seed)
    t_dense = time.perf_counter() - start
    start = time.perf_counter()
    train(sm, (x_tr, y_tr), epochs=epochs, seed=seed)
    t_lumos = time.perf_counter() - start

    small = sm.compact()
    with torch.no_grad():
        r2_dense = r2(dense.eval()(x_va), y_va)
        r2_lumos = r2(small(x_va), y_va)
    x256 = x_va[:256]
    x1 = x_va[:1]
    return DemoResult(
        law=law,
        description=LAWS[law].description,
        budget=budget,
        epochs=epochs,
        r2_dense=r2_dense,
        r2_lumos=r2_lumos,
        params_dense=count_params(dense),
        params_lumos=count_params(small),
        flops_dense=count_flops(dense, x1),
        flops_lumos=count_flops(small, x1),
        latency_b256_dense=latency(dense, x256, repeats=200),
        latency_b256_lumos=latency(small, x256, repeats=200),
        latency_b1_dense=latency(dense, x1, repeats=500),
        latency_b1_lumos=latency(small, x1, repeats=500),
        train_seconds_dense=t_dense,
        train_seconds_lumos=t_lumos,
        fast_dense=_fast_latency(dense.eval(), x256),
        fast_lumos=_fast_latency(small, x256),
        features_total=d,
        features_kept=sm.selected_features()["input"],
        true_features=[data.feature_names[i] for i in data.true_features],
        noise_features=[data.feature_names[i] for i in data.noise_features],
        machine=f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} "
        f"torch threads, torch {torch.__version__}",
    )


def _fast_latency(model: nn.Module, example: torch.Tensor) -> dict | str:
    """The latencies ``lumos export --format fast`` measured for the form it chose."""
    from .errors import LumosError
    from .export import export_model

    with tempfile.TemporaryDirectory() as folder:
        try:
            details = export_model(model, (example,), folder, "fast").details
        except LumosError as exc:
            return str(exc)
    return {label.replace(f"batch {example.shape[0]}", "batch 256"): seconds
            for label, seconds in details["latency_s"][details["form"]].items()}


def _speed(ratio: float) -> str:
    """A latency ratio (dense / compacted) in words: "1.61x faster" or "1.23x slower"."""
    return f"{ratio:.2f}x faster" if ratio >= 1 else f"{1 / ratio:.2f}x slower"


def format_table(r: DemoResult) -> str:
    kept = set(r.features_kept)
    true_kept = sum(1 for f in r.true_features if f in kept)
    noise_dropped = sum(1 for f in r.noise_features if f not in kept)
    rows = [
        ("", "dense", f"LUMOS (budget {r.budget:.0%})", ""),
        ("R² (validation)", f"{r.r2_dense:.4f}", f"{r.r2_lumos:.4f}", ""),
        ("parameters", f"{r.params_dense:,}", f"{r.params_lumos:,}",
         f"{r.params_lumos / r.params_dense:.1%} of dense"),
        ("FLOPs / sample", f"{r.flops_dense:,}", f"{r.flops_lumos:,}",
         f"{r.flops_lumos / r.flops_dense:.1%} of dense"),
        ("latency, batch 256", f"{r.latency_b256_dense * 1e6:.0f} µs",
         f"{r.latency_b256_lumos * 1e6:.0f} µs", _speed(r.speedup_b256)),
        ("latency, batch 1", f"{r.latency_b1_dense * 1e6:.0f} µs",
         f"{r.latency_b1_lumos * 1e6:.0f} µs", _speed(r.speedup_b1)),
    ]
    for label in ("batch 256", "batch 1"):
        if isinstance(r.fast_dense, dict) and isinstance(r.fast_lumos, dict) \
                and label in r.fast_dense and label in r.fast_lumos:
            d, f = r.fast_dense[label], r.fast_lumos[label]
            rows.append((f"latency, {label}, fast export", f"{d * 1e6:.0f} µs",
                         f"{f * 1e6:.0f} µs", _speed(d / f)))
    rows += [
        ("input features", f"{r.features_total}", f"{len(r.features_kept)}",
         f"true kept {true_kept}/{len(r.true_features)}, noise dropped "
         f"{noise_dropped}/{len(r.noise_features)}"),
        ("training time", f"{r.train_seconds_dense:.1f} s", f"{r.train_seconds_lumos:.1f} s",
         f"{r.train_seconds_lumos / r.train_seconds_dense - 1:+.0%} overhead"),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [
        f"LUMOS demo: {r.description}",
        f"{len(r.true_features)} physical variables + {len(r.noise_features)} noise columns, "
        f"{r.epochs} epochs, same seed and optimizer for both runs ({r.machine})",
        "",
    ]
    for i, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(widths[j]) for j, cell in enumerate(row)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("")
    lines.append(f"kept features: {', '.join(r.features_kept)}")
    lines.append(f"true variables: {', '.join(r.true_features)}")
    return "\n".join(lines)
