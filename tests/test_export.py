"""Exported models give the model's outputs when reloaded in a process where LUMOS is absent."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import lumos
from lumos.export import FORMATS, export_model, export_run, onnx_available
from lumos.runs import fit_run, load_config, load_run

TINY_WORKLOAD = '''
import torch
from torch import nn

from lumos.metrics import mae, r2
from lumos.workloads.base import TensorSplit, TrainRecipe, Workload, WorkloadData


def generate(size, seed, progress):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(160, 6, generator=g)
    y = 2 * x[:, :1] + x[:, 1:2].sin()
    return WorkloadData(
        train=TensorSplit([x[:128]], y[:128]), val=TensorSplit([x[128:]], y[128:]),
        feature_arg="x", feature_dim=-1, feature_names=[f"f{i}" for i in range(6)],
        true_features=[0, 1], noise_features=[2, 3, 4, 5],
    )


def build_model(data):
    return nn.Sequential(nn.Linear(6, 32), nn.SiLU(), nn.Linear(32, 32), nn.SiLU(),
                         nn.Linear(32, 1))


WORKLOAD = Workload(
    name="tiny", title="tiny regression", description="two true columns, four noise columns",
    architecture="mlp", task="regression", primary="r2", higher_is_better=True,
    generate=generate, build_model=build_model,
    metrics=lambda p, t: {"r2": r2(p, t), "mae": mae(p, t)},
    recipes={"smoke": TrainRecipe(epochs=3, batch_size=32, lr=3e-3),
             "full": TrainRecipe(epochs=30, batch_size=32, lr=1e-3)},
)
'''

#: runs in a fresh interpreter where ``import lumos`` fails
RELOAD_WITHOUT_LUMOS = textwrap.dedent('''
    import json, sys
    sys.modules["lumos"] = None
    try:
        import lumos  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("lumos was importable")
    import torch
    from torch import nn

    io = torch.load("io.pt", weights_only=True)
    out = {}

    def diff(got, want):
        return float((torch.as_tensor(got) - want).abs().max())

    ts = torch.jit.load("mlp/torchscript/model.torchscript.pt")
    out["torchscript"] = diff(ts(io["x"]), io["expected"])
    out["cnn_torchscript"] = diff(torch.jit.load("cnn_ts/model.torchscript.pt")(io["image"]),
                                  io["image_expected"])
    out["fast"] = diff(torch.jit.load("mlp/fast/model.fast.pt")(io["x"]), io["expected"])
    out["cnn_fast"] = diff(torch.jit.load("cnn_fast/model.fast.pt")(io["image"]),
                           io["image_expected"])

    def run_onnx(path, array):
        try:
            import onnxruntime
            session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
            return session.run(None, {session.get_inputs()[0].name: array})[0]
        except ImportError:
            from onnx.reference import ReferenceEvaluator
            evaluator = ReferenceEvaluator(path)
            return evaluator.run(None, {evaluator.input_names[0]: array})[0]

    import os
    if os.path.exists("mlp/onnx/model.onnx"):
        out["onnx"] = diff(run_onnx("mlp/onnx/model.onnx", io["x"].numpy()), io["expected"])
        out["cnn_onnx"] = diff(run_onnx("cnn_onnx/model.onnx", io["image"].numpy()),
                               io["image_expected"])

    # state_dict: the user's own copy of the architecture at the compacted widths
    state = torch.load("mlp/state_dict/state_dict.pt", weights_only=True)
    layers = []
    for i in (0, 2, 4):
        out_f, in_f = state[f"{i}.weight"].shape
        layers += [nn.Linear(in_f, out_f), nn.SiLU()]
    mine = nn.Sequential(*layers[:-1])
    mine.load_state_dict(state)
    out["state_dict"] = diff(mine(io["x"]), io["expected"])

    # the run's own pickled compacted module (torch layers only) loads too
    compacted = torch.load(sys.argv[1], weights_only=False)
    out["compacted_pickle"] = diff(compacted(io["x"]), io["expected"])
    print(json.dumps(out))
''')


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    pytest.importorskip("yaml")  # run directories need the runs extra
    root = tmp_path_factory.mktemp("export")
    (root / "tiny_export_workload.py").write_text(TINY_WORKLOAD)
    sys.path.insert(0, str(root))
    try:
        config = load_config({"workload": "tiny_export_workload:WORKLOAD", "size": "smoke",
                              "cache_dir": str(root / "cache"), "plots": False, "budget": 0.5})
        fit_run(config, root / "run")
        yield root / "run"
    finally:
        sys.path.remove(str(root))
        sys.modules.pop("tiny_export_workload", None)


def _small_cnn() -> nn.Module:
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(8, 2))
    sm = lumos.sparsify(cnn, torch.randn(4, 3, 12, 12), budget=0.5)
    sm.set_progress(1.0)
    return sm.eval().compact()


@pytest.mark.slow
def test_every_format_reloads_without_lumos_and_gives_the_same_outputs(run_dir, tmp_path):
    with_onnx = not onnx_available()  # writing ONNX needs onnx + onnxscript (extra)
    for fmt in FORMATS if with_onnx else ("torchscript", "fast", "state_dict"):
        folder, result = export_run(run_dir, fmt, tmp_path / "mlp" / fmt)
        assert (folder / "export.json").exists() and result.max_abs_diff < 1e-5
    cnn = _small_cnn()
    export_model(cnn, (torch.randn(4, 3, 12, 12),), tmp_path / "cnn_ts", "torchscript")
    fast = export_model(cnn, (torch.randn(4, 3, 12, 12),), tmp_path / "cnn_fast", "fast")
    assert fast.details["batchnorm_folded"] == 1
    assert set(fast.details["speedup_vs_plain"]) == {"batch 1", "batch 4"}
    if with_onnx:
        export_model(cnn, (torch.randn(4, 3, 12, 12),), tmp_path / "cnn_onnx", "onnx")

    _, _, data, sm = load_run(run_dir)
    small = sm.compact()
    (x,), _ = data.example_batch("val", 5)  # another batch size than the export's example
    image = torch.randn(3, 3, 12, 12)
    with torch.no_grad():
        torch.save({"x": x, "expected": small(x), "image": image, "image_expected": cnn(image)},
                   tmp_path / "io.pt")
    done = subprocess.run(
        [sys.executable, "-c", RELOAD_WITHOUT_LUMOS, str(run_dir / "model" / "compacted.pt")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    diffs = json.loads(done.stdout.strip().splitlines()[-1])
    expected = {"torchscript", "cnn_torchscript", "fast", "cnn_fast", "state_dict",
                "compacted_pickle"}
    assert set(diffs) == expected | ({"onnx", "cnn_onnx"} if with_onnx else set())
    assert all(d < 1e-5 for d in diffs.values()), diffs
    # the run really was compacted: the shipped layers are narrower than the dense ones
    state = torch.load(tmp_path / "mlp/state_dict/state_dict.pt", weights_only=True)
    assert state["2.weight"].numel() < 32 * 32


def test_graph_models_refuse_torchscript_with_the_reason_and_the_way_out(tmp_path):
    pyg = pytest.importorskip("torch_geometric.nn")

    class Gnn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = pyg.GCNConv(5, 8)
            self.head = nn.Linear(8, 1)

        def forward(self, x, edge_index):
            return self.head(self.conv(x, edge_index).relu())

    inputs = (torch.randn(6, 5), torch.tensor([[0, 1, 2, 3], [1, 2, 3, 4]]))
    with pytest.raises(lumos.UnsupportedModelError, match="torch-geometric.*--format onnx"):
        export_model(Gnn(), inputs, tmp_path, "torchscript")
    assert not (tmp_path / "model.torchscript.pt").exists()


def test_onnx_without_its_packages_names_them(tmp_path, monkeypatch):
    import lumos.export as export

    monkeypatch.setattr(export, "onnx_available", lambda: ["onnxscript"])
    with pytest.raises(lumos.ConfigurationError, match="pip install onnx onnxscript"):
        export_model(nn.Linear(3, 1), (torch.randn(2, 3),), tmp_path, "onnx")
    with pytest.raises(lumos.ConfigurationError, match="unknown export format"):
        export_model(nn.Linear(3, 1), (torch.randn(2, 3),), tmp_path, "tflite")


def test_export_of_an_unfinished_or_missing_run_says_what_to_do(tmp_path):
    with pytest.raises(lumos.ConfigurationError, match="not a LUMOS run directory"):
        export_run(tmp_path, "state_dict")
    assert Path(tmp_path).exists()


def test_an_onnx_failure_says_torchs_reason_plainly(tmp_path):
    """torch.onnx colours its message and buries the reason under three paragraphs of next
    steps: the refusal quotes the reason alone, without terminal codes."""
    pytest.importorskip("onnxscript")

    from lumos.layers import SpectralConv2d

    fno = nn.Sequential(nn.Conv2d(2, 4, 1), SpectralConv2d(4, 4, 4, 4))  # FFT mode slices
    with pytest.raises(lumos.UnsupportedModelError) as caught:
        export_model(fno, (torch.randn(2, 2, 16, 16),), tmp_path, "onnx")
    message = str(caught.value)
    assert "\x1b[" not in message and "Next steps" not in message
    assert "--format torchscript" in message


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_fold_batchnorm_removes_each_batchnorm_after_a_conv_and_keeps_the_outputs(dims):
    from lumos.export import fold_batchnorm

    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
    convt = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[dims]
    norm = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dims]
    torch.manual_seed(dims)
    net = nn.Sequential(conv(2, 6, 3, padding=1), norm(6), nn.ReLU(),
                        convt(6, 4, 2, stride=2, bias=False), norm(4), nn.Tanh())
    for m in net.modules():  # statistics a trained network would have, not the identity
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.normal_()
            m.running_var.uniform_(0.2, 3.0)
            nn.init.normal_(m.weight)
            nn.init.normal_(m.bias)
    net.eval()
    x = torch.randn(3, 2, *([6] * dims))
    folded, n = fold_batchnorm(net, (x,))
    assert n == 2
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net(x), rtol=1e-4, atol=1e-5)
        other = torch.randn(5, 2, *([4] * dims))  # not the example: the fold is exact, not fit
        torch.testing.assert_close(folded(other), net(other), rtol=1e-4, atol=1e-5)


def test_fold_batchnorm_leaves_what_it_cannot_fold_exactly():
    from lumos.export import fold_batchnorm

    class Shared(nn.Module):
        """The conv output also feeds a skip, and a Linear on 3-D input meets a BatchNorm1d
        over its sequence dim: folding either would change the outputs."""

        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv1d(3, 3, 1), nn.BatchNorm1d(3)
            self.lin, self.bn_seq = nn.Linear(5, 5), nn.BatchNorm1d(3)

        def forward(self, x):
            y = self.conv(x)
            return self.bn_seq(self.lin(self.bn(y) + y))

    net = Shared().eval()
    for bn in (net.bn, net.bn_seq):
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.2, 3.0)
    x = torch.randn(2, 3, 5)
    folded, n = fold_batchnorm(net, (x,))
    assert n == 0 and folded is net
    train_mode = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))  # training: batch stats
    assert fold_batchnorm(train_mode, (torch.randn(3, 4),))[1] == 0


def test_fast_export_refuses_what_torchscript_cannot_compile(tmp_path):
    class Untyped(nn.Module):
        def forward(self, x):
            if float(x.sum()) > 0:  # data-dependent control flow: fx cannot trace it either
                return x * len({1, 2})  # sets do not script
            return x

    with pytest.raises(lumos.UnsupportedModelError, match="fast format"):
        export_model(Untyped(), (torch.randn(2, 3),), tmp_path, "fast")
    assert not (tmp_path / "model.fast.pt").exists()


def _scaled(x, **options):  # **kwargs do not script; fx inlines the call
    return x * options.get("scale", 2.0)


def test_a_model_torchscript_rejects_is_scripted_from_its_fx_trace(tmp_path):
    class Helper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # a string annotation (future)
            return _scaled(self.lin(x), scale=3.0)

    net, x = Helper().eval(), torch.randn(4, 3)
    with pytest.raises(Exception):  # noqa: B017 - the premise: torch.jit alone refuses it
        torch.jit.script(net)
    for fmt in ("torchscript", "fast"):
        result = export_model(net, (x,), tmp_path / fmt, fmt)
        loaded = torch.jit.load(str(tmp_path / fmt / result.files[0]))
        other = torch.randn(7, 3)
        torch.testing.assert_close(loaded(other), net(other))


def test_a_fast_form_that_does_not_load_back_is_not_offered(tmp_path):
    # torch 2.x: optimize_for_inference on a Conv3d net writes a file torch.jit.load rejects
    # ("required keyword attribute 'value' is undefined"); the export must ship a form that loads
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.BatchNorm3d(4), nn.LeakyReLU(),
                        nn.AvgPool3d(2), nn.Conv3d(4, 4, 3), nn.AdaptiveAvgPool3d(1),
                        nn.Flatten(), nn.Linear(4, 1)).eval()
    x = torch.randn(2, 1, 8, 8, 8)
    result = export_model(net, (x,), tmp_path, "fast")
    assert result.details["form"] not in result.details["forms_not_offered"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export.json", "model.fast.pt"]
    loaded = torch.jit.load(str(tmp_path / "model.fast.pt"))
    other = torch.randn(3, 1, 8, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(other), net(other), rtol=1e-4, atol=1e-5)
