"""metrics.py against values computed by hand."""

import math

import pytest

from llmbench import metrics


def test_describe_samples_hand_computed():
    s = metrics.describe_samples([4, 1, 3, 2])
    # sorted 1,2,3,4; linear interpolation at rank q*(n-1): p90 -> 2.7 -> 3 + 0.7 = 3.7
    assert s["p50"] == pytest.approx(2.5)
    assert s["p90"] == pytest.approx(3.7)
    assert s["p95"] == pytest.approx(3.85)
    assert s["p99"] == pytest.approx(3.97)
    assert s["mean"] == pytest.approx(2.5)
    # population std: sqrt((2.25 + 0.25 + 0.25 + 2.25) / 4) = sqrt(1.25)
    assert s["std"] == pytest.approx(math.sqrt(1.25))
    assert s["cv"] == pytest.approx(math.sqrt(1.25) / 2.5)
    assert s["n"] == 4
    assert s["values"] == [4.0, 1.0, 3.0, 2.0]  # raw, in measurement order
    assert set(s) == set(metrics.STAT_KEYS)


def test_describe_samples_single_and_empty():
    s = metrics.describe_samples([0.25])
    assert (s["p50"], s["p99"], s["std"], s["cv"], s["n"]) == (0.25, 0.25, 0.0, 0.0, 1)
    e = metrics.describe_samples([])
    assert e["n"] == 0 and e["values"] == [] and e["p50"] is None and e["cv"] is None


def test_describe_samples_zero_mean_cv_none_and_rejects_nan():
    assert metrics.describe_samples([0.0, 0.0])["cv"] is None
    with pytest.raises(ValueError):
        metrics.describe_samples([1.0, float("nan")])


def test_describe_samples_is_json_plain():
    import json

    import numpy as np

    s = metrics.describe_samples(np.array([1.0, 2.0], dtype=np.float32))
    assert json.loads(json.dumps(s)) == s


def test_rates_hand_computed():
    # 16 tokens, first at 0.5 s, last at 2.0 s, batch 4, 32 prompt tokens
    assert metrics.tpot(2.0, 0.5, 16) == pytest.approx(0.1)
    assert metrics.decode_tps(4, 16, 2.0, 0.5) == pytest.approx(40.0)
    assert metrics.prefill_tps(4, 32, 0.5) == pytest.approx(256.0)
    assert metrics.tpot(1.0, 1.0, 1) is None
    assert metrics.decode_tps(1, 1, 1.0, 1.0) is None
    assert metrics.prefill_tps(1, 32, 0.0) is None


def test_gaps():
    assert metrics.gaps([1.0, 1.5, 2.25]) == pytest.approx([0.5, 0.75])
    assert metrics.gaps([3.0]) == []


def test_bandwidth_and_roofline():
    assert metrics.bandwidth_gbps(2e9, 0.5) == pytest.approx(4.0)
    with pytest.raises(ValueError):
        metrics.bandwidth_gbps(1.0, 0.0)
    r = metrics.roofline(weight_bytes=500e6, decode_tps_value=20.0, peak_gbps=40.0)
    assert r == pytest.approx({"achieved_gbps": 10.0, "ratio": 0.25})
    assert metrics.roofline(500e6, None, 40.0) is None
    assert metrics.mib(3 * 2**20) == 3.0


def test_stat_keys_are_the_stats_model_fields():
    from llmbench.results import Stats

    assert set(metrics.STAT_KEYS) == set(Stats.model_fields)
    Stats(**metrics.describe_samples([1.0, 2.0]))  # a describe_samples dict is a valid Stats
    Stats(**metrics.describe_samples([]))
