"""Slow, end to end, in a copy of the repo with a tiny roster: tiny-gpt2 plus a model that cannot
load. Every process (make, dvc, each stage) runs with tests/netguard on PYTHONPATH, so any
socket to a non-loopback address fails: the pipeline is offline for real.

1. `make run` writes the report with the broken model as a failed row and exits non-zero.
2. kill -9 of a stage at seeded points, then `dvc repro` (with and without the run-cache) gives
   complete outputs that validate against docs/schema."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest
import yaml

from test_e2e import copy_repo, merge

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]
REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SMALL = {
    "roster": ["tiny-gpt2", "broken"], "ci_roster": ["tiny-gpt2"], "references": {}, "endpoints": {},
    "prompts": {"n": 2, "buckets": [16]},
    "profile": {"batch_sizes": [1], "input_lens": [16], "output_len": 4, "warmup": 0,
                "min_iterations": 2, "min_duration_s": 0.0, "dtypes": ["float32"],
                "attentions": ["sdpa"], "bandwidth_mib": 0},
}
SCHEMAS = {"summary.json": "summary",
           **{f"{k}/tiny-gpt2.{b}.json": k for k in ("profile", "infer", "evaluate")
              for b in ("transformers", "llamacpp")}}


def sh(cmd, cwd, env, ok=True, timeout=900):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                          shell=isinstance(cmd, str))
    if ok:
        assert proc.returncode == 0, f"{cmd}: rc {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("reliability")
    work = copy_repo(REPO, root / "repo")
    broken = root / "broken-model"  # loads nowhere: transformers knows no such model type
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "no-such-arch", "n_layer": 1}))
    params = merge(yaml.safe_load((work / "params.yaml").read_text()), SMALL)
    params["models"]["broken"] = {"source": "local", "path": str(broken)}
    params["endpoints"] = {}  # serving is tested elsewhere
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_", "DVC_", "HF_", "TRANSFORMERS_")) and k != "LLMBENCH_PARAMS"}
    env.update(PATH=f"{BIN}:{env['PATH']}", PYTHONPATH=str(REPO / "tests" / "netguard"),
               OMP_WAIT_POLICY="PASSIVE")
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"]):
        sh(cmd, work, env)
    return work, env


def _valid(work: Path) -> None:
    for rel, name in SCHEMAS.items():
        schema = json.loads((REPO / "docs/schema" / f"{name}.schema.json").read_text())
        jsonschema.validate(json.loads((work / "metrics" / rel).read_text()), schema)
    assert "tiny-gpt2" in (work / "reports/report.md").read_text()
    for folder in ("metrics", "reports", "data"):  # no half-written file left behind
        assert not list((work / folder).glob("**/.*.tmp")), folder


def test_netguard_blocks_subprocess_sockets(work):
    work, env = work
    proc = sh([sys.executable, "-c", "import socket; socket.create_connection(('1.1.1.1', 80), 2)"],
              work, env, ok=False)
    assert proc.returncode != 0 and "netguard" in proc.stderr


def test_make_run_with_a_broken_model(work):
    work, env = work
    start = time.monotonic()
    proc = sh(f"make -o venv -o {BIN.parent}/.installed VENV={BIN.parent} run", work, env, ok=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    assert "error: 1 failure(s) (broken)" in proc.stderr, out[-3000:]
    summary = json.loads((work / "metrics/summary.json").read_text())
    rows = [(r["deployment"]["model"] if r.get("deployment") else k.split(".")[0], r)
            for k, r in summary["rows"].items()]
    broken = [r for m, r in rows if m == "broken"]
    assert broken and all(r["status"] == "failed" and "failed" in r["reason"] for r in broken), rows
    assert any(r["status"] == "ok" for m, r in rows if m == "tiny-gpt2"), rows
    assert "**Failed:** broken" in (work / "reports/report.md").read_text()
    recs = {p.name: json.loads(p.read_text()) for p in (work / "metrics/failures").glob("*.json")}
    assert recs and all(r["model"] == "broken" for r in recs.values()), recs
    assert all(r["exit_code"] in (2, 3) for r in recs.values())
    _valid(work)
    # the failed stages are retried (never cached), the rest is not rerun
    again = sh(["dvc", "repro", "--ignore-errors"], work, env)
    ran = {line.split("'")[1] for line in again.stdout.splitlines() if line.startswith("Running stage")}
    assert any("broken" in s for s in ran) and not any("tiny-gpt2" in s for s in ran), ran
    print(f"make run with a broken model: {time.monotonic() - start:.0f} s")


def _children(pid: int) -> list[int]:
    import psutil

    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _stage_pid(dvc: subprocess.Popen, module: str, deadline: float) -> int | None:
    import psutil

    while time.monotonic() < deadline and dvc.poll() is None:
        for pid in _children(dvc.pid):
            try:
                if module in " ".join(psutil.Process(pid).cmdline()):
                    return pid
            except psutil.NoSuchProcess:
                pass
        time.sleep(0.05)
    return None


@pytest.mark.parametrize("stage,module", [("profile-transformers@tiny-gpt2", "stages.profile"),
                                          ("aggregate", "stages.aggregate")])
def test_kill_9_then_repro_gives_complete_outputs(work, stage, module):
    work, env = work
    rng = random.Random(f"kill-{stage}")  # seeded points: reproducible failures
    for run_cache in (True, False):
        delay = rng.uniform(0.2, 4.0)
        dvc = subprocess.Popen(["dvc", "repro", "-f", "-s", stage], cwd=work, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        pid = _stage_pid(dvc, module, time.monotonic() + 120)
        assert pid is not None, dvc.communicate()[0]
        time.sleep(delay)
        try:
            os.kill(pid, signal.SIGKILL)
            killed = True
        except ProcessLookupError:
            killed = False  # it finished first: still a valid point
        dvc.communicate(timeout=300)
        cmd = ["dvc", "repro", "--ignore-errors"] + ([] if run_cache else ["--no-run-cache"])
        sh(cmd, work, env)
        _valid(work)
        print(f"{stage}: kill -9 after {delay:.2f} s (killed={killed}, run_cache={run_cache}): valid")
