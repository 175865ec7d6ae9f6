"""The aggregate report: joins, labels, files, PNGs and `dvc plots show` over the CSVs."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from llmbench.errors import UserError
from llmbench.reference import fetch, load_reference
from llmbench.report import DVC_PLOTS_YAML, PLOT_CSVS, build_report, write_report
from llmbench.tradeoff import fingerprint_id

FP = {"cpu": "x86_64", "cores": 2, "torch_threads": 2, "ram_gib": 24.0, "os": "Linux",
      "python": "3.11", "torch": "2.13.0", "transformers": "5.24", "device": "cpu"}
SHAPES = [(b, n) for b in (1, 4) for n in (32, 128)]


def stats(v):
    return {"p50": v, "p90": v, "p95": v, "p99": v, "mean": v, "std": 0.0, "cv": 0.0, "n": 3,
            "values": [v] * 3}


def profile(model, weights, params, ttft, tpot, rss, ref_id, fp=FP):
    res = [{"dtype": "float32", "attention": "sdpa", "batch_size": b, "input_len": n, "output_len": 16,
            "status": "ok", "reason": None, "iterations": 3, "ttft_s": stats(ttft * n / 32),
            "tpot_s": stats(tpot), "itl_s": stats(tpot), "e2e_s": stats(ttft + 15 * tpot),
            "decode_tps": stats(b / tpot), "prefill_tps": stats(b * n / ttft),
            "memory": {"rss_baseline_mib": 300.0, "rss_peak_mib": rss + b, "weights_mib": params / 2**18,
                       "kv_cache_mib": 1.0, "cuda_max_allocated_mib": None, "cuda_max_reserved_mib": None},
            "roofline": None} for b, n in SHAPES]
    res.append({"dtype": "bfloat16", "attention": "eager", "batch_size": 1, "input_len": 32,
                "output_len": 16, "status": "unsupported", "reason": "no bf16", "iterations": 0})
    head = {"dtype": "float32", "attention": "sdpa", "batch_size": 1, "input_len": 32, "output_len": 16,
            "ttft_p50_s": ttft, "tpot_p50_s": tpot, "e2e_p50_s": ttft + 15 * tpot,
            "decode_tps_p50": 1 / tpot, "prefill_tps_p50": 32 / ttft, "rss_peak_mib": rss + 1,
            "weights_mib": params / 2**18, "load_s": 1.5}
    return {"model": model, "weights": weights, "fingerprint": fp, "preset": "cpu-small", "load_s": 1.5,
            "info": {"name": model, "source": "random", "weights": weights, "params": params,
                     "weight_bytes": params * 4, "dtype": "float32", "architecture": "X",
                     "reference_id": ref_id},
            "bandwidth": {"copy_gbps": 5.0}, "results": res, "headline": head}


def evaluation(model, weights, acc=None):
    if acc is None:
        return {"model": model, "weights": weights, "status": "skipped", "reason": "random weights",
                "lm_eval_version": "0.4.9", "tasks": {}}
    task = {"acc": acc, "acc_stderr": 0.02, "acc_norm": None, "acc_norm_stderr": None, "n": 40,
            "num_fewshot": 0, "limit": 40, "suite": "smoke"}
    return {"model": model, "weights": weights, "status": "ok", "reason": None,
            "lm_eval_version": "0.4.9", "tasks": {"llmbench_smoke": task}}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    fetch({"source": "bundled"}, out)
    return load_reference(out)


@pytest.fixture
def runs():
    prof = {"neo": profile("neo", "random", 125_198_592, 0.03, 0.020, 900, "EleutherAI/gpt-neo-125m"),
            "llama": profile("llama", "random", 1_100_048_384, 0.2, 0.120, 4800,
                             "TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T"),
            "distil": profile("distil", "random", 81_912_576, 0.02, 0.012, 650, "distilgpt2"),
            "smol": profile("smol", "pretrained", 134_515_008, 0.03, 0.025, 1100, "HuggingFaceTB/SmolLM2-135M"),
            "stale": profile("stale", "random", 1, 0.1, 0.1, 1, "tiiuae/falcon-rw-1b")}
    ev = {m: evaluation(m, p["weights"]) for m, p in prof.items()}
    ev["smol"] = evaluation("smol", "pretrained", acc=0.375)
    return prof, {"smol": {"gen_tps": 33.0}}, ev


CFG = {"cost": {"usd_per_hour": 0.36}, "budget": {"max_tpot_ms": 100, "max_rss_mib": None},
       "report": {"quality": "reference:average", "mix_fingerprints": False}}
ROSTER = ["neo", "llama", "distil", "smol"]


def test_table_joins_reference_live_and_measured(runs, reference):
    prof, inf, ev = runs
    r = build_report(ROSTER, prof, inf, ev, reference, CFG)
    t = r.table
    # falcon-rw-1b has a reference row and a stale profile file, but is not in the roster
    assert list(t.index) == ROSTER and "stale" not in r.markdown and "falcon" not in r.markdown
    assert t.loc["neo", "ref_arc"] == 22.95 and t.loc["neo", "ref_protocol"] == "open-llm-leaderboard-v1"
    assert np.isnan(t.loc["distil", "ref_average"])  # no published row -> shown as missing
    distil_row = next(l for l in r.markdown.splitlines() if l.startswith("| distil | random | —"))
    assert distil_row.count("—") >= 7
    assert t.loc["neo", "tpot_p50_ms"] == pytest.approx(20.0) and t.loc["neo", "load_s"] == 1.5
    # cost = usd_per_hour / (decode_tps * 3600) * 1e6 at the headline batch (tps = 1 / tpot)
    assert t.loc["neo", "usd_per_mtok"] == pytest.approx(0.36 / (50.0 * 3600) * 1e6)
    assert t.loc["smol", "live_llmbench_smoke"] == pytest.approx(37.5)
    assert "37.5 ±2.0 (0-shot acc, n=40, limit 40, smoke)" in t.loc["smol", "live_llmbench_smoke_text"]
    assert t.loc["neo", "live_llmbench_smoke_text"] == "skipped (random weights)"
    assert t.loc["smol", "infer_gen_tps"] == 33.0
    md = r.markdown
    assert "reference (published)" in md and "random weights of the real model's shape" in md
    assert "truncated" in md  # the TinyLlama TruthfulQA caveat travels with the number
    # frontier and recommendation rank on the v1 average; smol's card uses another protocol
    assert r.quality == "ref_average" and r.frontier == ["neo", "llama"]
    assert r.recommendation.model == "neo" and "TPOT p50 ms 120 > max_tpot_ms 100" in md


def test_missing_inputs_do_not_crash(runs):
    prof, _, _ = runs
    r = build_report(["neo", "ghost"], {"neo": prof["neo"]}, {}, {}, None, {})
    assert np.isnan(r.table.loc["ghost", "tpot_p50_ms"]) and r.frontier == []
    assert "not profiled" in r.recommendation.excluded["ghost"]
    assert r.recommendation.model is None and "no frontier" in r.markdown


def test_live_quality_never_scores_random_weights(runs, reference):
    prof, inf, ev = runs
    ev["neo"] = evaluation("neo", "random", acc=0.9)  # a score on random weights is not accuracy
    cfg = {**CFG, "report": {"quality": "llmbench_smoke"}}
    r = build_report(ROSTER, prof, inf, ev, reference, cfg)
    assert r.quality == "live_llmbench_smoke" and r.frontier == ["smol"]
    assert r.recommendation.model == "smol"
    assert r.table.loc[r.table["weights"] == "random", "quality"].isna().all()
    assert r.table.loc["neo", "live_llmbench_smoke_text"] == "skipped (random weights)"
    assert "90.0" not in r.markdown


def test_fingerprints_are_not_mixed_by_default(runs, reference):
    prof, inf, ev = runs
    prof["llama"] = {**prof["llama"], "fingerprint": {**FP, "cpu": "arm64"}}
    r = build_report(ROSTER, prof, inf, ev, reference, CFG)
    assert "Refusing to compare across environments" in r.markdown
    assert not r.table.loc["llama", "compared"] and r.frontier == ["neo"]
    assert "another environment" in r.recommendation.excluded["llama"]
    mixed = build_report(ROSTER, prof, inf, ev, reference,
                         {**CFG, "report": {**CFG["report"], "mix_fingerprints": True}})
    assert mixed.table["compared"].sum() == 4 and "llama" in mixed.frontier


@pytest.mark.parametrize("quality", ["reference:piqa_typo", "other:x"])
def test_bad_quality_param(runs, reference, quality):
    prof, inf, ev = runs
    with pytest.raises(UserError, match="report.quality"):
        build_report(ROSTER, prof, inf, ev, reference, {**CFG, "report": {"quality": quality}})


def test_written_files_pngs_csvs_summary(runs, reference, tmp_path):
    prof, inf, ev = runs
    r = build_report(ROSTER, prof, inf, ev, reference, CFG)
    written = write_report(r, tmp_path / "reports", tmp_path / "metrics" / "summary.json")
    assert all(p.is_file() for p in written)
    md = (tmp_path / "reports" / "report.md").read_text()
    for name in r.figures:  # embedded by a path relative to report.md, and a real image
        assert f"](plots/{name})" in md
        img = imread(tmp_path / "reports" / "plots" / name)
        assert img.shape[0] > 200 and img.shape[1] > 400 and float(img[..., :3].std()) > 0.01
    csv = (tmp_path / "reports" / "plots" / "latency_vs_batch.csv").read_text().splitlines()
    assert csv[0].split(",") == list(PLOT_CSVS["latency_vs_batch.csv"])
    assert len(csv) - 1 == len(ROSTER) * len(SHAPES)  # one row per model x ok shape
    summary = json.loads((tmp_path / "metrics" / "summary.json").read_text())
    leaves = [v for m in summary["models"].values() for v in m.values()]
    assert all(isinstance(v, (int, float)) for v in leaves)
    assert summary["models"]["neo"]["recommended"] == 1 and summary["frontier_size"] == 2
    assert summary["models"]["neo"]["usd_per_mtok"] == pytest.approx(2.0)
    assert fingerprint_id(FP) in md


def test_dvc_plots_show_renders_html(runs, reference, tmp_path):
    prof, inf, ev = runs
    repo = tmp_path / "repo"
    repo.mkdir()
    write_report(build_report(ROSTER, prof, inf, ev, reference, CFG), repo / "reports",
                 repo / "metrics" / "summary.json")
    (repo / "dvc.yaml").write_text(DVC_PLOTS_YAML)
    dvc = shutil.which("dvc", path=str(Path(sys.executable).parent)) or "/work/main/.venv/bin/dvc"
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    for cmd in (["git", "init", "-q"], [dvc, "init", "-q"], [dvc, "plots", "show", "-o", "html"]):
        subprocess.run(cmd, cwd=repo, env=env, check=True, capture_output=True, timeout=120)
    html = (repo / "html" / "index.html").read_text()
    assert html.count('"$schema"') == 4  # the four vega plots over the CSVs
    assert '"model": "neo"' in html and '"tpot_p50_ms"' in html
    for name in r_png_names():
        assert f"reports_plots_{name}" in html and any((repo / "html" / "static").glob(f"*{name}"))


def r_png_names():
    return ["latency_vs_quality.png", "memory_vs_params.png", "tokps_per_model.png"]
