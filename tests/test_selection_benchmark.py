"""benchmarks/selection: the tables it builds (seen and unseen laws) and reusing records."""

from __future__ import annotations

import json

import numpy as np
import pytest
from benchmarks.selection.data import make_selection_data
from benchmarks.selection.run import Condition, _key, _load, seed_cache
from benchmarks.selection.unseen import UNSEEN_LAWS

from lumos.workloads.laws import LAWS


@pytest.mark.parametrize("law", [*LAWS, *UNSEEN_LAWS])
def test_a_table_has_its_law_the_noise_and_the_proxies_it_says(law):
    s = make_selection_data(law, 400, 12, 4, seed=3)
    spec = LAWS.get(law) or UNSEEN_LAWS[law]
    assert sorted(s.feature_names[j] for j in s.true) == sorted(spec.variables)
    assert len(s.noise) == 12 and len(s.proxies) == 4
    assert set(s.true) | set(s.noise) | set(s.proxies) == set(range(s.n_features))
    x = np.concatenate([s.X_train, s.X_test])
    for p, v in s.proxy_of.items():
        assert 0.8 < np.corrcoef(x[:, p], x[:, v])[0, 1] < 0.97
    assert np.isfinite(s.y_train).all() and np.isfinite(s.y_test).all()
    again = make_selection_data(law, 400, 12, 4, seed=3)
    assert np.array_equal(s.X_train, again.X_train) and np.array_equal(s.y_train, again.y_train)


def test_unseen_tables_have_noise_that_is_not_gaussian():
    s = make_selection_data("lorentz", 2000, 10, 0, seed=0)
    x = np.concatenate([s.X_train, s.X_test])[:, s.noise]
    assert np.allclose(x.mean(0), 0, atol=1e-9) and np.allclose(x.std(0), 1)
    distinct = [len(np.unique(c)) for c in x.T]
    assert min(distinct) == 2  # binary columns
    kurtosis = ((x - x.mean(0)) ** 4).mean(0)
    assert kurtosis.max() > 6  # heavy-tailed / skewed ones (a Gaussian's is 3)
    seen = make_selection_data("drag", 2000, 10, 0, seed=0)
    seen_x = np.concatenate([seen.X_train, seen.X_test])[:, seen.noise]
    assert min(len(np.unique(c)) for c in seen_x.T) > 100


def test_reuse_from_seeds_the_cache_but_not_the_redone_method_nor_over_a_record(tmp_path):
    c = Condition(500, 12, 4)
    common = {"law": "drag", "rows": 500, "noise": 12, "proxies_planted": 4, "seed": 0,
              "features": 20, "k": 4, "r2_true": 0.9, "r2_all": 0.8, "y_scale": 1.0,
              "status": "ok", "kept": [1, 2], "exact": False, "code": "abc1234"}
    rows = [{**common, "method": "stg", "precision": 0.5}, {**common, "method": "lumos"}]
    results = tmp_path / "selection.json"
    results.write_text(json.dumps({"rows": rows}))
    cache = tmp_path / "cache"
    cache.mkdir()
    mine = cache / f"drag__{c.tag}__s0__rf_at_k.json"
    mine.write_text("{}")
    rows.append({**common, "method": "rf_at_k"})
    results.write_text(json.dumps({"rows": rows}))

    assert seed_cache(results, cache, skip={"lumos"}) == 2  # the set's baseline and stg
    base = _load(cache / f"drag__{c.tag}__s0__baseline.json", _key("drag", c, 0, "baseline"),
                 True)
    assert base is not None and (base["r2_true"], base["r2_all"]) == (0.9, 0.8)
    assert base["feature_names"] == make_selection_data("drag", 500, 12, 4).feature_names
    rec = _load(cache / f"drag__{c.tag}__s0__stg.json", _key("drag", c, 0, "stg"), True)
    assert rec is not None and rec["precision"] == 0.5 and rec["code"] == "abc1234"
    assert "law" not in rec and "r2_true" not in rec  # the set's fields come from the set
    assert not (cache / f"drag__{c.tag}__s0__lumos.json").exists()
    assert mine.read_text() == "{}"
