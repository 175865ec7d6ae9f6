"""The regression gate on synthetic samples: error rates, verdicts, CLI, A/B mode, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from llmbench import gate
from llmbench.errors import UserError

CONFIG = ("float32", "sdpa", 1, 32, 16)


def entry(rng, n, *, slowdown=0.0, noise=0.2, config=CONFIG, status="ok"):
    """One profile result with raw samples: lognormal noise (sigma=noise) plus 5% spikes."""

    def noisy(base):
        x = base * (1 + slowdown) * np.exp(rng.normal(0.0, noise, n))
        spikes = rng.random(n) < 0.05
        x[spikes] *= rng.uniform(1.5, 3.0, spikes.sum())
        return x

    dtype, attention, batch, n_in, n_out = config
    ttft, tpot = noisy(0.02), noisy(0.01)
    e2e = ttft + tpot * (n_out - 1)
    tps = batch * (n_out - 1) / (e2e - ttft)
    stats = {k: {"p50": float(np.median(v)), "values": v.tolist()}
             for k, v in {"ttft_s": ttft, "tpot_s": tpot, "e2e_s": e2e, "decode_tps": tps}.items()}
    return {"dtype": dtype, "attention": attention, "batch_size": batch, "input_len": n_in,
            "output_len": n_out, "status": status, "reason": None, "iterations": n, **stats}


def write_profiles(directory: Path, models: dict[str, list[dict]]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, results in models.items():
        (directory / f"{name}.json").write_text(json.dumps({"model": name, "results": results}))
    return directory


def samples(results: list[dict]) -> dict:
    return {tuple(r[k] for k in gate.KEY_FIELDS): {m: r[m]["values"] for m in gate.METRICS}
            for r in results if r["status"] == "ok"}


def run_pair(seed, n, slowdown, noise=0.2):
    rng = np.random.default_rng(seed)
    base = {"m": samples([entry(rng, n, noise=noise)])}
    head = {"m": samples([entry(rng, n, slowdown=slowdown, noise=noise)])}
    rows, _ = gate.compare(base, head)
    return rows


def test_no_false_alarm_on_identical_distributions_with_20pct_noise():
    # 200 independent pairs of identical distributions, n=10 iterations a side (a CI-sized
    # profile), 4 metrics each. A gate that judged the point estimate would fail ~half.
    per_seed = [run_pair(seed, 10, 0.0) for seed in range(200)]
    any_slower = np.mean([any(r.verdict == gate.SLOWER for r in rows) for rows in per_seed])
    per_metric = np.mean([r.verdict == gate.SLOWER for rows in per_seed for r in rows])
    assert any_slower <= 0.05, any_slower
    assert per_metric <= 0.02, per_metric
    # ... and "faster" is just as guarded.
    assert np.mean([r.verdict == gate.FASTER for rows in per_seed for r in rows]) <= 0.02


def test_true_25pct_slowdown_is_detected():
    # 20% noise needs pooled samples (e.g. A/B rounds): n=100 a side.
    rows = [r for seed in range(60) for r in run_pair(seed, 100, 0.25)]
    detect = {m: np.mean([r.verdict == gate.SLOWER for r in rows if r.metric == m])
              for m in gate.METRICS}
    assert min(detect.values()) >= 0.8, detect  # decode_tps is caught going down, too
    # Quieter runs (5% noise) catch it with 30 iterations.
    rows = [r for seed in range(100) for r in run_pair(seed, 30, 0.25, noise=0.05)]
    assert np.mean([r.verdict == gate.SLOWER for r in rows]) >= 0.95


def test_speedup_is_faster_not_slower():
    rows = run_pair(1, 50, -0.4, noise=0.05)
    assert {r.verdict for r in rows} == {gate.FASTER}
    tps = next(r for r in rows if r.metric == "decode_tps")
    assert tps.ratio > 1.5 and tps.ci_low > 1.1  # throughput rose


@pytest.mark.parametrize(
    ("low", "high", "higher_is_worse", "expected"),
    [
        (1.11, 1.30, True, gate.SLOWER),
        (1.09, 1.30, True, gate.SAME),  # CI straddles the threshold: noise
        (0.80, 0.90, True, gate.FASTER),
        (0.80, 0.90, False, gate.SLOWER),  # throughput down 10%+ = slower
        (0.80, 0.92, False, gate.SAME),  # 0.92 > 1/1.1
        (1.11, 1.30, False, gate.FASTER),
    ],
)
def test_verdict_needs_whole_interval_beyond_threshold(low, high, higher_is_worse, expected):
    assert gate.verdict(low, high, higher_is_worse=higher_is_worse, threshold=0.10) == expected


def test_bootstrap_is_seeded_and_brackets_the_ratio():
    rng = np.random.default_rng(3)
    base, head = rng.lognormal(0, 0.2, 40), 1.3 * rng.lognormal(0, 0.2, 40)
    a = gate.bootstrap_ratio(base, head, n_boot=1000, confidence=0.95, seed=7)
    assert a == gate.bootstrap_ratio(base, head, n_boot=1000, confidence=0.95, seed=7)
    assert a != gate.bootstrap_ratio(base, head, n_boot=1000, confidence=0.95, seed=8)
    ratio, low, high = a
    assert ratio == pytest.approx(np.median(head) / np.median(base))
    assert low < ratio < high
    narrow = gate.bootstrap_ratio(base, head, n_boot=1000, confidence=0.5, seed=7)
    assert low < narrow[1] < narrow[2] < high


def test_cli_exit_codes_and_markdown(tmp_path, capsys):
    rng = np.random.default_rng(0)
    other = ("bfloat16", "sdpa", 1, 32, 16)
    base = write_profiles(tmp_path / "base", {
        "tiny": [entry(rng, 30, noise=0.05), entry(rng, 30, noise=0.05, config=other)],
        "gone": [entry(rng, 30)]})
    same = write_profiles(tmp_path / "same", {
        "tiny": [entry(rng, 30, noise=0.05),
                 entry(rng, 30, noise=0.05, config=other, status="error")]})
    slow = write_profiles(tmp_path / "slow", {
        "tiny": [entry(rng, 30, noise=0.05, slowdown=0.5), entry(rng, 30, noise=0.05, config=other)]})

    out = tmp_path / "gate.md"
    assert gate.main(["compare", "--base", str(base), "--head", str(same), "--out", str(out)]) == 0
    md = out.read_text()
    assert capsys.readouterr().out == md
    assert md.startswith("### Benchmark gate: ✅ no regression")
    assert "#### `tiny`" in md and "| config | metric | n base/head |" in md
    assert md.count(f"| {gate.SAME} |") == 4  # the 4 metrics of the one shared ok config
    assert "`gone`: no profile in head" in md and "ok in base only" in md

    assert gate.main(["compare", "--base", str(base), "--head", str(slow), "--out", str(out)]) == 1
    md = out.read_text()
    assert md.startswith("### Benchmark gate: ❌ 4 regressions")
    assert md.count("**slower**") == 4 and "| bfloat16 · sdpa · b1 · 32→16 | ttft_s |" in md
    # the real entry point's exit status, as CI sees it
    proc = subprocess.run([sys.executable, "-m", "llmbench.gate", "compare", "--base", str(base),
                           "--head", str(slow), "--out", str(tmp_path / "g2.md"),
                           "--threshold", "0.6"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr  # a 50% slowdown is within a 60% threshold


def test_too_few_samples_are_not_judged(tmp_path):
    rng = np.random.default_rng(0)
    base = write_profiles(tmp_path / "b", {"m": [entry(rng, 3)]})
    head = write_profiles(tmp_path / "h", {"m": [entry(rng, 3, slowdown=2.0)]})
    assert gate.main(["compare", "--base", str(base), "--head", str(head),
                      "--out", str(tmp_path / "g.md")]) == 0
    assert (tmp_path / "g.md").read_text().count("too few samples (< 5)") == 4


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda doc: doc.pop("results"), "results: missing"),
        (lambda doc: doc["results"][0]["ttft_s"].pop("values"), "results[0].ttft_s.values: missing"),
        (lambda doc: doc["results"][0].pop("batch_size"), "results[0].batch_size: missing"),
        (lambda doc: doc["results"][0]["e2e_s"].update(values=["x"]), "results[0].e2e_s.values"),
    ],
)
def test_bad_profile_is_a_one_line_error(tmp_path, capsys, mutate, message):
    rng = np.random.default_rng(0)
    good = write_profiles(tmp_path / "good", {"m": [entry(rng, 10)]})
    doc = {"model": "m", "results": [entry(rng, 10)]}
    mutate(doc)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "m.json").write_text(json.dumps(doc))
    assert gate.main(["compare", "--base", str(good), "--head", str(bad),
                      "--out", str(tmp_path / "g.md")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(bad / "m.json") in err and message in err
    with pytest.raises(UserError, match="profile directory not found"):
        gate.load_dir(tmp_path / "nowhere")


def test_missing_directory_exit_2_from_the_command_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "llmbench.gate", "compare", "--base",
                           str(tmp_path / "nope"), "--head", str(tmp_path)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {tmp_path / 'nope'}: profile directory not found"
    assert gate.main(["compare", "--base", str(tmp_path), "--head", str(tmp_path),
                      "--threshold", "0"]) == 2  # bad threshold (empty dir is caught first)


FAKE_PROFILER = textwrap.dedent("""
    # Writes metrics/profile/m.json; its samples scale with ./speed and each run is logged.
    import json, pathlib, sys
    import numpy as np
    here = pathlib.Path.cwd()
    log = pathlib.Path(sys.argv[1])
    runs = log.read_text().split() if log.exists() else []
    log.write_text(" ".join(runs + [here.name]))
    rng = np.random.default_rng(len(runs))
    x = float((here / "speed").read_text()) * rng.lognormal(0, 0.05, 10)
    res = {"dtype": "float32", "attention": "sdpa", "batch_size": 1, "input_len": 8,
           "output_len": 4, "status": "ok"}
    for m, v in {"ttft_s": x, "tpot_s": x, "e2e_s": x, "decode_tps": 1 / x}.items():
        res[m] = {"values": v.tolist()}
    out = here / "metrics" / "profile"
    out.mkdir(parents=True, exist_ok=True)
    (out / "m.json").write_text(json.dumps({"model": "m", "results": [res]}))
""")


@pytest.mark.parametrize(("head_speed", "expected_rc"), [(1.0, 0), (1.5, 1)])
def test_ab_mode_interleaves_and_pools(tmp_path, head_speed, expected_rc):
    log = tmp_path / "order.log"
    for name, speed in (("A", 1.0), ("B", head_speed)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "speed").write_text(str(speed))
    (tmp_path / "fake.py").write_text(FAKE_PROFILER)
    # a stale file from an old run in A must not be pooled
    write_profiles(tmp_path / "A" / "metrics" / "profile", {"stale": [entry(np.random.default_rng(0), 10)]})
    import os, time
    old = time.time() - 3600
    os.utime(tmp_path / "A" / "metrics" / "profile" / "stale.json", (old, old))

    rc = gate.main(["ab", "--base-dir", str(tmp_path / "A"), "--head-dir", str(tmp_path / "B"),
                    "--cmd", f"{sys.executable} {tmp_path / 'fake.py'} {log}", "--rounds", "3",
                    "--out", str(tmp_path / "g.md")])
    assert rc == expected_rc
    assert log.read_text().split() == ["A", "B"] * 3
    md = (tmp_path / "g.md").read_text()
    assert "| 30/30 |" in md and "stale" not in md  # 3 rounds x 10 samples pooled per side


def test_ab_mode_failing_command_is_exit_2(tmp_path, capsys):
    (tmp_path / "A").mkdir()
    (tmp_path / "B").mkdir()
    assert gate.main(["ab", "--base-dir", str(tmp_path / "A"), "--head-dir", str(tmp_path / "B"),
                      "--cmd", "exit 3", "--rounds", "1", "--out", str(tmp_path / "g.md")]) == 2
    assert "--cmd exited 3" in capsys.readouterr().err
