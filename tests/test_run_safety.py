"""A run directory never loses or mixes a result: locking, the manifest, atomic final files,
non-finite and damaged checkpoints, config identity on resume, read-only run directories."""

from __future__ import annotations

import errno
import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

pytest.importorskip("yaml")
pytest.importorskip("matplotlib")

import lumos  # noqa: E402
from lumos import checkpoint  # noqa: E402
from lumos.cli import main  # noqa: E402
from lumos.training import latest_checkpoint, train  # noqa: E402

LOCK = ".lumos-run.lock"


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def _config(tmp_path: Path, cache: Path, budget: float = 0.3) -> str:
    path = tmp_path / f"fit-{budget}.yaml"
    path.write_text(f"workload: burgers\nsize: smoke\nepochs: 2\nbudget: {budget}\nthreads: 1\n"
                    f"checkpoint_every: 4\nplots: false\ncache_dir: {cache}\n")
    return str(path)


def _fit(config: str, out: Path, *extra: str) -> int:
    return main(["fit", config, "--out", str(out), "--no-progress", *extra])


# ---- 1. two writers --------------------------------------------------------------------------
def test_a_second_writer_is_refused_and_a_dead_writers_lock_is_taken_over(tmp_path, cache,
                                                                           capsys):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (out / LOCK).write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname()}))
        assert _fit(_config(tmp_path, cache), out) == 2
        err = capsys.readouterr().err
        assert "being written by another lumos process" in err and str(holder.pid) in err
        assert sorted(p.name for p in out.iterdir()) == [LOCK]  # nothing of this run written
    finally:
        holder.kill()
        holder.wait()
    with pytest.warns(lumos.LumosWarning, match=f"taking over the lock.*{holder.pid}"):
        assert _fit(_config(tmp_path, cache), out) == 0
    assert not (out / LOCK).exists()  # released at the end
    assert (out / "metrics.json").exists()


# ---- 2. the manifest: never write into a folder that is not LUMOS's -------------------------
def test_a_folder_of_user_files_is_refused_and_nothing_in_it_is_overwritten(tmp_path, cache,
                                                                             capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    files = {"config.yaml": "my: own\n", "metrics.json": "{\"mine\": 1}", "report.txt": "mine"}
    for name, text in files.items():
        (mine / name).write_text(text)
    assert _fit(_config(tmp_path, cache), mine) == 2
    assert "not a LUMOS run directory" in capsys.readouterr().err
    assert {p.name: p.read_text() for p in mine.iterdir()} == files


def test_a_run_without_checkpoints_is_still_a_run_and_not_overwritten(tmp_path, cache, capsys):
    import shutil

    out = tmp_path / "run"
    assert _fit(_config(tmp_path, cache), out) == 0
    manifest = json.loads((out / "lumos-run.json").read_text())
    assert manifest["config"]["budget"] == 0.3 and len(manifest["config_sha256"]) == 64
    before = (out / "metrics.json").read_bytes()
    shutil.rmtree(out / "checkpoints")
    assert _fit(_config(tmp_path, cache, budget=0.5), out) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (out / "metrics.json").read_bytes() == before


# ---- 3. atomic final files -------------------------------------------------------------------
def test_a_full_disk_while_writing_metrics_keeps_the_previous_file(tmp_path, cache, capsys,
                                                                   monkeypatch):
    out = tmp_path / "run"
    config = _config(tmp_path, cache)
    assert _fit(config, out) == 0
    before = (out / "metrics.json").read_bytes()
    real_open = io.open

    def open_on_a_full_disk(*args, **kwargs):
        fh = real_open(*args, **kwargs)
        if "w" in str(args[1] if len(args) > 1 else kwargs.get("mode", "r")):
            write = fh.write

            def full(data):
                if (b"train_seconds" if isinstance(data, bytes) else "train_seconds") in data:
                    raise OSError(errno.ENOSPC, "No space left on device")
                return write(data)

            fh.write = full
        return fh

    monkeypatch.setattr(io, "open", open_on_a_full_disk)
    assert _fit(config, out, "--resume") == 2  # a finished run: its files are written again
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert "no space left" in err and "metrics.json" in err
    assert (out / "metrics.json").read_bytes() == before  # the previous one, not 0 bytes
    assert not [p for p in out.rglob("*.tmp")]


def test_report_of_a_damaged_metrics_file_is_a_clear_error(tmp_path, cache, capsys):
    out = tmp_path / "run"
    assert _fit(_config(tmp_path, cache), out) == 0
    (out / "metrics.json").write_text('{"workload": "burg')
    assert main(["report", str(out), "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert "metrics.json is damaged" in err and "--resume" in err
    with pytest.raises(lumos.LumosError):
        lumos.runs.read_metrics(out)


# ---- 4. training going NaN -------------------------------------------------------------------
class _Diverges(Dataset):
    """Finite samples until the ``bad_after``-th fetch, then infinite targets."""

    def __init__(self, bad_after: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(64, 5, generator=g), torch.randn(64, 1, generator=g)
        self.bad_after, self.fetched = bad_after, 0

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        self.fetched += 1
        y = self.y[i] if self.fetched <= self.bad_after else self.y[i] * float("inf")
        return self.x[i], y


def test_a_diverging_run_keeps_its_last_finite_checkpoints(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 1))
    with pytest.raises(lumos.LumosError):
        train(model, DataLoader(_Diverges(bad_after=40), batch_size=8), epochs=2, lr=1e-2,
              checkpoint_dir=tmp_path, checkpoint_every=1, keep_checkpoints=2)
    index = json.loads((tmp_path / "index.json").read_text())
    assert index["files"]
    for name in index["files"]:
        state = checkpoint.load_file(tmp_path / name)
        assert all(torch.isfinite(v).all() for v in state["model"].values()), name
    assert checkpoint.load_file(latest_checkpoint(tmp_path))["position"]["step"] >= 4


# ---- 5. damaged latest checkpoint, --resume PATH ---------------------------------------------
def test_resume_falls_back_past_a_damaged_checkpoint_and_takes_any_intact_one(tmp_path, cache,
                                                                              capsys):
    out = tmp_path / "run"
    config = _config(tmp_path, cache)
    assert _fit(config, out) == 0
    before = json.loads((out / "metrics.json").read_text())
    ckpts = sorted((out / "checkpoints").glob("ckpt-*.pt"))
    assert len(ckpts) == 2
    older, latest = ckpts
    assert _fit(config, out, "--resume", str(older)) == 0  # any intact checkpoint, by path
    after = json.loads((out / "metrics.json").read_text())
    assert after["history"]["loss"] == before["history"]["loss"]
    latest.write_bytes(latest.read_bytes()[:200])
    (out / "checkpoints" / "index.json").unlink()  # no hand-editing of the index needed
    with pytest.warns(lumos.LumosWarning, match=f"damaged.*{latest.name}"):
        assert _fit(config, out, "--resume") == 0
    assert json.loads((out / "metrics.json").read_text())["final"] == after["final"]
    assert _fit(config, out, "--resume", str(out / "nope.pt")) == 2
    assert "no such checkpoint file" in capsys.readouterr().err


# ---- 6. the configuration a checkpoint was written with --------------------------------------
def test_resume_with_another_budget_is_refused_even_without_config_yaml(tmp_path, cache, capsys):
    out = tmp_path / "run"
    assert _fit(_config(tmp_path, cache), out) == 0
    assert checkpoint.load_file(latest_checkpoint(out / "checkpoints"))["config"]["budget"] == 0.3
    (out / "config.yaml").unlink()
    assert _fit(_config(tmp_path, cache, budget=0.5), out, "--resume") == 2
    assert "budget" in capsys.readouterr().err
    (out / "lumos-run.json").unlink()
    assert _fit(_config(tmp_path, cache, budget=0.5), out, "--resume") == 2
    assert "cannot be checked" in capsys.readouterr().err


def test_resume_may_move_the_run_but_not_change_what_it_trains(tmp_path, cache, capsys):
    """Another cache folder, device, thread count or checkpoint policy resumes (the run moved
    machines); the budget may not change."""
    out = tmp_path / "run"
    assert _fit(_config(tmp_path, cache), out) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    moved = tmp_path / "moved.yaml"
    moved.write_text(f"workload: burgers\nsize: smoke\nepochs: 2\nbudget: 0.3\nthreads: 2\n"
                     f"checkpoint_every: 0\nkeep_checkpoints: 3\nplots: false\ndevice: cpu\n"
                     f"cache_dir: {tmp_path / 'other-cache'}\n")
    assert _fit(str(moved), out, "--resume") == 0, capsys.readouterr().err
    again = json.loads((out / "metrics.json").read_text())
    assert again["final"] == metrics["final"]  # the same finished run, its files written again
    assert _fit(_config(tmp_path, cache, budget=0.5), out, "--resume") == 2
    assert "differs in: budget" in capsys.readouterr().err


def test_a_checkpoint_of_another_configuration_is_refused_naming_the_keys(tmp_path):
    from lumos.training.state import run_config

    def run(config, resume=False):
        torch.manual_seed(0)
        data = (torch.randn(32, 3), torch.randn(32, 1))
        with run_config(config):
            train(nn.Linear(3, 1), data, epochs=2, checkpoint_dir=tmp_path, resume=resume)

    run({"budget": 0.3, "lr": 0.01})
    with pytest.raises(lumos.CheckpointError, match="differs in: budget=0.3 there, 0.5 here"):
        run({"budget": 0.5, "lr": 0.01}, resume=True)
    run({"budget": 0.3, "lr": 0.01}, resume=True)  # the same one resumes


# ---- 7. read-only run directories ------------------------------------------------------------
def test_report_and_export_of_a_read_only_run_are_clear_errors(tmp_path, cache, capsys,
                                                               monkeypatch):
    import lumos.plots

    out = tmp_path / "run"
    assert _fit(_config(tmp_path, cache), out) == 0

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(lumos.plots, "plot_run", read_only)
    assert main(["report", str(out)]) == 2
    assert "--no-plots" in capsys.readouterr().err
    assert main(["report", str(out), "--no-plots"]) == 0
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if "export" in str(p)
                        else real_access(p, mode))
    assert main(["export", str(out), "--format", "state_dict"]) == 2
    err = capsys.readouterr().err
    assert "read-only" in err and "--out DIR" in err
    monkeypatch.undo()
    assert main(["export", str(out), "--format", "state_dict", "--out",
                 str(tmp_path / "elsewhere")]) == 0


def test_a_chmod_read_only_run_directory(tmp_path, cache, capsys):
    out = tmp_path / "run"
    assert _fit(_config(tmp_path, cache), out) == 0
    for folder in (out, out / "plots"):
        folder.chmod(0o555)
    try:
        if os.access(out / "plots", os.W_OK):
            pytest.skip("running as root: chmod does not make the folder read-only")
        assert main(["report", str(out)]) == 2
        assert "read-only" in capsys.readouterr().err
        assert main(["export", str(out), "--format", "state_dict"]) == 2
        assert "--out DIR" in capsys.readouterr().err
    finally:
        for folder in (out, out / "plots"):
            folder.chmod(0o755)


def test_a_plot_that_fails_half_way_leaves_the_previous_image(tmp_path, monkeypatch):
    """Plots are written like the other final files: a temporary file, then a rename."""
    pytest.importorskip("matplotlib")
    from lumos import plots

    path = tmp_path / "gates.png"
    trajectories = {"epochs": [0, 1, 2], "features": {"a": [0.9, 0.8, 0.1], "b": [0.5, 0.6, 0.9]},
                    "groups": {"h": {"size": 4, "kind": "neuron", "open": [4, 3, 2]}}}
    plots.plot_gate_trajectories(trajectories, ["b"], path)
    before = path.read_bytes()
    real_fdopen = os.fdopen

    def full_disk(fd, mode="r", *args, **kwargs):
        fh = real_fdopen(fd, mode, *args, **kwargs)
        if "w" in mode:
            def write(data):
                raise OSError(errno.ENOSPC, "No space left on device")

            fh.write = write
        return fh

    monkeypatch.setattr(os, "fdopen", full_disk)
    with pytest.raises(OSError, match="No space"):
        plots.plot_gate_trajectories(trajectories, ["a"], path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert not list(tmp_path.glob("*.tmp"))
