"""The aggregate report: joins, labels, files, PNGs and `dvc plots show` over the CSVs."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from matplotlib.image import imread

from llmbench.config import Budget, Cost, Dataset, Report
from llmbench.errors import UserError
from llmbench.reference import fetch, load_reference
from llmbench.report import PLOT_CSVS, build_report, write_report
from llmbench.results import (Deployment, EvaluateResult, EvaluateRun, Fingerprint, ModelFacts, ProfileResult, Summary,
                              TaskScore, read_result)
from llmbench.spec import METRICS
from llmbench.tradeoff import fingerprint_id

FP = {"cpu": "x86_64", "cores": 2, "torch_threads": 2, "ram_gib": 24.0, "os": "Linux",
      "python": "3.11", "torch": "2.13.0", "transformers": "5.24", "device": "cpu"}
SHAPES = [(b, n) for b in (1, 4) for n in (32, 128)]
PROTOCOL = {"preset": "cpu-small", "warmup": 1, "min_iterations": 3, "min_duration_s": 1.0, "max_iterations": 200,
            "threads": None, "device": "cpu", "bandwidth_mib": 256, "large_model_params": None,
            "batch_sizes": [1, 4], "input_lens": [32, 128], "output_len": 16, "dtypes": ["float32", "bfloat16"],
            "attentions": ["sdpa"], "grid_reduced": False, "notes": [], "omp_wait_policy": "PASSIVE",
            "loadavg_1m": [0.1, 0.2]}


def key(model):
    return f"{model}.transformers.float32.sdpa"  # the headline deployment of profile() below


def bf16(model):
    return f"{model}.transformers.bfloat16.sdpa"  # its other deployment (unsupported below)


def stats(v):
    return {"p50": v, "p90": v, "p95": v, "p99": v, "mean": v, "std": 0.0, "cv": 0.0, "n": 3,
            "values": [v] * 3}


def empty():
    return {**{k: None for k in ("p50", "p90", "p95", "p99", "mean", "std", "cv")}, "n": 0, "values": []}


def profile(model, weights, params, ttft, tpot, rss, fp=FP):
    dep = {"model": model, "precision": "float32", "attention": "sdpa"}
    res = [{"deployment": dep, "batch_size": b, "input_len": n, "output_len": 16, "load_s": 1.5,
            "status": "ok", "reason": None, "iterations": 3, "ttft_s": stats(ttft * n / 32),
            "tpot_s": stats(tpot), "itl_s": stats(tpot), "e2e_s": stats(ttft + 15 * tpot),
            "decode_tps": stats(b / tpot), "prefill_tps": stats(b * n / ttft),
            "memory": {"rss_baseline_mib": 300.0, "rss_peak_mib": rss + b, "weights_mib": params / 2**18,
                       "kv_cache_mib": 1.0, "cuda_max_allocated_mib": None, "cuda_max_reserved_mib": None},
            "roofline": None} for b, n in SHAPES]
    res.append({"deployment": {**dep, "precision": "bfloat16"}, "batch_size": 1, "input_len": 32,
                "output_len": 16, "status": "unsupported", "reason": "no bf16", "iterations": 0,
                **{k: empty() for k in ("ttft_s", "tpot_s", "itl_s", "e2e_s", "decode_tps", "prefill_tps")},
                "memory": {}})
    info = {"name": model, "source": "random", "weights": weights, "n_params": params,
            "weight_bytes": params * 4, "dtype": "float32", "architecture": "X", "tokenizer": "gpt2"}
    return ProfileResult(model=model, weights=weights, status="ok", fingerprint=fp, info=info, copy_gbps=5.0,
                         results=res, headline={"deployment": dep, "batch_size": 1, "input_len": 32},
                         protocol=PROTOCOL)


def evaluation(model, weights, acc=None):
    dep = Deployment(model=model, precision="float32")
    if acc is None:
        return EvaluateResult(model=model, weights=weights, status="skipped",
                              reason="random weights", lm_eval_version="0.4.9")
    task = TaskScore(status="ok", acc=acc, acc_stderr=0.02, acc_norm=None, acc_norm_stderr=None, n=40,
                     num_fewshot=0, limit=40, suite="smoke")
    return EvaluateResult(model=model, weights=weights, status="ok", lm_eval_version="0.4.9",
                          runs=[EvaluateRun(deployment=dep, status="ok", prompt_format="plain",
                                            tasks={"llmbench_smoke": task})])


class Inf:  # what the report reads of an InferResult
    @staticmethod
    def run(dep):
        return type("Run", (), {"gen_tps": 33.0})()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    fetch(Dataset(), out)
    return load_reference(out)


@pytest.fixture
def runs():
    prof = {"neo": profile("neo", "random", 125_198_592, 0.03, 0.020, 900),
            "llama": profile("llama", "random", 1_100_048_384, 0.2, 0.120, 4800),
            "distil": profile("distil", "random", 81_912_576, 0.02, 0.012, 650),
            "smol": profile("smol", "pretrained", 134_515_008, 0.03, 0.025, 1100),
            "stale": profile("stale", "random", 1, 0.1, 0.1, 1)}
    ev = {m: evaluation(m, p.weights) for m, p in prof.items()}
    ev["smol"] = evaluation("smol", "pretrained", acc=0.375)
    return prof, {"smol": Inf()}, ev


# params.references: published-score ids (falcon-rw-1b's belongs to the "stale" model)
REFS = {"neo": "EleutherAI/gpt-neo-125m", "llama": "TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T",
        "distil": "distilgpt2", "smol": "HuggingFaceTB/SmolLM2-135M", "stale": "tiiuae/falcon-rw-1b"}
CFG = {"cost": Cost(usd_per_hour=0.36), "budget": Budget(max_tpot_ms=100),
       "report": Report(quality="reference:average"), "references": REFS}
ROSTER = ["neo", "llama", "distil", "smol"]


def cfg(**report):
    return {**CFG, "report": Report(**{"quality": "reference:average", **report})}


def md_rows(md, first):
    """Cells of the markdown table rows whose first cell is `first`."""
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in md.splitlines()
            if re.match(rf"^\|\s*{re.escape(first)}\s*\|", line)]


def test_table_joins_reference_live_and_measured(runs, reference):
    prof, inf, ev = runs
    r = build_report(ROSTER, prof, inf, ev, reference, **CFG)
    t = r.table
    # falcon-rw-1b has a reference row and a stale profile file, but is not in the roster
    # one row per deployment: the bf16 one is kept, unsupported, with its reason
    assert list(t.index) == [k for m in ROSTER for k in (key(m), bf16(m))] and "stale" not in r.markdown
    assert (t.loc[bf16("neo"), "status"], t.loc[bf16("neo"), "reason"]) == ("unsupported", "no bf16")
    assert "falcon" not in r.markdown
    assert t.loc[key("neo"), "ref_arc"] == 22.95 and t.loc[key("neo"), "ref_protocol"] == "open-llm-leaderboard-v1"
    assert np.isnan(t.loc[key("distil"), "ref_average"])  # no published row -> shown as missing
    distil_rows = md_rows(r.markdown, "distil")
    assert len(distil_rows) == 4  # the measured table and the quality table, 2 deployments each
    assert distil_rows[2][:3] == ["distil", "random", "transformers.float32.sdpa"]
    assert distil_rows[2].count("—") >= 7
    # the table keeps SI units; the markdown shows ms
    assert t.loc[key("neo"), "tpot_s_p50"] == pytest.approx(0.020) and t.loc[key("neo"), "load_s"] == 1.5
    perf_header = next(l for l in r.markdown.splitlines() if l.startswith("| model") and "TPOT" in l)
    cols = [c.strip() for c in perf_header.strip().strip("|").split("|")]
    neo = dict(zip(cols, md_rows(r.markdown, "neo")[0]))
    assert neo[METRICS["tpot_s"].header("p50")] == "20.0" and neo["TTFT p50 ms"] == "30.0"
    assert neo["deployment"] == "transformers.float32.sdpa"
    # cost = usd_per_hour / (decode_tps * 3600) * 1e6 at the headline batch (tps = 1 / tpot)
    assert t.loc[key("neo"), "usd_per_mtok"] == pytest.approx(0.36 / (50.0 * 3600) * 1e6)
    assert t.loc[key("smol"), "live_llmbench_smoke"] == pytest.approx(37.5)
    assert "37.5 ±2.0 (0-shot acc, n=40, limit 40, smoke, plain)" in t.loc[key("smol"), "live_llmbench_smoke_text"]
    assert t.loc[key("neo"), "live_llmbench_smoke_text"] == "skipped (random weights)"
    assert t.loc[key("smol"), "gen_tps"] == 33.0
    md = r.markdown
    assert "reference (published)" in md and "random weights of the real model's shape" in md
    assert "truncated" in md  # the TinyLlama TruthfulQA caveat travels with the number
    # frontier and recommendation rank on the v1 average; smol's card uses another protocol
    assert r.quality == "ref_average" and r.frontier == [key("neo"), key("llama")]
    assert r.recommendation.model == key("neo") and "TPOT p50 ms 120 > max_tpot_ms 100" in md


def test_reference_ids_come_from_params_references(runs, reference):
    prof, inf, ev = runs
    r = build_report(ROSTER, prof, inf, ev, reference, **{**CFG, "references": {**REFS, "neo": "distilgpt2"}})
    assert np.isnan(r.table.loc[key("neo"), "ref_arc"])  # distilgpt2 has no published row
    assert r.table.loc[key("neo"), "reference_id"] == "distilgpt2"


def test_missing_inputs_do_not_crash(runs):
    prof, _, _ = runs
    r = build_report(["neo", "ghost"], {"neo": prof["neo"]}, {}, {}, None, **CFG)
    assert list(r.table.index) == [key("neo"), bf16("neo"), "ghost"]  # an unprofiled model has no deployment
    assert np.isnan(r.table.loc["ghost", "tpot_s_p50"]) and r.frontier == []
    assert r.table.loc["ghost", "status"] == "skipped" and "not profiled" in r.table.loc["ghost", "reason"]
    assert "not profiled" in r.recommendation.excluded["ghost"]
    assert r.recommendation.model is None and "no frontier" in r.markdown
    assert r.summary.rows["ghost"].deployment is None and r.summary.rows["ghost"].status == "skipped"


def test_live_quality_never_scores_random_weights(runs, reference):
    prof, inf, ev = runs
    ev["neo"] = evaluation("neo", "random", acc=0.9)  # a score on random weights is not accuracy
    r = build_report(ROSTER, prof, inf, ev, reference, **cfg(quality="llmbench_smoke"))
    assert r.quality == "live_llmbench_smoke" and r.frontier == [key("smol")]
    assert r.recommendation.model == key("smol")
    assert r.table.loc[r.table["weights"] == "random", "quality"].isna().all()
    assert r.table.loc[key("neo"), "live_llmbench_smoke_text"] == "skipped (random weights)"
    assert "90.0" not in r.markdown


def test_quality_default_is_configs(runs, reference):
    # the one default lives in config.Report; build_report has none of its own (report is required)
    prof, inf, ev = runs
    r = build_report(ROSTER, prof, inf, ev, reference, **{**CFG, "report": Report()})
    assert r.quality == "live_" + Report().quality == "live_llmbench_smoke"


def test_latency_param_picks_the_front_latency(runs, reference):
    prof, inf, ev = runs
    by_ttft = build_report(ROSTER, prof, inf, ev, reference, **cfg(latency="ttft_s"))
    assert "latency: TTFT p50 ms" in by_ttft.markdown
    # on TTFT, distil (20 ms) is not dominated by neo (30 ms); on TPOT it is not ranked (no score)
    assert by_ttft.frontier == [key("neo"), key("llama")]


def test_fingerprints_are_not_mixed_by_default(runs, reference):
    prof, inf, ev = runs
    prof["llama"] = prof["llama"].model_copy(update={"fingerprint": Fingerprint(**{**FP, "cpu": "arm64"})})
    r = build_report(ROSTER, prof, inf, ev, reference, **CFG)
    assert "Refusing to compare across environments" in r.markdown
    assert not r.table.loc[key("llama"), "compared"] and r.frontier == [key("neo")]
    assert "another environment" in r.recommendation.excluded[key("llama")]
    mixed = build_report(ROSTER, prof, inf, ev, reference, **cfg(mix_fingerprints=True))
    assert mixed.table["compared"].sum() == 4 and key("llama") in mixed.frontier


@pytest.mark.parametrize("quality", ["reference:piqa_typo", "other:x"])
def test_bad_quality_param(runs, reference, quality):
    prof, inf, ev = runs
    with pytest.raises(UserError, match="report.quality"):
        build_report(ROSTER, prof, inf, ev, reference, **cfg(quality=quality))


def test_written_files_pngs_csvs_summary(runs, reference, tmp_path):
    prof, inf, ev = runs
    r = build_report(ROSTER, prof, inf, ev, reference, **CFG)
    written = write_report(r, tmp_path / "reports", tmp_path / "metrics" / "summary.json")
    assert all(p.is_file() for p in written)
    md = (tmp_path / "reports" / "report.md").read_text()
    for name in r.figures:  # embedded by a path relative to report.md, and a real image
        assert f"](plots/{name})" in md
        img = imread(tmp_path / "reports" / "plots" / name)
        assert img.shape[0] > 200 and img.shape[1] > 400 and float(img[..., :3].std()) > 0.01
    csv = (tmp_path / "reports" / "plots" / "latency_vs_batch.csv").read_text().splitlines()
    header = csv[0].split(",")
    assert header == [METRICS[c[:-4]].column("p50") if c.endswith("_p50") else c
                      for c in PLOT_CSVS["latency_vs_batch.csv"]]
    assert "tpot_p50_ms" in header and "tpot_s_p50" not in header  # shown in ms
    assert len(csv) - 1 == len(ROSTER) * len(SHAPES)  # one row per model x ok shape
    neo = dict(zip(header, next(l for l in csv[1:] if l.startswith("neo,")).split(",")))
    assert float(neo["tpot_p50_ms"]) == pytest.approx(20.0)
    summary = read_result(tmp_path / "metrics" / "summary.json", Summary)
    assert summary.rows[key("neo")].recommended == 1 and summary.frontier_size == 2
    assert summary.rows[key("neo")].usd_per_mtok == pytest.approx(2.0)
    assert summary.rows[key("neo")].tpot_s_p50 == pytest.approx(0.020)  # files keep SI units
    assert summary.rows[key("smol")].live == {"llmbench_smoke": pytest.approx(37.5)}
    assert fingerprint_id(next(iter(prof.values())).fingerprint.model_dump()) in md  # the env column


def _plots_block(repo) -> list:
    """dvc.yaml's plots block with ${paths.x} resolved from params.yaml, as DVC does."""
    from llmbench.config import load_params

    paths = load_params(repo / "params.yaml").paths
    text = re.sub(r"\$\{paths\.(\w+)\}", lambda m: getattr(paths, m.group(1)), (repo / "dvc.yaml").read_text())
    return yaml.safe_load(text)["plots"]


def test_dvc_yaml_plots_name_columns_the_report_writes(repo, runs, reference, tmp_path):
    prof, inf, ev = runs
    write_report(build_report(ROSTER, prof, inf, ev, reference, **CFG), tmp_path / "reports",
                 tmp_path / "summary.json")
    for entry in _plots_block(repo):
        if isinstance(entry, str):
            assert entry.startswith("reports/plots/") and (tmp_path / entry).is_file(), entry
            continue
        (spec,) = entry.values()
        (csv_path, y), = spec["y"].items()
        header = (tmp_path / csv_path).read_text().splitlines()[0].split(",")
        assert spec["x"] in header and y in header, (entry, header)


def test_dvc_plots_show_renders_html(repo, runs, reference, tmp_path):
    prof, inf, ev = runs
    work = tmp_path / "repo"
    work.mkdir()
    write_report(build_report(ROSTER, prof, inf, ev, reference, **CFG), work / "reports",
                 work / "metrics" / "summary.json")
    # the repository's own plots block, the one place it is written
    (work / "dvc.yaml").write_text(yaml.safe_dump({"plots": _plots_block(repo)}))
    dvc = shutil.which("dvc", path=str(Path(sys.executable).parent)) or "/work/main/.venv/bin/dvc"
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    for cmd in (["git", "init", "-q"], [dvc, "init", "-q"], [dvc, "plots", "show", "-o", "html"]):
        subprocess.run(cmd, cwd=work, env=env, check=True, capture_output=True, timeout=120)
    html = (work / "html" / "index.html").read_text()
    assert html.count('"$schema"') == 4  # the four vega plots over the CSVs
    assert '"model": "neo"' in html and '"tpot_p50_ms"' in html
    for name in r_png_names():
        assert f"reports_plots_{name}" in html and any((work / "html" / "static").glob(f"*{name}"))


def r_png_names():
    return ["latency_vs_quality.png", "memory_vs_params.png", "tokps_per_model.png"]
