"""MLflow, used by every stage the same way: one run per stage (x model), tagged so that one
pipeline execution's runs are found together (git commit + params hash).

MLflow is best-effort; DVC's files are the truth. Every store call runs under one budget
(BUDGET_S for the whole stage, no retries): a store that is down, silent or read-only costs a
stage at most that, prints one warning, and what could not be logged is spooled to
<repo>/.llmbench/mlflow-spool/ for `python -m llmbench.tracking replay`. Exceptions from MLflow
never escape stage_run; exceptions from the stage body propagate unchanged (the run ends FAILED).
A run whose process was killed is ended KILLED by the next stage that starts (run markers).
Values logged as params and tags are redacted (llmbench.redact)."""
from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

from llmbench import tracking_store as ts
from llmbench.config import Params, params_hash
from llmbench.errors import UserError
from llmbench.io import sha256_file
from llmbench.redact import error_line, redact

_LOG = logging.getLogger("llmbench")


def repo_root(start: Path | None = None) -> Path:
    """The user's repository, also from inside a queued experiment's temp copy
    (.dvc/tmp/exps/tmpXXXX), whose files are deleted after the run."""
    here = Path(start or os.getcwd()).resolve()
    parts = here.parts
    for i in range(len(parts) - 3):
        if parts[i:i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return here


def tracking_uri(params: Params) -> str:
    return (os.environ.get("MLFLOW_TRACKING_URI") or params.tracking.uri
            or f"sqlite:///{repo_root() / 'mlflow.db'}")


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "none"
    except (OSError, subprocess.SubprocessError):
        return "none"


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> {"a.b.c": leaf}."""
    if not isinstance(obj, dict):
        return {prefix: obj}
    out: dict[str, Any] = {}
    for k, v in obj.items():
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _numeric(flat: dict[str, Any]) -> dict[str, float]:
    # MLflow metrics are finite floats; strings, None and NaN are left out
    return {k.replace("@", "_"): float(v) for k, v in flat.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def _now_ms() -> int:
    return int(time.time() * 1000)


class StageRun:
    """What a stage logs. Nothing here raises because of MLflow: online calls go through the
    budgeted Store; after its first failure everything goes to the spool."""

    def __init__(self, stage: str, model: str | None, uri: str, experiment: str, tags: dict):
        self.stage, self.model, self.experiment = stage, model, experiment
        self.name = f"{stage}@{model}" if model else stage
        self.store = ts.Store(uri)
        self.root = repo_root()
        self.key = f"{time.strftime('%Y%m%dT%H%M%S')}-{self.name}-{uuid.uuid4().hex[:8]}"
        self.start = {"op": "start", "experiment": experiment, "run_name": self.name,
                      "tags": {**tags, "llmbench.run_key": self.key}, "start_time": _now_ms(),
                      "run_id": None, **ts.owner()}
        self.run_id: str | None = None
        self.spool: ts.Spool | None = None

    @property
    def mlflow(self) -> "StageRun":
        """Deprecated: `run.mlflow.set_tag(...)` from before set_tag existed; use `run.set_tag`."""
        return self

    # -- what stages call -------------------------------------------------------------------
    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        flat = _numeric(flatten(metrics))
        if flat:
            self._do({"op": "metrics", "metrics": flat, "step": step, "ts": _now_ms()})

    def log_params(self, params: dict) -> None:
        # redacted before the cut: a truncated secret would no longer be recognised
        flat = {k: redact(v)[:500] for k, v in flatten(params).items()}
        if flat:
            self._do({"op": "params", "params": flat})

    def set_tag(self, key: str, value: Any) -> None:
        self._do({"op": "tags", "tags": {key: redact(value)[:5000]}})

    def log_artifact(self, path: Path) -> None:
        path = Path(path)
        if path.exists():
            self._do({"op": "artifact", "path": str(path.resolve()),
                      "artifact_path": path.name if path.is_dir() else None})

    def log_table(self, data, name: str) -> None:
        if hasattr(data, "to_dict"):  # a DataFrame: JSON-ready for the spool, same for MLflow
            data = data.to_dict(orient="list")
        self._do({"op": "table", "data": data, "artifact_file": name})

    def log_figure(self, figure, name: str) -> None:
        if self._online():
            with contextlib.suppress(ts.Offline):
                return self.store.call("log_figure", lambda c: c.log_figure(self.run_id, figure, name))
        with contextlib.suppress(Exception):  # a figure that cannot be saved is not worth a stage
            path = self._spool().file_path(name)
            figure.savefig(path)
            self._spool().add({"op": "artifact", "path": str(path),
                               "artifact_path": str(Path(name).parent) if Path(name).parent.name else None})

    def log_input(self, path: Path, name: str, context: str | None = None) -> None:
        """A file the stage read (prompts, reference table, task files) as an MLflow dataset
        input; its digest is the file's sha256, its source the path relative to the repo."""
        path = Path(path).resolve()
        if not path.is_file():
            return
        source = str(path.relative_to(self.root)) if path.is_relative_to(self.root) else str(path)
        self._do({"op": "input", "name": name, "context": context, "source": redact(source),
                  "sha256": sha256_file(path)})

    # -- lifecycle ----------------------------------------------------------------------------
    def open(self, logged_params: dict | None) -> None:
        ts.reap(self.store, self.root)
        with contextlib.suppress(ts.Offline):
            self.run_id = self.store.call("start run", self._create)
            self.start["run_id"] = self.run_id
        if self.run_id is None:
            self._spool()  # offline from the start: the warning now, and a spool to replay
        ts.write_marker(self.root, self.key, self.store.uri, self.run_id, self.spool)
        if logged_params:
            self.log_params(logged_params)

    def _create(self, client) -> str:
        exp = ts.experiment_id(client, self.experiment, self.store.uri, self.root)
        return client.create_run(exp, start_time=self.start["start_time"], tags=self.start["tags"],
                                 run_name=self.name).info.run_id

    def close(self, status: str, error: BaseException | None = None) -> None:
        if error is not None:
            self.set_tag("llmbench.error", f"{type(error).__name__}: {error_line(error)}")
        self._do({"op": "end", "status": status, "end_time": _now_ms()})
        ts.remove_marker(self.root, self.key)

    # -- plumbing -----------------------------------------------------------------------------
    def _online(self) -> bool:
        return self.run_id is not None and not self.store.failure

    def _do(self, op: dict) -> None:
        if self._online():
            try:
                self.store.call(op["op"], lambda c: ts.apply(c, self.run_id, op))
                return
            except ts.Offline:
                pass
        self._spool().add(op)

    def _spool(self) -> ts.Spool:
        if self.spool is None:
            self.spool = ts.Spool(self.root, self.key, self.start)
            _LOG.warning(redact(
                f"MLflow store {self.store.uri} unusable ({self.store.failure or 'not reached'}); "
                f"{self.name} goes on without it, logging to {self.spool.path}; replay later with "
                "`python -m llmbench.tracking replay`"))
            ts.write_marker(self.root, self.key, self.store.uri, self.run_id, self.spool)
        return self.spool


def _status(exc: BaseException) -> str:
    if isinstance(exc, SystemExit) and exc.code in (0, None):
        return "FINISHED"
    return "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"


@contextlib.contextmanager
def stage_run(stage: str, model: str | None, params: Params, fingerprint: dict | None = None,
              logged_params: dict | None = None, weights: str = "") -> Iterator[StageRun]:
    tags = {"stage": stage, "model": model or "", "git_commit": git_commit(),
            "params_hash": params_hash(params), "llmbench.weights": weights}
    tags.update({f"fingerprint.{k}": str(v) for k, v in (fingerprint or {}).items()})
    run = StageRun(stage, model, tracking_uri(params), params.tracking.experiment,
                   {k: redact(v)[:5000] for k, v in tags.items()})
    _guarded(run.open, logged_params)
    try:
        yield run
    except BaseException as exc:
        status = _status(exc)
        _guarded(run.close, status, None if status == "FINISHED" else exc)
        raise
    _guarded(run.close, "FINISHED")


def _guarded(fn: Callable, *args) -> None:
    # the last line of defence: a bug in this best-effort layer must not cost the stage
    try:
        fn(*args)
    except Exception as exc:  # noqa: BLE001
        _LOG.warning(redact(f"MLflow logging skipped: {type(exc).__name__}: {error_line(exc)}"))


# -- python -m llmbench.tracking replay ------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmbench.tracking")
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("replay", help="log what stages spooled while the store was unusable")
    rep.add_argument("--uri", help="tracking store (default: MLFLOW_TRACKING_URI, params, repo db)")
    args = parser.parse_args(argv)
    try:
        uri = args.uri or os.environ.get("MLFLOW_TRACKING_URI") or _params_uri()
        done, left, failure = ts.replay(uri, repo_root())
    except UserError as exc:
        print(f"error: {error_line(exc)}", file=sys.stderr)
        return 2
    print(redact(f"replayed {done} spooled run(s) into {uri}; {left} left"))
    if failure:
        print(f"error: {redact(failure)}", file=sys.stderr)
        return 1
    return 0


def _params_uri() -> str:
    from llmbench.config import load_params

    return tracking_uri(load_params(repo_root() / os.environ.get("LLMBENCH_PARAMS", "params.yaml")))


if __name__ == "__main__":
    sys.exit(main())
