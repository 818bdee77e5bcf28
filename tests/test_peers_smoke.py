"""The peer harness (benchmarks/peers) stays working: tiny structured and feature cases."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `pytest` (not `python -m pytest`) does not put the root there
    sys.path.insert(0, str(ROOT))

from benchmarks.peers import features, structured  # noqa: E402


def test_schedule_spends_exactly_the_lumos_epochs():
    for epochs in (1, 2, 4, 15, 80):
        pre, rounds = structured.schedule(epochs)
        assert pre >= 1 and all(r >= 0 for r in rounds)
        assert pre + sum(rounds) == epochs
    goals = structured.targets(1000, 250, 4)
    assert goals[-1] == 250 and all(a > b for a, b in zip([1000] + goals, goals))


def test_scores_and_rankings_map_columns_to_features():
    s = features.scores([0, 1, 5], [0, 1, 2])
    assert s["precision"] == pytest.approx(2 / 3) and s["recall"] == pytest.approx(2 / 3)
    assert features.scores([], [0])["f1"] == 0.0
    # columns 0-2 belong to features 0-2, columns 3-5 again to features 0-2
    col = np.array([0.1, 0.0, 0.2, 0.9, 0.0, 0.05])
    assert features.top_k(col, [0, 1, 2, 0, 1, 2], 3, 2) == [0, 2]
    assert features.features_of(np.array([0, 0, 0, 0, 1, 0]), [0, 1, 2, 0, 1, 2]) == [1]


def test_tabularize_images_and_graphs_keep_the_feature_of_every_column():
    from lumos.workloads import GraphSplit, TensorSplit, WorkloadData

    img = TensorSplit([torch.randn(6, 3, 4, 4)], torch.randn(6, 2))
    data = WorkloadData(img, img, "x", 0, ["a", "b", "c"], [0], [1, 2])
    t = features.tabularize(data, "cnn2d", False, 0)
    assert t.x_train.shape == (6, 9) and t.column_feature == [0, 1, 2] * 3
    graphs = [{"x": torch.randn(4, 2), "edge_index": torch.tensor([[0, 1, 2], [1, 2, 3]]),
               "y": torch.randn(4, 1)} for _ in range(3)]
    gdata = WorkloadData(GraphSplit(graphs, node_level=True), GraphSplit(graphs, True), "x", -1,
                         ["p", "q"], [0], [1])
    t = features.tabularize(gdata, "gnn", False, 0)
    assert t.x_train.shape == (12, 4) and t.y_train.shape == (12, 1)
    # node 1's neighbour mean is node 0's features (the only edge into node 1)
    assert np.allclose(t.x_train[1, 2:], graphs[0]["x"][0].numpy(), atol=1e-6)


def test_feature_peers_find_the_planted_columns():
    pytest.importorskip("sklearn")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 8))
    y = x[:, 0] + 2 * x[:, 1]
    task = features.mlp_task("toy", x, y, [f"x{j}" for j in range(8)], [0, 1], 0.25, 0, 5, "toy",
                           confirm=True)
    methods = ("lumos", "rf_at_k", "mi_at_k") + (("stg",) if _has("stg") else ())
    record = features.run_task(task, 0, methods=methods, stg_steps=100)
    m = record["methods"]
    assert m["rf_at_k"]["kept"] == [0, 1] and m["mi_at_k"]["kept"] == [0, 1]
    assert m["lumos"]["status"] == "ok" and {0, 1} <= set(m["lumos"]["kept"])
    if "stg" in methods:
        assert m["stg"]["status"] == "ok", m["stg"].get("error")
    # one retraining per distinct kept set, the reference sets included
    assert record["downstream_trainings"] == len(
        {tuple(v["kept"]) for v in m.values()} | {tuple(range(8)), (0, 1)})
    assert record["downstream_true"] > 0.5
    conf = m["lumos"]["confirmation"]
    assert set(m["lumos"]["kept"]) <= set(conf["kept_by_training"])
    assert conf["held_out_samples"] == int(320 * features.CONFIRM_FRACTION)

    # --rerun-lumos: the peers' selections and every kept set's metric come from the record
    again = features.run_task(task, 0, methods=methods, previous=record, stg_steps=100)
    for method in ("rf_at_k", "mi_at_k"):
        assert again["methods"][method] is record["methods"][method]
    new_sets = {tuple(v["kept"]) for k, v in again["methods"].items() if k.startswith("lumos")}
    old_sets = {tuple(v["kept"]) for v in m.values()} | {tuple(range(8)), (0, 1)}
    assert again["downstream_trainings"] == len(new_sets - old_sets)


def test_workload_lumos_confirms_on_held_out_training_samples():
    task = features.workload_task("darcy", "smoke", 0.25, 0, confirm=True)
    kept, scores, conf = task.lumos()
    assert set(kept) <= set(conf["kept_by_training"]) and len(scores) == len(task.feature_names)
    assert conf["held_out_samples"] >= 1 and isinstance(conf["unstable"], bool)


def test_structured_peers_prune_to_the_lumos_count():
    pytest.importorskip("torch_pruning")
    pytest.importorskip("ase")  # the atomistic workload's simulator
    torch.set_num_threads(1)
    r = structured.run_structured("atomistic_energy", "smoke", 0.25, 0,
                                  methods=("tp_magnitude", "unstructured_magnitude"))
    m, target = r["methods"], r["target_params"]
    dense = m["dense"]
    assert m["lumos"]["params"] == target < dense["params"]
    tp = m["tp_magnitude"]
    assert tp["status"] == "ok", tp.get("error")
    assert 0.8 * target <= tp["params"] <= target and tp["flops"] < dense["flops"]
    masks = m["unstructured_magnitude"]
    assert masks["status"] == "ok", masks.get("error")
    assert masks["params"] == dense["params"] and masks["flops"] == dense["flops"]
    assert masks["nonzero_params"] <= target * 1.001
    assert r["features_kept"] and len(r["feature_scores"]) == 48


def test_magnitude_masks_reach_weights_a_parent_reads_directly():
    """MultiheadAttention reads out_proj.weight without calling out_proj: masks still apply."""
    pytest.importorskip("cantera")  # the combustion workload's simulator
    torch.set_num_threads(1)
    r = structured.run_structured("combustion", "smoke", 0.25, 0,
                                  methods=("unstructured_magnitude",))
    masks = r["methods"]["unstructured_magnitude"]
    assert masks["status"] == "ok", masks.get("error")
    assert masks["nonzero_params"] <= r["target_params"] * 1.001


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
