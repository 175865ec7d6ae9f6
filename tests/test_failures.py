"""Failure isolation in cli.run_stage and llmbench.failures: a failing stage prints one line
(the traceback goes to the log file), records why outside its outputs, exits 2 (user error) or
3 (any other failure); a success clears the record; a record only counts while the stage's
output is absent; the report shows the failed model; `failures check` gates on it."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from llmbench import cli, failures
from llmbench.config import load_params
from llmbench.errors import UserError
from llmbench.report import build_report

REPO = Path(__file__).resolve().parents[1]
MODEL = "tiny-gpt2"


@pytest.fixture
def repo(tmp_path, monkeypatch):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["roster"] = [MODEL, "distilgpt2"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LLMBENCH_PARAMS", raising=False)
    # the stage-start check is tested in test_check.py; here: what happens after it
    monkeypatch.setattr("llmbench.check.preflight", lambda *a: None)
    return tmp_path


PER_BACKEND = ("infer", "profile", "evaluate")


def _stage(stage, body, monkeypatch, model=MODEL, backend="llamacpp"):
    per_backend = stage in PER_BACKEND
    argv = [model, *([backend] if per_backend else [])] if model else []
    monkeypatch.setattr(sys, "argv", ["stage", *argv])
    try:
        cli.run_stage(stage, body, per_model=model is not None, per_backend=per_backend)
    except SystemExit as exc:
        return exc.code
    return 0


def _record(root, stage, model=MODEL):
    return json.loads((root / f"metrics/failures/{stage}@{model}.json").read_text())


def test_crash_is_one_line_exit_3_and_a_record(repo, monkeypatch, capsys):
    def body(params, name, backend):
        raise RuntimeError("boom at https://alice:hunter22@example.org/x\nsecond line")
    assert _stage("infer", body, monkeypatch) == failures.EXIT_MODEL
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error")]
    assert errors == ["error: infer-llamacpp@tiny-gpt2: boom at https://alice:***@example.org/x second line"]
    assert "Traceback" not in err and "hunter22" not in err
    rec = _record(repo, "infer-llamacpp")
    assert (rec["stage"], rec["model"], rec["phase"], rec["kind"], rec["exit_code"]) == \
        ("infer-llamacpp", MODEL, "run", "RuntimeError", 3)
    assert "hunter22" not in rec["reason"] and "\n" not in rec["reason"]
    log = (repo / "logs" / "infer-llamacpp@tiny-gpt2.jsonl").read_text()
    assert "Traceback" in log and "body" in log and "hunter22" not in log  # the log has it all
    assert oct((repo / "metrics/failures/infer-llamacpp@tiny-gpt2.json").stat().st_mode & 0o777) == "0o644"


def test_a_backend_argument_that_is_not_a_backend_is_one_line(repo, monkeypatch, capsys):
    assert _stage("profile", lambda *a: None, monkeypatch, backend="onnx") == failures.EXIT_USER
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: profile-onnx@tiny-gpt2: unknown backend 'onnx' (known: transformers, llamacpp)"]
    assert not (repo / "metrics/failures").exists()  # a typo on the command line is no model failure


def test_user_error_exits_2_and_success_clears_the_record(repo, monkeypatch, capsys):
    def bad(params, name, backend):
        raise UserError(f"params.yaml: models.{name}: broken")
    assert _stage("profile", bad, monkeypatch) == failures.EXIT_USER
    assert _record(repo, "profile-llamacpp")["kind"] == "user-error"
    # the other backend's stage is its own: its success does not clear this record
    assert _stage("profile", lambda *a: None, monkeypatch, backend="transformers") == 0
    assert (repo / "metrics/failures/profile-llamacpp@tiny-gpt2.json").exists()
    assert _stage("profile", lambda *a: None, monkeypatch) == 0
    assert not (repo / "metrics/failures/profile-llamacpp@tiny-gpt2.json").exists()


def test_phase_comes_from_the_traceback(repo, monkeypatch):
    from llmbench.models import load

    def body(params, name, backend):
        load(params.paths.prepared(name))  # not prepared: the manifest is missing
    assert _stage("profile", body, monkeypatch) == failures.EXIT_USER
    assert _record(repo, "profile-llamacpp")["phase"] == "load"


def test_shared_stage_failure_is_recorded_and_never_allowed(repo, monkeypatch, capsys):
    def body(params):
        raise KeyError("reindex")
    assert _stage("aggregate", body, monkeypatch, model=None) == failures.EXIT_MODEL
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    raw["failures"] = {"allow": True}
    (repo / "params.yaml").write_text(yaml.safe_dump(raw))
    assert failures.main(["check"]) == failures.EXIT_MODEL
    assert "shared stage" in capsys.readouterr().err
    # a later successful aggregate's output is newer than the record: stale
    time.sleep(0.01)
    (repo / "metrics").mkdir(exist_ok=True)
    (repo / "metrics/summary.json").write_text("{}")
    os.utime(repo / "metrics/summary.json", (time.time() + 5, time.time() + 5))
    assert failures.main(["check"]) == 0


def test_a_record_is_live_only_while_the_output_is_absent(repo, monkeypatch, capsys):
    assert _stage("infer", lambda p, n, b: 1 / 0, monkeypatch) == failures.EXIT_MODEL
    params = load_params()
    assert list(failures.live_failures(params)) == [MODEL]
    assert failures.main(["check"]) == failures.EXIT_MODEL
    assert "infer-llamacpp@tiny-gpt2" in capsys.readouterr().err
    # the other backend's output does not make it stale
    other = params.paths.infer_json(MODEL, "transformers")
    other.parent.mkdir(parents=True)
    other.write_text("{}")
    assert list(failures.live_failures(params)) == [MODEL]
    # a run-cache restore brings the output back without running the code that clears the record
    out = params.paths.infer_json(MODEL, "llamacpp")
    out.write_text("{}")
    assert failures.live_failures(params) == {} and failures.main(["check"]) == 0
    # a removed model's record is stale too
    out.unlink()
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    raw["roster"] = ["distilgpt2"]
    (repo / "params.yaml").write_text(yaml.safe_dump(raw))
    assert failures.live_failures(load_params()) == {}


def test_allow_accepts_a_failed_model(repo, monkeypatch):
    assert _stage("prepare", lambda p, n: 1 / 0, monkeypatch) == failures.EXIT_MODEL
    assert failures.main(["check"]) == failures.EXIT_MODEL
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    raw["failures"] = {"allow": True}
    (repo / "params.yaml").write_text(yaml.safe_dump(raw))
    assert failures.main(["check"]) == 0


def test_unreadable_record_counts_as_a_failure(repo):
    folder = repo / "metrics/failures"
    folder.mkdir(parents=True)
    (folder / f"infer-llamacpp@{MODEL}.json").write_text("{not json")
    recs = failures.live_failures(load_params())[MODEL]
    assert recs[0].kind == "unreadable-record"


def test_report_shows_the_failed_model_with_stage_and_reason(repo, monkeypatch):
    assert _stage("prepare", lambda p, n: (_ for _ in ()).throw(OSError("disk full")), monkeypatch) == 3
    params = load_params()
    rows = failures.failed_rows(failures.live_failures(params))
    assert rows == [{"model": MODEL, "status": "failed", "stage": "prepare", "phase": "prepare",
                     "kind": "OSError", "reason": "prepare failed (prepare): disk full"}]
    result = build_report(list(params.roster), {}, {}, {}, pd.DataFrame(columns=["model_id", "protocol"]),
                          cost=params.cost, budget=params.budget, report=params.report,
                          references=params.references, failed=rows)
    row = result.summary.rows[MODEL]
    assert row.status == "failed" and "disk full" in row.reason
    assert "prepare failed (prepare): disk full" in result.markdown
    assert result.summary.rows["distilgpt2"].status != "failed"
