"""MLflow, used by every stage the same way: one run per stage (x model), tagged so that one
pipeline execution's runs are found together (git commit + params hash)."""
from __future__ import annotations

import contextlib
import math
import os
import subprocess
from pathlib import Path
from typing import Any, Iterator

from llmbench.config import Params, params_hash


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
            if isinstance(v, (int, float)) and math.isfinite(v)}


class StageRun:
    def __init__(self, mlflow_module):
        self.mlflow = mlflow_module

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        flat = _numeric(flatten(metrics))
        if flat:
            self.mlflow.log_metrics(flat, step=step)

    def log_artifact(self, path: Path) -> None:
        path = Path(path)
        if path.is_dir():
            self.mlflow.log_artifacts(str(path), artifact_path=path.name)
        elif path.exists():
            self.mlflow.log_artifact(str(path))

    def log_table(self, data, name: str) -> None:
        self.mlflow.log_table(data=data, artifact_file=name)

    def log_figure(self, figure, name: str) -> None:
        self.mlflow.log_figure(figure, name)


@contextlib.contextmanager
def stage_run(stage: str, model: str | None, params: Params, fingerprint: dict | None = None,
              logged_params: dict | None = None, weights: str = "") -> Iterator[StageRun]:
    import mlflow  # heavy import, only inside a stage

    uri = tracking_uri(params)
    mlflow.set_tracking_uri(uri)
    name = params.tracking.experiment
    if mlflow.get_experiment_by_name(name) is None:
        # a tracking server stores artifacts where every client can reach them; a local store
        # keeps them next to the db in the user's repo, not in the cwd (a temp copy under queues)
        served = uri.startswith(("http://", "https://", "databricks"))
        try:
            mlflow.create_experiment(
                name, artifact_location=None if served else (repo_root() / "mlartifacts").as_uri())
        except mlflow.exceptions.MlflowException:
            if mlflow.get_experiment_by_name(name) is None:  # else a parallel job created it first
                raise
    mlflow.set_experiment(name)
    tags = {"stage": stage, "model": model or "", "git_commit": git_commit(),
            "params_hash": params_hash(params), "llmbench.weights": weights}
    tags.update({f"fingerprint.{k}": str(v) for k, v in (fingerprint or {}).items()})
    with mlflow.start_run(run_name=f"{stage}@{model}" if model else stage, tags=tags):
        if logged_params:
            mlflow.log_params({k: str(v)[:500] for k, v in flatten(logged_params).items()})
        yield StageRun(mlflow)

