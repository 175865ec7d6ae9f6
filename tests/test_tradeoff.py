"""Pareto frontier, budget recommendation, cost and fingerprint rules on hand-made tables."""
import numpy as np
import pandas as pd
import pytest

from llmbench.config import Budget, parse_params
from llmbench.errors import UserError
from llmbench.spec import METRICS
from llmbench.tradeoff import (BUDGET_METRICS, comparable, fingerprint_id, pareto_front, recommend,
                               usd_per_mtok)


def table(rows: dict) -> pd.DataFrame:
    """rows: [quality, ttft ms, tpot ms, rss MiB, usd] -> the report's SI columns (seconds)."""
    cols = ["quality", "ttft_s_p50", "tpot_s_p50", "rss_peak_mib", "usd_per_mtok"]
    t = pd.DataFrame.from_dict(rows, orient="index", columns=cols).astype(float)
    t[["ttft_s_p50", "tpot_s_p50"]] /= 1e3
    return t


def test_cost_formula_by_hand():
    # 0.36 USD/h at 100 tok/s: 360,000 tokens per hour -> 1e6 tokens cost exactly 1 USD
    assert usd_per_mtok(0.36, 100.0) == pytest.approx(1.0)
    # doubling throughput (e.g. a bigger batch) halves the cost per token
    assert usd_per_mtok(0.36, 200.0) == pytest.approx(0.5)
    out = usd_per_mtok(1.0, np.array([3600 / 1e6 * 1e6, 0.0, np.nan]))
    assert out[0] == pytest.approx(1e6 / (3600 * 3600)) and np.isnan(out[1]) and np.isnan(out[2])


def test_pareto_dominance_and_nan_quality():
    t = table({"a": [50, 1, 10, 100, 1], "b": [40, 1, 20, 200, 1], "c": [60, 1, 30, 100, 1],
               "d": [np.nan, 1, 1, 1, 1], "e": [55, 1, 5, 300, 1]})
    front = pareto_front(t, "quality", "tpot_s_p50", "rss_peak_mib")
    assert list(front.index) == list(t.index)  # NaN row kept in the table...
    assert front.to_dict() == {"a": True, "b": False, "c": True, "d": False, "e": True}  # ...not on it


def test_pareto_ties_keep_equal_points():
    t = table({"x": [50, 1, 10, 100, 1], "y": [50, 1, 10, 100, 1], "z": [50, 1, 10, 101, 1]})
    front = pareto_front(t, "quality", "tpot_s_p50", "rss_peak_mib")
    assert front.to_dict() == {"x": True, "y": True, "z": False}


def test_recommend_best_quality_within_budget_with_reasons():
    t = table({"small": [30, 10, 5, 500, 0.2], "mid": [40, 50, 20, 900, 0.6],
               "big": [60, 200, 120, 5000, 3.0], "noscore": [np.nan, 5, 2, 100, 0.1]})
    rec = recommend(t, "quality", Budget(**{"max_tpot_ms": 100, "max_rss_mib": None}))
    assert rec.model == "mid"
    assert "TPOT p50 ms 120 > max_tpot_ms 100" in rec.excluded["big"]
    assert rec.excluded["small"] == "fits, but quality 30 < 40 (mid)"
    assert "no 'quality' score" in rec.excluded["noscore"]
    assert set(rec.excluded) == {"small", "big", "noscore"}


def test_recommend_quality_tie_goes_to_faster_model():
    t = table({"slow": [50, 10, 30, 100, 1], "fast": [50, 10, 10, 100, 1]})
    rec = recommend(t, "quality", Budget())
    assert rec.model == "fast" and "ties fast" in rec.excluded["slow"]
    assert "no limits set" in rec.text


def test_recommend_none_fits_names_the_binding_limit():
    t = table({"a": [50, 10, 30, 800, 1], "b": [60, 10, 40, 600, 1]})
    rec = recommend(t, "quality", Budget(**{"max_tpot_ms": 20, "max_rss_mib": 1000}))
    assert rec.model is None and rec.binding == ("max_tpot_ms",)
    assert "binding limit: max_tpot_ms=20 (relaxing it to 30 admits a)" in rec.text
    assert "\n" not in rec.text


def test_recommend_none_fits_when_every_model_breaks_two_limits():
    t = table({"a": [50, 10, 30, 800, 1], "b": [60, 10, 40, 900, 1], "c": [70, 10, 10, 2000, 1]})
    rec = recommend(t, "quality", Budget(**{"max_tpot_ms": 20, "max_rss_mib": 700}))
    assert rec.model is None
    # c breaks only rss -> relaxing rss alone admits c
    assert rec.binding == ("max_rss_mib",) and "admits c" in rec.text
    rec2 = recommend(t.drop(index="c"), "quality", Budget(**{"max_tpot_ms": 20, "max_rss_mib": 700}))
    assert rec2.model is None and "most binding" in rec2.text and rec2.binding


def test_recommend_unmeasured_and_pre_excluded():
    t = table({"a": [50, np.nan, np.nan, np.nan, np.nan], "b": [40, 10, 10, 100, 1],
               "c": [90, 1, 1, 10, 0.1]})
    rec = recommend(t, "quality", Budget(**{"max_ttft_ms": 100}), pre_excluded={"c": "other machine"})
    assert rec.model == "b"
    assert "TTFT p50 ms not measured" in rec.excluded["a"] and rec.excluded["c"] == "other machine"


@pytest.mark.parametrize("budget, key", [({"max_latency": 3}, "max_latency"), ({"max_rss_mib": -1}, "max_rss_mib"),
                                         ({"max_tpot_ms": "x"}, "max_tpot_ms")])
def test_bad_budget_is_a_user_error(budget, key):
    # validated once, where params are loaded
    raw = {"roster": ["m"], "models": {"m": {"source": "random", "config": "tiny-gpt2"}}, "budget": budget}
    with pytest.raises(UserError, match=rf"^params\.yaml: budget\.{key}: "):
        parse_params(raw)


def test_budget_keys_are_in_the_metrics_display_unit():
    # max_ttft_ms compares ttft_s shown in ms: a budget key's suffix is its metric's display unit
    # min_capacity_rps is a served-capacity floor (llmbench.report_serving), not a measured metric
    assert set(BUDGET_METRICS) == set(Budget.model_fields) - {"min_capacity_rps"}
    for key, (name, _) in BUDGET_METRICS.items():
        unit = {"ms": "ms", "MiB": "mib", "USD": "usd_per_mtok"}[METRICS[name].display_unit]
        assert key.endswith(unit), key


def test_fingerprints_not_mixed_unless_asked():
    fps = {"a": "f1", "b": "f2", "c": "f2", "d": None}
    kept, excluded, note = comparable(fps)
    assert kept == ["b", "c", "d"] and set(excluded) == {"a"}
    assert note.startswith("Refusing to compare") and "mix_fingerprints" in note
    kept, excluded, note = comparable(fps, mix=True)
    assert kept == list(fps) and not excluded and "Mixing 2 environments" in note
    assert comparable({"a": "f1", "b": "f1"}) == (["a", "b"], {}, None)


def test_fingerprint_id_ignores_key_order():
    a = fingerprint_id({"cpu": "x", "cores": 2})
    assert a == fingerprint_id({"cores": 2, "cpu": "x"}) != fingerprint_id({"cpu": "x", "cores": 4})
    assert fingerprint_id(None) is None and len(a) == 8 and int(a, 16) >= 0
