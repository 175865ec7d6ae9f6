"""The regression gate on synthetic samples: error rates, verdicts, CLI, A/B mode, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

from llmbench import gate
from llmbench.errors import UserError
from llmbench.results import (Deployment, Fingerprint, Memory, ModelFacts, ProfileProtocol,
                              ProfileResult, ProfileRow, Stats, write_result)

CONFIG = ("float32", "sdpa", 1, 32, 16)  # precision, attention, batch, n_in, n_out


def stats(values) -> Stats:
    v = np.asarray(values, dtype=float)
    return Stats(p50=float(np.median(v)), p90=None, p95=None, p99=None, mean=float(v.mean()),
                 std=float(v.std()), cv=None, n=v.size, values=v.tolist())


def entry(rng, n, *, slowdown=0.0, noise=0.2, config=CONFIG, status="ok", model="m") -> ProfileRow:
    """One profile row with raw samples: lognormal noise (sigma=noise) plus 5% spikes."""

    def noisy(base):
        x = base * (1 + slowdown) * np.exp(rng.normal(0.0, noise, n))
        spikes = rng.random(n) < 0.05
        x[spikes] *= rng.uniform(1.5, 3.0, spikes.sum())
        return x

    precision, attention, batch, n_in, n_out = config
    ttft, tpot = noisy(0.02), noisy(0.01)
    e2e = ttft + tpot * (n_out - 1)
    tps = batch * (n_out - 1) / (e2e - ttft)
    return ProfileRow(status=status, reason=None if status == "ok" else "failed in the test",
                      deployment=Deployment(model=model, precision=precision, attention=attention),
                      batch_size=batch, input_len=n_in, output_len=n_out, iterations=n,
                      ttft_s=stats(ttft), tpot_s=stats(tpot), itl_s=stats(tpot), e2e_s=stats(e2e),
                      decode_tps=stats(tps), prefill_tps=stats(batch * n_in / ttft), memory=Memory())


def profile(model: str, rows: list[ProfileRow]) -> ProfileResult:
    """A whole, schema-valid profile file around the rows."""
    return ProfileResult(
        status="ok", model=model, weights="random",
        info=ModelFacts(name=model, source="random", weights="random", n_params=1000,
                        weight_bytes=4000, dtype="float32", architecture="GPT2LMHeadModel",
                        tokenizer="gpt2"),
        fingerprint=Fingerprint(cpu="test", cores=2, torch_threads=1, ram_gib=1.0, os="linux",
                                python="3", torch="0", transformers="0", device="cpu"),
        results=[r.model_copy(update={"deployment": r.deployment.model_copy(update={"model": model})})
                 for r in rows],
        headline=None,
        protocol=ProfileProtocol(preset="cpu-small", warmup=0, min_iterations=1, min_duration_s=0,
                                 max_iterations=None, threads=None, device="cpu", bandwidth_mib=0,
                                 large_model_params=None, batch_sizes=[1], input_lens=[32],
                                 output_len=16, dtypes=["float32"], attentions=["sdpa"],
                                 grid_reduced=False, notes=[], omp_wait_policy=None,
                                 loadavg_1m=[0.0, 0.0]))


def write_profiles(directory: Path, models: dict[str, list[ProfileRow]]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, rows in models.items():
        write_result(directory / f"{name}.json", profile(name, rows))
    return directory


def samples(rows: list[ProfileRow]) -> dict:
    return {(r.deployment.key, r.batch_size, r.input_len, r.output_len):
            {m: getattr(r, m).values for m in gate.METRICS} for r in rows if r.status == "ok"}


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
                 entry(rng, 30, noise=0.05, config=other, status="failed")]})
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
    assert md.count("**slower**") == 4 and "| tiny.transformers.bfloat16.sdpa · b1 · 32→16 | ttft_s |" in md
    assert "| tiny.transformers.float32.sdpa · b1 · 32→16 | ttft_s |" in md and " ms |" in md
    # the real entry point's exit status, as CI sees it
    proc = subprocess.run([sys.executable, "-m", "llmbench.gate", "compare", "--base", str(base),
                           "--head", str(slow), "--out", str(tmp_path / "g2.md"),
                           "--threshold", "0.6"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr  # a 50% slowdown is within a 60% threshold


def _params_file(path: Path, **gate_keys) -> Path:
    raw = {"roster": ["t"], "models": {"t": {"source": "random", "config": "tiny-gpt2"}}}
    if gate_keys:
        raw["gate"] = gate_keys
    path.write_text(yaml.safe_dump(raw))
    return path


def test_gate_takes_threshold_and_confidence_from_params(tmp_path):
    rng = np.random.default_rng(0)
    base = write_profiles(tmp_path / "base", {"m": [entry(rng, 30, noise=0.05)]})
    slow = write_profiles(tmp_path / "slow", {"m": [entry(rng, 30, noise=0.05, slowdown=0.5)]})
    run = ["compare", "--base", str(base), "--head", str(slow), "--out", str(tmp_path / "g.md")]
    # the same 50% slowdown: a regression under the default 10% threshold ...
    assert gate.main(run + ["--params", str(_params_file(tmp_path / "default.yaml"))]) == 1
    # ... not under a 60% one set in params.yaml, and the report says which was used
    assert gate.main(run + ["--params", str(_params_file(tmp_path / "loose.yaml", threshold=0.6))]) == 0
    md = (tmp_path / "g.md").read_text()
    assert "more than 60% slower" in md and "95% BCa bootstrap" in md
    # confidence comes from params too; a flag overrides params
    assert gate.main(run + ["--params", str(_params_file(tmp_path / "c.yaml", threshold=0.6, confidence=0.8))]) == 0
    assert "80% CI" in (tmp_path / "g.md").read_text()
    assert gate.main(run + ["--params", str(tmp_path / "loose.yaml"), "--threshold", "0.1"]) == 1
    # without --params, ./params.yaml is read (CI runs the gate from the repo root)
    _params_file(tmp_path / "params.yaml", threshold=0.6)
    proc = subprocess.run([sys.executable, "-m", "llmbench.gate", *run], capture_output=True,
                          text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr


def test_gate_settings_are_checked_by_the_schema(tmp_path, capsys):
    rng = np.random.default_rng(0)
    d = write_profiles(tmp_path / "d", {"m": [entry(rng, 10)]})
    run = ["compare", "--base", str(d), "--head", str(d), "--out", str(tmp_path / "g.md")]
    bad = _params_file(tmp_path / "bad.yaml", threshold=-1)
    assert gate.main(run + ["--params", str(bad)]) == 2
    assert capsys.readouterr().err.strip().startswith(f"error: {bad}: gate.threshold: ")
    assert gate.main(run + ["--params", str(_params_file(tmp_path / "ok.yaml")), "--confidence", "1.5"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: --confidence: ")
    assert gate.main(run + ["--params", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml: not found" in capsys.readouterr().err


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
        (lambda doc: doc.pop("results"), "results: required field is missing"),
        (lambda doc: doc["results"][0]["ttft_s"].pop("values"), "results.0.ttft_s.values: required field is missing"),
        (lambda doc: doc["results"][0].pop("batch_size"), "results.0.batch_size: required field is missing"),
        (lambda doc: doc["results"][0]["e2e_s"].update(values=["x"]), "results.0.e2e_s.values.0: "),
        (lambda doc: doc.update(schema_version=0), "schema_version: "),
    ],
)
def test_bad_profile_is_a_one_line_error(tmp_path, capsys, mutate, message):
    rng = np.random.default_rng(0)
    good = write_profiles(tmp_path / "good", {"m": [entry(rng, 10)]})
    doc = json.loads(profile("m", [entry(rng, 10)]).model_dump_json())
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


FAKE_PROFILER = textwrap.dedent("""
    # Writes metrics/profile/m.json from a template profile; its samples scale with ./speed
    # and each run is logged.
    import json, pathlib, sys
    import numpy as np
    here = pathlib.Path.cwd()
    log, template = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    runs = log.read_text().split() if log.exists() else []
    log.write_text(" ".join(runs + [here.name]))
    rng = np.random.default_rng(len(runs))
    x = float((here / "speed").read_text()) * rng.lognormal(0, 0.05, 10)
    doc = json.loads(template.read_text())
    for m, v in {"ttft_s": x, "tpot_s": x, "e2e_s": x, "decode_tps": 1 / x}.items():
        doc["results"][0][m]["values"] = v.tolist()
    out = here / "metrics" / "profile"
    out.mkdir(parents=True, exist_ok=True)
    (out / "m.json").write_text(json.dumps(doc))
""")


@pytest.mark.parametrize(("head_speed", "expected_rc"), [(1.0, 0), (1.5, 1)])
def test_ab_mode_interleaves_and_pools(tmp_path, head_speed, expected_rc):
    log = tmp_path / "order.log"
    for name, speed in (("A", 1.0), ("B", head_speed)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "speed").write_text(str(speed))
    (tmp_path / "fake.py").write_text(FAKE_PROFILER)
    write_profiles(tmp_path / "template", {"m": [entry(np.random.default_rng(0), 10)]})
    # a stale file from an old run in A must not be pooled
    write_profiles(tmp_path / "A" / "metrics" / "profile", {"stale": [entry(np.random.default_rng(0), 10)]})
    import os, time
    old = time.time() - 3600
    os.utime(tmp_path / "A" / "metrics" / "profile" / "stale.json", (old, old))

    rc = gate.main(["ab", "--base-dir", str(tmp_path / "A"), "--head-dir", str(tmp_path / "B"),
                    "--cmd", f"{sys.executable} {tmp_path / 'fake.py'} {log} {tmp_path / 'template' / 'm.json'}",
                    "--rounds", "3", "--profile-subdir", "metrics/profile", "--out", str(tmp_path / "g.md")])
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


def test_per_backend_files_pool_into_their_model(tmp_path):
    # profile-<backend>@m writes m.<backend>.json; the gate compares by model, every config kept
    rng = np.random.default_rng(3)
    hf = entry(rng, 10)
    cpp = entry(rng, 10, config=("Q4_1", None, 1, 32, 16))
    cpp = cpp.model_copy(update={"deployment": cpp.deployment.model_copy(update={"backend": "llamacpp"})})
    d = tmp_path / "p"
    d.mkdir()
    write_result(d / "m.transformers.json", profile("m", [hf]))
    write_result(d / "m.llamacpp.json", profile("m", [cpp]))
    got = gate.load_dir(d)
    assert list(got) == ["m"] and sorted(k[0] for k in got["m"]) == ["m.llamacpp.Q4_1", "m.transformers.float32.sdpa"]
