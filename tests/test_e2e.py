"""End to end: a copy of this repo, real `dvc repro` on a small roster, then the cache's promises."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from llmbench.config import load_params
from llmbench.results import EvaluateResult, InferResult, ProfileResult, Summary, read_result

# the first test also builds the pipeline fixture (a full `dvc repro`): well past the default
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]
BIN = Path(sys.executable).parent
BACKENDS = ("transformers", "llamacpp")
SMALL = {
    "roster": ["tiny-gpt2", "smollm2"],
    "prompts": {"n": 4, "buckets": [16, 32]},
    "infer": {"batch_size": 4, "max_new_tokens": 8},
    "profile": {"batch_sizes": [1], "input_lens": [16], "output_len": 4, "warmup": 0,
                "min_iterations": 2, "min_duration_s": 0.0, "dtypes": ["float32"],
                "attentions": ["sdpa"], "bandwidth_mib": 16},
    "evaluate": {"limit": 8, "batch_size": 8},
}


GENERATED = ("data/", "metrics/", "reports/", "logs/", "dvc.lock", "mlflow.db")


def copy_repo(src: Path, dst: Path) -> Path:
    """The repo's source files (tracked or new), without outputs of earlier local runs."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                           cwd=src, capture_output=True, text=True, check=True).stdout.split("\0")
    for rel in filter(None, files):
        if (src / rel).is_file() and not rel.startswith(GENERATED):
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / rel, dst / rel)
    return dst


def run(cmd: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def ran(proc) -> set[str]:
    # env is always_changed: it runs every time, and its unchanged output reruns nothing
    return {line.split("'")[1] for line in proc.stdout.splitlines()
            if line.startswith("Running stage")} - {"env"}


def per_backend(model: str, *kinds: str, backends=None) -> list[str]:
    return [f"{k}-{b}@{model}" for k in kinds for b in backends or BACKENDS]


def merge_files(kind, files):
    from llmbench.combine import merge as combine

    return combine([read_result(f, kind) for f in files])


def merge(params: dict, over: dict) -> dict:
    for k, v in over.items():
        params[k] = merge(params.get(k) or {}, v) if isinstance(v, dict) else v
    return params


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, repo):
    work = copy_repo(repo, tmp_path_factory.mktemp("e2e") / "repo")
    params = merge(yaml.safe_load((work / "params.yaml").read_text()), SMALL)
    # serve@ has coarse deps (every prepared model: README "Serving") and its own e2e test
    # (test_serve_stage.py); here it would blur which stages one model's edit reruns
    params["endpoints"] = {}
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{BIN}:{env['PATH']}"
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"]):
        run(cmd, work, env)
    first = run(["dvc", "repro"], work, env)
    return work, env, first


def test_every_output_exists_and_is_valid(pipeline):
    work, _, first = pipeline
    assert {"fetch-dataset", "generate-prompts", "aggregate", "prepare@smollm2", "prepare@tiny-gpt2",
            *per_backend("smollm2", "infer", "profile", "evaluate"), *per_backend("tiny-gpt2", "profile")
            } <= ran(first)
    paths = load_params(work / "params.yaml").paths
    at = lambda p: work / p  # noqa: E731 - paths are relative to the repo copy
    prompts = [json.loads(x) for x in at(paths.prompts).read_text().splitlines()]
    assert len(prompts) == 4
    infer = merge_files(InferResult, [at(paths.infer_json("smollm2", b)) for b in BACKENDS])
    assert infer.status == "ok" and infer.weights == "pretrained"
    # a gguf-package model runs on both runtimes: its dequantized weights and the shipped GGUF
    assert {r.deployment.backend for r in infer.runs if r.status == "ok"} == {"transformers", "llamacpp"}
    assert all(r.generated_tokens > 0 for r in infer.runs if r.status == "ok")
    outputs = [json.loads(x) for b in BACKENDS
               for x in at(paths.infer_jsonl("smollm2", b)).read_text().splitlines()]
    by_dep: dict[str, list] = {}
    for o in outputs:
        by_dep.setdefault(json.dumps(o["deployment"], sort_keys=True), []).append(o)
    assert len(by_dep) == len([r for r in infer.runs if r.status == "ok"])
    for rows in by_dep.values():  # every deployment answered every prompt, in order
        assert [o["prompt_id"] for o in rows] == [p["id"] for p in prompts]
    assert all(0 < o["n_out"] <= 8 and o["ttft_s"] <= o["e2e_s"] for o in outputs)
    for b in BACKENDS:
        skipped = read_result(at(paths.infer_json("tiny-gpt2", b)), InferResult)
        assert skipped.status == "skipped" and "random" in skipped.reason
        for name in ("smollm2", "tiny-gpt2"):
            head = read_result(at(paths.profile_json(name, b)), ProfileResult).headline_row()
            assert head.decode_tps.p50 > 0 and head.memory.rss_peak_mib > 0 and head.deployment.backend == b
        ev = read_result(at(paths.evaluate_json("tiny-gpt2", b)), EvaluateResult)
        assert ev.status == "skipped"
    ev = merge_files(EvaluateResult, [at(paths.evaluate_json("smollm2", b)) for b in BACKENDS])
    assert ev.status == "ok"
    scored = [r for r in ev.runs if r.status == "ok"]
    assert {r.deployment.backend for r in scored} == {"transformers", "llamacpp"}
    assert all(r.tasks["llmbench_smoke"].n == 8 for r in scored)
    assert read_result(at(paths.summary_json), Summary).rows
    report = at(paths.report_md).read_text()
    assert "smollm2" in report and "tiny-gpt2" in report and "random" in report


def test_mlflow_one_run_per_stage_and_model(pipeline):
    work, _, _ = pipeline
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow.db'}")
    exp = client.get_experiment_by_name("llmbench")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    names = sorted(r.info.run_name for r in runs)
    expected = sorted(["fetch-dataset", "generate-prompts", "aggregate"] +
                      [f"{s}@{m}" for s in ("prepare", "quantize") for m in ("smollm2", "tiny-gpt2")] +
                      [n for m in ("smollm2", "tiny-gpt2") for n in per_backend(m, "infer", "profile", "evaluate")])
    assert names == expected
    commits = {r.data.tags["git_commit"] for r in runs}
    hashes = {r.data.tags["params_hash"] for r in runs}
    assert len(commits) == 1 and len(hashes) == 1 and "none" not in commits
    for r in runs:
        assert r.data.tags["stage"] == r.info.run_name.split("@")[0]
    prof = next(r for r in runs if r.info.run_name == "profile-llamacpp@smollm2")
    assert "fingerprint.cpu" in prof.data.tags and prof.data.tags["llmbench.weights"] == "pretrained"


def test_second_repro_is_a_noop_a_reference_fix_reruns_only_aggregate(pipeline):
    work, env, _ = pipeline
    again = run(["dvc", "repro"], work, env)
    assert ran(again) == set()
    params = yaml.safe_load((work / "params.yaml").read_text())
    # a report-only fact: the published-score id lives in `references`, which only aggregate reads
    params["references"]["tiny-gpt2"] = "sshleifer/tiny-gpt2-renamed"
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert ran(run(["dvc", "repro"], work, env)) == {"aggregate"}
    # a measured fact: one model's spec reruns that model's stages (and the report), nothing else
    params["models"]["tiny-gpt2"]["chat"] = False
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    reran = ran(run(["dvc", "repro"], work, env))
    # quantize@tiny-gpt2 reruns only if prepare's output changed; nothing of smollm2 reruns
    measured = set(per_backend("tiny-gpt2", "infer", "profile", "evaluate"))
    assert {"prepare@tiny-gpt2", *measured, "aggregate"} <= reran <= {
        "prepare@tiny-gpt2", "quantize@tiny-gpt2", *measured, "aggregate"}


def test_one_backends_settings_rerun_only_its_stages(pipeline):
    work, env, _ = pipeline
    assert ran(run(["dvc", "repro"], work, env)) == set()
    params = yaml.safe_load((work / "params.yaml").read_text())
    # a llamacpp runtime setting: every llamacpp stage, no transformers stage, no quantize
    params["backends"]["llamacpp"]["threads"] = 1
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    llama = {n for m in ("smollm2", "tiny-gpt2") for n in per_backend(m, "infer", "profile", "evaluate",
                                                                       backends=("llamacpp",))}
    assert ran(run(["dvc", "repro"], work, env)) == llama | {"aggregate"}
    # the quantization list: quantize of the model that converts, then what reads its GGUFs;
    # smollm2's shipped GGUF is not re-quantized, so nothing of smollm2 reruns
    params["backends"]["llamacpp"]["quantizations"] = ["Q8_0"]
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    reran = ran(run(["dvc", "repro"], work, env))
    assert {"quantize@tiny-gpt2", "profile-llamacpp@tiny-gpt2", "aggregate"} <= reran
    assert reran <= {f"quantize@{m}" for m in ("smollm2", "tiny-gpt2")} | llama | {"aggregate"}
    assert not any(n.startswith(("infer-llamacpp@smollm2", "profile-llamacpp@smollm2",
                                 "evaluate-llamacpp@smollm2")) for n in reran)
    prof = read_result(work / load_params(work / "params.yaml").paths.profile_json("tiny-gpt2", "llamacpp"),
                       ProfileResult)
    assert {r.deployment.precision for r in prof.results} == {"Q8_0"}
    # a transformers setting: its stages only
    params["backends"]["transformers"]["enabled"] = False
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    hf = {n for m in ("smollm2", "tiny-gpt2") for n in per_backend(m, "infer", "profile", "evaluate",
                                                                    backends=("transformers",))}
    assert ran(run(["dvc", "repro"], work, env)) == hf | {"aggregate"}
    off = read_result(work / load_params(work / "params.yaml").paths.profile_json("smollm2", "transformers"),
                      ProfileResult)
    assert off.status == "skipped" and "backends.transformers.enabled" in off.reason
