"""Failure records: how one failing model never sinks the run.

A per-model stage that fails writes `<metrics>/failures/<stage>@<model>.json` (outside its DVC
outputs, so DVC neither deletes nor caches it) and exits non-zero; `dvc repro --ignore-errors`
then runs the other models and the aggregate. DVC writes dvc.lock and the run-cache only after a
stage exits 0, so the failed stage is retried on the next `dvc repro` and never replayed from the
cache. A record counts only while the stage's output is absent: a run-cache restore brings the
output back without running the code that would delete the record.

`python -m llmbench.failures check` (end of `make run`): exit 3 while a roster model has a live
failure, unless params allow failures.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

EXIT_USER = 2  # bad input (params, files, a model id): fix it and rerun
EXIT_MODEL = 3  # a model failed to prepare, load, run or score


class FailureRecord(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    stage: str
    model: str
    phase: str  # prepare | load | run | score | write | ...
    kind: str  # user-error | exception class name
    reason: str  # one line
    exit_code: int
    time: str  # UTC, ISO 8601


def folder(metrics_dir: str | Path) -> Path:
    return Path(metrics_dir) / "failures"


def record_path(metrics_dir: str | Path, stage: str, model: str) -> Path:
    return folder(metrics_dir) / f"{stage}@{model}.json"


def write(metrics_dir: str | Path, rec: FailureRecord) -> Path:
    from llmbench.io import write_bytes_atomic

    return write_bytes_atomic(record_path(metrics_dir, rec.stage, rec.model),
                              (rec.model_dump_json(indent=2) + "\n").encode())


def clear(metrics_dir: str | Path, stage: str, model: str) -> None:
    record_path(metrics_dir, stage, model).unlink(missing_ok=True)


def make(stage: str, model: str, phase: str, exc: BaseException, exit_code: int) -> FailureRecord:
    from llmbench.errors import UserError

    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return FailureRecord(stage=stage, model=model, phase=phase,
                         kind="user-error" if isinstance(exc, UserError) else type(exc).__name__,
                         reason=text[:400], exit_code=exit_code,
                         time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


def read_all(metrics_dir: str | Path) -> list[FailureRecord]:
    """Every readable record; an unreadable one is reported as such, never a crash."""
    out = []
    for path in sorted(folder(metrics_dir).glob("*@*.json")):
        try:
            out.append(FailureRecord.model_validate_json(path.read_bytes()))
        except (ValidationError, OSError, ValueError) as exc:
            stage, _, model = path.stem.partition("@")
            out.append(FailureRecord(stage=stage, model=model, phase="unknown", kind="unreadable-record",
                                     reason=f"{path}: {type(exc).__name__}", exit_code=EXIT_MODEL,
                                     time=""))
    return out


def live(metrics_dir: str | Path, roster: tuple[str, ...] | list[str],
         output_of: dict[str, "callable"]) -> dict[str, list[FailureRecord]]:
    """Failures of roster models whose stage output is still absent, by model.

    output_of maps a stage name to a function model -> the output path whose presence means the
    stage succeeded (a record for a stage not in the map counts as live while it exists)."""
    by_model: dict[str, list[FailureRecord]] = {}
    for rec in read_all(metrics_dir):
        if rec.model not in roster:
            continue  # a removed model's stale record
        out = output_of.get(rec.stage)
        if out is not None and Path(out(rec.model)).exists():
            continue  # restored from the run-cache or rerun fine: the record is stale
        by_model.setdefault(rec.model, []).append(rec)
    return by_model


def main(argv: list[str] | None = None) -> int:
    from llmbench.config import load_params
    from llmbench.errors import UserError

    argv = sys.argv[1:] if argv is None else argv
    if argv not in (["check"], ["list"]):
        print("usage: python -m llmbench.failures check|list", file=sys.stderr)
        return EXIT_USER
    try:
        params = load_params()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER
    failed = live(params.paths.metrics, params.roster, stage_outputs(params))
    for model, recs in failed.items():
        for r in recs:
            print(f"failed: {r.stage}@{model} ({r.phase}, {r.kind}): {r.reason}", file=sys.stderr)
    if argv == ["list"] or not failed:
        return 0
    if params.failures.allow:
        print(f"{len(failed)} model(s) failed; allowed by params.yaml failures.allow", file=sys.stderr)
        return 0
    print(f"error: {len(failed)} model(s) failed (see above and the report); set failures.allow: true "
          "in params.yaml to accept", file=sys.stderr)
    return EXIT_MODEL


def stage_outputs(params) -> dict:
    """Per-model stage -> the output file whose presence means that stage succeeded."""
    p = params.paths
    return {
        "prepare": lambda m: p.prepared(m) / "llmbench_model.json",
        "infer": p.infer_json,
        "profile": p.profile_json,
        "evaluate": p.evaluate_json,
    }


if __name__ == "__main__":
    sys.exit(main())
