"""Failure records: how one failing model never sinks the run.

A per-model stage that fails writes `<paths.failures>/<stage>@<model>.json` (outside its DVC
outputs, so DVC neither deletes nor caches it) and exits non-zero; `dvc repro --ignore-errors`
then runs the other models and the aggregate. DVC writes dvc.lock and the run-cache only after a
stage exits 0, so the failed stage is retried on the next `dvc repro` and never replayed from the
cache. A record counts only while the stage's output is absent: a run-cache restore brings the
output back without running the code that would delete the record.

`python -m llmbench.failures check` (end of `make run`): exit 3 while a roster model has a live
failure, unless params allow failures (a shared stage's failure, e.g. the aggregate, is never
allowed: there is no report).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from typing import TYPE_CHECKING, Callable

from pydantic import BaseModel, ConfigDict, ValidationError

if TYPE_CHECKING:
    from llmbench.config import Params

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


def record_path(folder: str | Path, stage: str, model: str) -> Path:
    return Path(folder) / f"{stage}@{model}.json"


def write(folder: str | Path, rec: FailureRecord) -> Path:
    from llmbench.io import write_bytes_atomic

    return write_bytes_atomic(record_path(folder, rec.stage, rec.model),
                              (rec.model_dump_json(indent=2) + "\n").encode())


def clear(folder: str | Path, stage: str, model: str) -> None:
    record_path(folder, stage, model).unlink(missing_ok=True)


def make(stage: str, model: str, phase: str, exc: BaseException, exit_code: int) -> FailureRecord:
    from llmbench.errors import UserError

    from llmbench.redact import error_line

    return FailureRecord(stage=stage, model=model, phase=phase,
                         kind="user-error" if isinstance(exc, UserError) else type(exc).__name__,
                         reason=error_line(exc)[:400], exit_code=exit_code,
                         time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


def read_all(folder: str | Path) -> list[FailureRecord]:
    """Every record; an unreadable one is reported as such, never a crash."""
    out = []
    for path in sorted(Path(folder).glob("*@*.json")):
        try:
            out.append(FailureRecord.model_validate_json(path.read_bytes()))
        except (ValidationError, OSError, ValueError) as exc:
            stage, _, model = path.stem.partition("@")
            out.append(FailureRecord(stage=stage, model=model, phase="unknown", kind="unreadable-record",
                                     reason=f"{path}: {type(exc).__name__}", exit_code=EXIT_MODEL,
                                     time=""))
    return out


SHARED = ""  # the model of a record from a stage that is not per model (aggregate, fetch-dataset)


def live(folder: str | Path, roster: tuple[str, ...] | list[str],
         output_of: dict[str, Callable[[str], Path]]) -> dict[str, list[FailureRecord]]:
    """Live failures by model (SHARED for a shared stage's).

    output_of maps a stage to a function model -> the output whose presence means it succeeded.
    A per-model record is stale once that output exists (DVC deletes a stage's outputs before
    running it, so only a success or a run-cache restore brings them back); a shared stage's
    once its output is newer than the record (the aggregate's report persists across runs). A
    record of a stage not in the map counts while it exists."""
    by_model: dict[str, list[FailureRecord]] = {}
    for rec in read_all(folder):
        if rec.model != SHARED and rec.model not in roster:
            continue  # a removed model's stale record
        out = output_of.get(rec.stage)
        if out is not None:
            path = Path(out(rec.model))
            if path.exists() and (rec.model != SHARED or path.stat().st_mtime
                                  > record_path(folder, rec.stage, rec.model).stat().st_mtime):
                continue
        by_model.setdefault(rec.model, []).append(rec)
    return by_model


def live_failures(params: Params) -> dict[str, list[FailureRecord]]:
    """The roster's live failures, by model (what the report and `failures check` show)."""
    return live(params.paths.failures, params.roster, stage_outputs(params))


def failed_rows(records: dict[str, list[FailureRecord]]) -> list[dict]:
    """One report row per failed model: model, status "failed", and the first failure's stage,
    phase and reason (the stage that failed first blocks the ones after it)."""
    order = {s: i for i, s in enumerate(("prepare", "quantize", "infer", "profile", "evaluate"))}
    rows = []
    for model, recs in records.items():
        if model == SHARED:
            continue
        # profile-llamacpp -> profile: a per-backend stage sorts as its kind
        first = min(recs, key=lambda r: order.get(r.stage.split("-")[0], len(order)))
        rows.append({"model": model, "status": "failed", "stage": first.stage, "phase": first.phase,
                     "kind": first.kind,
                     "reason": f"{first.stage} failed ({first.phase}): {first.reason}"})
    return rows


def stage_outputs(params: Params) -> dict[str, Callable[[str], Path]]:
    """Stage -> the output file whose presence (or, for a shared stage, freshness) means that
    stage succeeded."""
    p = params.paths
    per_backend = {f"{kind}-{b}": (lambda m, f=path_of, b=b: f(m, b))
                   for kind, path_of in (("infer", p.infer_json), ("profile", p.profile_json),
                                         ("evaluate", p.evaluate_json))
                   for b in params.backends.ids()}
    return {
        "prepare": lambda m: p.prepared(m) / "llmbench_model.json",
        **per_backend,
        "quantize": p.gguf_json,
        "serve": p.serve_json,
        "fetch-dataset": lambda _: Path(p.reference) / "reference.csv",
        "generate-prompts": lambda _: Path(p.prompts),
        "aggregate": lambda _: p.summary_json,
    }


def main(argv: list[str] | None = None) -> int:
    """`check`: exit 3 while a failure is live (unless failures.allow); `list`: print them."""
    import os

    from llmbench.config import load_params
    from llmbench.errors import UserError
    from llmbench.redact import error_line

    argv = sys.argv[1:] if argv is None else argv
    if argv not in (["check"], ["list"]):
        print("usage: python -m llmbench.failures check|list", file=sys.stderr)
        return EXIT_USER
    try:
        params = load_params(os.environ.get("LLMBENCH_PARAMS", "params.yaml"))
    except UserError as exc:
        print(f"error: {error_line(exc)}", file=sys.stderr)
        return EXIT_USER
    failed = live_failures(params)
    for model, recs in failed.items():
        for r in recs:
            print(f"failed: {r.stage}@{model} ({r.phase}, {r.kind}): {r.reason}"
                  if model else f"failed: {r.stage} ({r.phase}, {r.kind}): {r.reason}", file=sys.stderr)
    if argv == ["list"] or not failed:
        return 0
    what = f"{len(failed)} failure(s) (" + ", ".join(m or "shared stage" for m in failed) + ")"
    if params.failures.allow and SHARED not in failed:
        print(f"{what}: allowed by params.yaml failures.allow", file=sys.stderr)
        return 0
    print(f"error: {what}, see above and the report; fix and rerun `make run` (only the failed "
          "stages rerun), or set failures.allow: true in params.yaml to accept a failed model",
          file=sys.stderr)
    return EXIT_MODEL


if __name__ == "__main__":
    sys.exit(main())
