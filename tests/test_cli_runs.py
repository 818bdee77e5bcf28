"""``lumos fit / report / workloads``: run directories, configs and their error messages."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

yaml = pytest.importorskip("yaml")  # run directories need the runs extra (pyyaml, matplotlib)
pytest.importorskip("matplotlib")

import lumos  # noqa: E402
from lumos.cli import main  # noqa: E402
from lumos.runs import SCHEMA, load_config, validate_config  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"
WORKLOAD = "cosmo_power_spectrum"  # an MLP whose smoke data generate in seconds


def _lumos(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "lumos.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One real `lumos fit` of a smoke workload through the command line, as a user runs it."""
    pytest.importorskip("colossus")
    root = tmp_path_factory.mktemp("cli")
    config = root / "fit.yaml"
    config.write_text(
        f"workload: {WORKLOAD}\nsize: smoke\nepochs: 4\nbudget: 0.3\nthreads: 1\n"
        f"checkpoint_every: 2\ncache_dir: {root / 'cache'}\n"
    )
    done = _lumos("fit", str(config), "--out", str(root / "run"), cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    return root, done


@pytest.mark.slow
def test_fit_writes_a_complete_run_directory(run):
    root, done = run
    out = root / "run"
    assert "parameters:" in done.stdout and str(out) in done.stdout
    assert "it/s" not in done.stderr and "%|" not in done.stderr  # no progress bars off a TTY

    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert set(saved) == set(SCHEMA)  # resolved: every key, recipe values filled in
    assert saved["epochs"] == 4 and saved["budget"] == 0.3 and saved["batch_size"] == 32
    validate_config(saved)

    with open(out / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert all(float(r["val_r2"]) == float(r["val_r2"]) for r in rows)  # numbers, not NaN

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["params"]["compacted"] <= 0.3 * metrics["params"]["dense"] + 1
    assert metrics["final"]["sparse"]["r2"] == pytest.approx(metrics["final"]["compacted"]["r2"],
                                                             abs=1e-5)
    features = metrics["features"]
    assert len(features["scores"]) == len(features["names"]) > 0
    assert set(features["kept"]) <= set(features["names"])
    trajectories = metrics["gate_trajectories"]
    assert trajectories["epochs"] == [1, 2, 3, 4]
    assert all(len(v) == 4 for v in trajectories["features"].values())
    assert [c["epoch"] for c in metrics["curve"]] == [1, 2, 3, 4]

    for name in ("gates", "widths", "features", "metric_vs_params"):
        png = (out / "plots" / f"{name}.png").read_bytes()
        assert png.startswith(PNG) and len(png) > 5000, name
    state = torch.load(out / "model" / "state_dict.pt", weights_only=True)
    assert sum(v.numel() for v in state.values()) == metrics["params"]["compacted"]
    index = json.loads((out / "checkpoints" / "index.json").read_text())
    assert (out / "checkpoints" / index["latest"]).exists()


@pytest.mark.slow
def test_report_prints_the_summary_and_redraws_the_plots(run, capsys):
    root, _ = run
    out = root / "run"
    (out / "plots" / "widths.png").unlink()
    assert main(["report", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "LUMOS report" in printed and "validation r2" in printed
    assert (out / "plots" / "widths.png").read_bytes().startswith(PNG)
    assert main(["report", str(root / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_a_finished_run_is_not_overwritten_and_resume_returns_it_unchanged(run, capsys):
    root, _ = run
    out = root / "run"
    config = str(root / "fit.yaml")
    assert main(["fit", config, "--out", str(out)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    before = json.loads((out / "metrics.json").read_text())
    assert main(["fit", config, "--out", str(out), "--resume", "--no-progress"]) == 0
    after = json.loads((out / "metrics.json").read_text())
    assert after["final"] == before["final"] and after["history"]["loss"] == \
        before["history"]["loss"]
    assert main(["fit", config, "--out", str(out), "--resume", "--epochs", "5"]) == 2
    assert "different configuration" in capsys.readouterr().err


@pytest.mark.slow
def test_tolerance_runs_write_the_walk_and_export_like_budget_runs(run, capsys):
    pytest.importorskip("lumos.tolerance")
    root, _ = run
    out = root / "tolerance"
    assert main(["fit", WORKLOAD, "--size", "smoke", "--tolerance", "0.5", "--epochs", "4",
                 "--threads", "1", "--no-plots", "--out", str(out),
                 "--cache-dir", str(root / "cache")]) == 0
    assert "tolerance 50%" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    walk = metrics["tolerance_result"]["walk"]
    assert len(walk) == 4 and [c["epoch"] for c in metrics["curve"]] == [1, 2, 3, 4]
    assert metrics["final"]["dense"]["r2"] == metrics["tolerance_result"]["reference"]
    # the gate trajectories come from the walk, so `lumos report` draws gates.png as the docs say
    assert len(metrics["gate_trajectories"]["epochs"]) == 4
    pytest.importorskip("matplotlib")
    assert main(["report", str(out)]) == 0
    assert (out / "plots" / "gates.png").exists()
    assert (out / "plots" / "tolerance.png").exists()  # the walk with its intervals
    assert main(["export", str(out), "--format", "state_dict"]) == 0
    assert (out / "export" / "state_dict" / "state_dict.pt").exists()


@pytest.mark.parametrize(
    "text, message",
    [
        ("workload: burgers\nepoch: 3\n", "unknown key 'epoch'.*did you mean 'epochs'"),
        ("workload: burgers\nepochs: ten\n", "'epochs' .* must be an integer or null, got 'ten'"),
        ("workload: burgers\nbudget: true\n", "'budget' .* must be a number or null"),
        ("workload: burgers\nbudget: 1.5\n", "'budget' .* \\(0, 1\\]"),
        ("workload: burgers\nbudget: 0.2\ntolerance: 0.01\n", "both 'budget' and 'tolerance'"),
        ("workload: burgers\nsize: huge\n", "'size' .* one of \\['smoke', 'full'\\]"),
        ("size: smoke\n", "has no 'workload'"),
        ("- workload: burgers\n", "must hold a mapping"),
        ("workload: [burgers\n", "not valid YAML at line"),
        ("workload: no_such_thing\nsize: smoke\n", "unknown workload 'no_such_thing'"),
        ("workload: os.path:join\nsize: smoke\n", "must be a lumos.workloads.Workload"),
    ],
)
def test_config_mistakes_are_named_with_the_key_and_the_fix(tmp_path, capsys, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert main(["fit", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lumos: error:") and "Traceback" not in err
    import re

    assert re.search(message, err), err
    assert not (tmp_path / "run" / "checkpoints" / "index.json").exists()


def test_missing_config_file_and_unwritable_output_fail_before_any_work(tmp_path, capsys):
    assert main(["fit", str(tmp_path / "nope.yaml")]) == 2
    assert "config file" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["fit", "burgers", "--size", "smoke", "--out", str(blocker / "run"),
                 "--cache-dir", str(tmp_path / "cache")]) == 2
    assert "cannot write to the output folder" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()  # stopped before generating any data


def test_overrides_win_and_budget_replaces_a_configured_tolerance(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("workload: burgers\ntolerance: 0.02\nepochs: 3\n")
    config = load_config(path, budget=0.4, epochs=None)
    assert config.budget == 0.4 and config.tolerance is None and config.epochs == 3
    assert load_config("burgers").workload == "burgers"
    with pytest.raises(lumos.ConfigurationError, match="'lr'"):
        load_config({"workload": "burgers", "lr": -1.0})


def test_workloads_lists_every_workload_with_its_sizes(capsys):
    from lumos.workloads import workload_names

    assert main(["workloads"]) == 0
    out = capsys.readouterr().out
    for name in workload_names():
        assert name in out
    assert "smoke" in out and "full" in out
    assert main(["workloads", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} == set(workload_names())
    assert all(set(r["recipes"]) == {"smoke", "full"} for r in rows if "recipes" in r)


def test_demo_still_has_its_command():
    from lumos.cli import build_parser

    args = build_parser().parse_args(["demo", "--epochs", "2"])
    assert args.epochs == 2 and args.func.__name__ == "_demo"
