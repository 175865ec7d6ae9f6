"""The report in deployments: one row per model x backend x precision, accuracy of that same
deployment (or said to be reused), the speed-up line, the llama.cpp types section."""
from __future__ import annotations

import pytest

from llmbench.config import Budget, Cost, Report
from llmbench.report import build_report
from llmbench.results import (EvaluateResult, EvaluateRun, GgufFile, GgufSet, ProfileResult, TaskScore)
from test_report import FP, PROTOCOL, empty, md_rows, stats

DEPS = [({"model": "smol", "backend": "transformers", "precision": "float32", "attention": "sdpa"}, 10.0, 900),
        ({"model": "smol", "backend": "transformers", "precision": "bfloat16", "attention": "sdpa"}, 12.0, 700),
        ({"model": "smol", "backend": "llamacpp", "precision": "Q4_1"}, 48.0, 300),
        ({"model": "smol", "backend": "llamacpp", "precision": "Q8_0"}, None, None)]


def _row(dep, tps, rss, batch=1):
    if tps is None:
        return {"deployment": dep, "batch_size": batch, "input_len": 32, "output_len": 16, "status": "failed",
                "reason": "UserError: context does not fit", "iterations": 0,
                **{k: empty() for k in ("ttft_s", "tpot_s", "itl_s", "e2e_s", "decode_tps", "prefill_tps")},
                "memory": {}}
    return {"deployment": dep, "batch_size": batch, "input_len": 32, "output_len": 16, "status": "ok",
            "reason": None, "iterations": 3, "load_s": 0.5, "ttft_s": stats(0.1), "tpot_s": stats(batch / tps),
            "itl_s": stats(1 / tps), "e2e_s": stats(0.1 + 15 / tps), "decode_tps": stats(tps),
            "prefill_tps": stats(320.0),
            "memory": {"rss_baseline_mib": 200.0, "rss_peak_mib": rss, "rss_anon_peak_mib": rss * 0.4,
                       "rss_file_peak_mib": rss * 0.6, "weights_mib": 90.0}}


@pytest.fixture
def report():
    rows = [_row(d, t, r) for d, t, r in DEPS] + [_row(DEPS[0][0], 30.0, 950, batch=4)]
    info = {"name": "smol", "source": "gguf-package", "weights": "pretrained", "n_params": 134_515_008,
            "weight_bytes": 1, "dtype": "float32", "architecture": "X", "tokenizer": "gguf"}
    prof = ProfileResult(model="smol", weights="pretrained", status="ok", fingerprint={**FP, "llama_cpp": "b"},
                         info=info, copy_gbps=5.0, results=rows,
                         headline={"deployment": DEPS[0][0], "batch_size": 1, "input_len": 32},
                         protocol={**PROTOCOL, "batch_sizes": [1, 4], "input_lens": [32]})

    def task(acc_norm):
        return {"llmbench_smoke": TaskScore(status="ok", acc=acc_norm, acc_stderr=0.03, acc_norm=acc_norm,
                                            acc_norm_stderr=0.03, n=225, num_fewshot=0, limit=None, suite="smoke")}
    ev = EvaluateResult(model="smol", weights="pretrained", status="ok", lm_eval_version="0.4.13", runs=[
        EvaluateRun(deployment={"model": "smol", "precision": "float32"}, status="ok",
                    prompt_format="chat template", tasks=task(0.60)),
        EvaluateRun(deployment={"model": "smol", "backend": "llamacpp", "precision": "Q4_1"}, status="ok",
                    prompt_format="chat template", tasks=task(0.59))])
    gguf = GgufSet(model="smol", weights="pretrained", status="ok", converter="c", tokenizer="t", files=[
        GgufFile(status="ok", precision="Q4_1", type_name="Q4_1", origin="shipped", path="x.gguf", file_type="Q4_1",
                 bits_per_weight=5.74, tensor_bytes=1, file_bytes=98 * 2**20),
        GgufFile(status="ok", precision="Q8_0", type_name="Q8_0", origin="converted", path="q8.gguf",
                 file_type="Q8_0", bits_per_weight=8.5, tensor_bytes=1, file_bytes=140 * 2**20)])
    return build_report(["smol"], {"smol": prof}, {}, {"smol": ev}, None, cost=Cost(usd_per_hour=0.36),
                        budget=Budget(max_rss_mib=500), report=Report(quality="llmbench_smoke"), references={},
                        gguf={"smol": gguf})


def test_one_row_per_deployment_at_batch_1_with_its_own_memory_split(report):
    t = report.table
    assert list(t.index) == ["smol.transformers.float32.sdpa", "smol.transformers.bfloat16.sdpa",
                             "smol.llamacpp.Q4_1", "smol.llamacpp.Q8_0"]
    assert list(t["batch_size"][:3]) == [1, 1, 1]  # batch 4 is in the plots, not the row
    assert t.loc["smol.llamacpp.Q4_1", "rss_file_peak_mib"] == pytest.approx(180)
    assert t.loc["smol.llamacpp.Q4_1", "bits_per_weight"] == 5.74
    assert t.loc["smol.llamacpp.Q8_0", "status"] == "failed" and "does not fit" in t.loc["smol.llamacpp.Q8_0", "reason"]
    assert set(report.summary.rows) == set(t.index)
    assert report.summary.rows["smol.llamacpp.Q4_1"].deployment.attention is None


def test_accuracy_belongs_to_the_deployment_and_bf16_says_it_reuses_fp32(report):
    t = report.table
    assert t.loc["smol.llamacpp.Q4_1", "quality"] == pytest.approx(59.0)
    assert t.loc["smol.transformers.bfloat16.sdpa", "quality"] == pytest.approx(60.0)
    text = t.loc["smol.transformers.bfloat16.sdpa", "live_llmbench_smoke_text"]
    assert "reuses the float32 score" in text and "chat template" in text
    assert "reuses" not in t.loc["smol.llamacpp.Q4_1", "live_llmbench_smoke_text"]


def test_frontier_recommendation_and_speedup_are_over_deployments(report):
    assert report.recommendation.model == "smol.llamacpp.Q4_1"  # the only one within 500 MiB
    assert "smol.llamacpp.Q4_1" in report.frontier
    md = report.markdown
    assert "fastest is `smol.llamacpp.Q4_1`: 4.0x decode vs transformers bf16, -1.0 quality points" in md
    types = [r for r in md_rows(md, "smol") if r[1:3] in (["Q4_1", "shipped"], ["Q8_0", "converted"])]
    assert [r[1:5] for r in types] == [["Q4_1", "shipped", "5.74", "98"], ["Q8_0", "converted", "8.50", "140"]]
    assert types[0][5] == "48.0" and types[1][5] == "—"  # decode tok/s; Q8_0 did not run
    assert "140 MiB of converted GGUFs (Q8_0)" in md
    assert "dvc gc -w" in md
