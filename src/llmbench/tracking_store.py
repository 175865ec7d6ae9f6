"""The plumbing under llmbench.tracking: a budgeted MLflow store, the operations a stage logs (one
vocabulary for live calls and the spool), the spool itself, run markers and the replay.

Layout under the user's repo (never the cwd: a queued experiment runs in a temp copy):
  .llmbench/mlflow-spool/<key>.jsonl   one run's operations that could not be logged
  .llmbench/mlflow-spool/<key>.files/  copies of the artifacts they name
  .llmbench/runs/<key>.json            "this process has a run open" (pid, run id, store)
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Callable

import psutil

from llmbench.redact import error_line

BUDGET_S = 5.0  # the most a faulty tracking store may cost one stage, all calls together
SPOOL = Path(".llmbench/mlflow-spool")
MARKERS = Path(".llmbench/runs")
INIT_S = 60.0  # creating or upgrading a local sqlite store's tables
SQL = ("sqlite:", "postgresql", "mysql", "mssql")
WORKER = "llmbench-mlflow"  # the threads that make store calls


class _QuietWorkers(logging.Filter):
    """A failing call is reported once, as the stage's one warning line: MLflow's own error logs
    (with tracebacks) from inside the worker threads would repeat it at length."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.WARNING or not record.threadName.startswith(WORKER)


class Offline(Exception):
    """The store failed once: the rest of the stage logs to the spool."""


class Store:
    """One stage's tracking store. Each call runs in a daemon thread bounded by what is left of
    the budget, so a store that accepts and never answers cannot hang the stage; the first
    failure or timeout switches the store off for the rest of the stage."""

    def __init__(self, uri: str, budget_s: float = BUDGET_S):
        # MLflow's defaults are 7 retries with backoff and 120 s per request (~250 s when down);
        # an abandoned call's thread then ends soon too
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(math.ceil(min(max(budget_s, 1), 30))))
        self.uri, self.budget_s, self.left, self.failure = uri, budget_s, budget_s, ""
        self._client: Any = None

    def _import(self, what: str) -> None:
        # importing the library (~3 s) is not the store's cost: done before the clock starts
        try:
            import mlflow  # noqa: F401
            for handler in logging.getLogger("mlflow").handlers + logging.getLogger("alembic").handlers:
                if not any(isinstance(f, _QuietWorkers) for f in handler.filters):
                    handler.addFilter(_QuietWorkers())
            if self.uri.startswith(SQL):
                import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
        except Exception as exc:  # noqa: BLE001 - a broken install: logging is off, the stage runs
            self._fail(f"{what}: import mlflow: {type(exc).__name__}: {error_line(exc)[:300]}")

    def call(self, what: str, fn: Callable[[Any], Any]) -> Any:
        if self.failure:
            raise Offline(self.failure)
        if self._client is None:
            self._import(what)
            from mlflow import MlflowClient
            local = self.uri.startswith("sqlite:")
            if local:  # MLflow retries opening a broken sqlite store for ~100 s: test it first
                self._bounded(f"{what} (open store)", self._probe_sqlite)
            # creating a local db's tables is CPU work done once (~2 s, 6 s under load), not a
            # store failing: it has its own bound. A server's client is built without a request.
            self._client = self._bounded(f"{what} (open store)", lambda: MlflowClient(tracking_uri=self.uri),
                                         INIT_S if local else None)
        return self._bounded(what, lambda: fn(self._client))

    def _probe_sqlite(self) -> None:
        """A write that is rolled back: a read-only file, an unwritable folder or a lock held
        past the budget fail here in milliseconds."""
        import sqlite3

        from sqlalchemy.engine.url import make_url

        db = make_url(self.uri).database
        if not db or db == ":memory:":
            return
        Path(db).parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(db, timeout=max(0.1, self.left - 0.5), isolation_level=None)
        try:
            con.execute("BEGIN IMMEDIATE")
            con.execute("CREATE TABLE llmbench_write_probe (x)")
            con.execute("ROLLBACK")
        finally:
            con.close()

    def _bounded(self, what: str, fn: Callable[[], Any], limit: float | None = None) -> Any:
        if limit is None and self.left <= 0:
            self._fail(f"{what}: the {self.budget_s:g} s budget for MLflow is spent")
        box: dict[str, Any] = {}

        def work() -> None:
            try:
                box["value"] = fn()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                box["error"] = exc

        worker = threading.Thread(target=work, name=f"{WORKER}-{what}", daemon=True)
        t0 = time.monotonic()
        worker.start()
        worker.join(self.left if limit is None else limit)
        if limit is None:
            self.left -= time.monotonic() - t0
        if worker.is_alive():  # abandoned: a daemon thread does not keep the process alive
            self._fail(f"{what}: no answer within {self.budget_s if limit is None else limit:g} s")
        if "error" in box:
            exc = box["error"]
            self._fail(f"{what}: {type(exc).__name__}: {error_line(exc)[:300]}")
        return box.get("value")

    def _fail(self, why: str) -> None:
        self.failure = why
        raise Offline(why)


# -- experiments and their artifact location ---------------------------------------------------
def _served(uri: str) -> bool:
    return uri.startswith(("http://", "https://", "databricks"))


def _ours(location: str | None) -> bool:
    # a location llmbench chose, <repo>/mlartifacts; a user's own (s3://...) is left alone
    return bool(location) and location.startswith("file:") and location.rstrip("/").endswith("/mlartifacts")


def experiment_id(client, name: str, uri: str, root: Path) -> str:
    """The experiment's id. A local store's artifact location is pointed at <root>/mlartifacts at
    every run, never taken from the store: a moved or copied repo writes artifacts into itself."""
    want = None if _served(uri) else (root / "mlartifacts").as_uri()
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name, artifact_location=want)
        except Exception:  # noqa: BLE001 - a parallel stage may have created it first
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if want and exp.artifact_location != want and _ours(exp.artifact_location):
        _relocate(client, exp, want, uri, root)
    return exp.experiment_id


def _relocate(client, exp, want: str, uri: str, root: Path) -> None:
    # MLflow has no API to change an artifact location: update its own tables (SQL stores)
    from mlflow.store.tracking.dbmodels.models import SqlExperiment, SqlRun
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    store = client._tracking_client.store
    if not isinstance(store, SqlAlchemyStore):
        return
    from sqlalchemy.engine.url import make_url

    old = exp.artifact_location.rstrip("/")
    db = make_url(uri).database if uri.startswith("sqlite:") else None
    # a db inside the repo moved (or was copied) with it, and so did its runs' artifacts
    moved_with_repo = bool(db) and Path(db).resolve().is_relative_to(root)
    eid = int(exp.experiment_id)
    with store.ManagedSessionMaker(read_only=False) as session:
        session.query(SqlExperiment).filter(SqlExperiment.experiment_id == eid).update(
            {"artifact_location": want})
        if moved_with_repo:
            for run in session.query(SqlRun).filter(SqlRun.experiment_id == eid,
                                                    SqlRun.artifact_uri.startswith(old + "/")):
                run.artifact_uri = want + run.artifact_uri[len(old):]


# -- the operations a stage logs -----------------------------------------------------------------
def apply(client, run_id: str, op: dict, files: Path | None = None) -> None:
    """Perform one logged operation on a run (live, or replayed from a spool)."""
    from mlflow.entities import Metric, Param, RunTag

    kind = op["op"]
    if kind in ("params", "tags"):
        cls = Param if kind == "params" else RunTag
        items = [cls(k, v) for k, v in op[kind].items()]
        for i in range(0, len(items), 100):  # MLflow's per-batch limit
            client.log_batch(run_id, **{kind: items[i:i + 100]})
    elif kind == "metrics":
        items = [Metric(k, v, op["ts"], op.get("step") or 0) for k, v in op["metrics"].items()]
        for i in range(0, len(items), 1000):
            client.log_batch(run_id, metrics=items[i:i + 1000])
    elif kind == "artifact":
        path = Path(op["path"]) if files is None else files / op["path"]
        log = client.log_artifacts if path.is_dir() else client.log_artifact
        log(run_id, str(path), artifact_path=op.get("artifact_path"))
    elif kind == "table":
        client.log_table(run_id, data=op["data"], artifact_file=op["artifact_file"])
    elif kind == "input":
        _log_input(client, run_id, op)
    elif kind == "end":
        client.set_terminated(run_id, status=op["status"], end_time=op["end_time"])
    else:
        raise ValueError(f"unknown spool operation {kind!r}")


def _log_input(client, run_id: str, op: dict) -> None:
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    # MLflow caps a digest at 36 characters: the full sha256 is kept as an input tag too
    meta = MetaDataset(LocalArtifactDatasetSource(op["source"]), name=op["name"],
                       digest=op["sha256"][:36]).to_dict()
    tags = [InputTag("llmbench.sha256", op["sha256"])]
    if op.get("context"):
        tags.append(InputTag(MLFLOW_DATASET_CONTEXT, op["context"]))
    dataset = Dataset(meta["name"], meta["digest"], meta["source_type"], meta["source"])
    client.log_inputs(run_id, datasets=[DatasetInput(dataset, tags)])


# -- the spool ---------------------------------------------------------------------------------
def owner() -> dict:
    """Who writes a spool or marker: pid + start time (a reused pid is another process)."""
    pid = os.getpid()
    return {"pid": pid, "pid_started": psutil.Process(pid).create_time()}


def alive(rec: dict) -> bool:
    try:
        return abs(psutil.Process(int(rec["pid"])).create_time() - float(rec["pid_started"])) < 1
    except psutil.NoSuchProcess:
        return False
    except (psutil.Error, KeyError, TypeError, ValueError):
        return True  # cannot tell: leave it to its owner


class Spool:
    """One run's operations as JSON lines, the first the run's `start` (experiment, name, tags,
    run id if the store had created it). Artifacts are copied: DVC may rewrite the originals."""

    def __init__(self, root: Path, key: str, start: dict):
        self.path = root / SPOOL / f"{key}.jsonl"
        self.files = self.path.with_suffix(".files")
        self.broken, self._copies = "", 0
        self.add(start)

    def file_path(self, name: str) -> Path:
        path = self.files / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def add(self, op: dict) -> None:
        if self.broken:
            return
        try:
            if op["op"] == "artifact":
                src = Path(op["path"])
                if not src.is_relative_to(self.files):
                    self._copies += 1  # numbered: two artifacts may share a name
                    dst = self.file_path(f"{self._copies}/{src.name}")
                    shutil.copytree(src, dst) if src.is_dir() else shutil.copy2(src, dst)
                    src = dst
                op = {**op, "path": str(src.relative_to(self.files))}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(op, default=str) + "\n")
        except OSError as exc:  # a read-only repo: the DVC outputs matter, this does not
            self.broken = f"{type(exc).__name__}: {exc}"


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# -- run markers -------------------------------------------------------------------------------
def write_marker(root: Path, key: str, uri: str, run_id: str | None, spool: Spool | None) -> None:
    path = root / MARKERS / f"{key}.json"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # the store as a hash: its URI may hold credentials
        path.write_text(json.dumps({**owner(), "store": _store_id(uri), "run_id": run_id,
                                    "spool": str(spool.path) if spool else None}))
    except OSError:
        pass  # a read-only repo: a killed run then stays RUNNING, the stage still runs


def _store_id(uri: str) -> str:
    return hashlib.sha256(uri.encode()).hexdigest()[:16]


def remove_marker(root: Path, key: str) -> None:
    (root / MARKERS / f"{key}.json").unlink(missing_ok=True)


def reap(store: Store, root: Path) -> int:
    """End the runs of processes that died with a run open as KILLED (in the store, or through
    the spool when it is unusable). Returns how many."""
    n = 0
    for path in sorted((root / MARKERS).glob("*.json")):
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError):
            path.unlink(missing_ok=True)
            continue
        if alive(rec) or rec.get("store") != _store_id(store.uri):
            continue  # still running, or another store's run: left for a run against that one
        if rec.get("run_id"):
            _kill(store, root, path.stem, rec["run_id"])
        path.unlink(missing_ok=True)  # no run id: its spool ends it KILLED on replay
        n += 1
    return n


def _kill(store: Store, root: Path, key: str, run_id: str) -> None:
    end = {"op": "end", "status": "KILLED", "end_time": int(time.time() * 1000)}
    tag = {"op": "tags", "tags": {"llmbench.error": "killed: its process ended with the run open"}}
    try:
        store.call("end killed run", lambda c: (apply(c, run_id, tag), apply(c, run_id, end)))
    except Offline:
        spool = Spool(root, f"{key}-killed", {"op": "start", "run_id": run_id, "pid": 0,
                                              "pid_started": 0})
        spool.add(tag)
        spool.add(end)


# -- replay ------------------------------------------------------------------------------------
def replay(uri: str, root: Path) -> tuple[int, int, str]:
    """Log every finished spool into the store at `uri`; delete what was replayed. Returns
    (runs replayed, spools left, first failure or "")."""
    store = Store(uri, budget_s=600)  # a person waits for it: bounded, but not by a stage's 5 s
    reap(store, root)
    done, left = 0, 0
    for path in sorted((root / SPOOL).glob("*.jsonl")):
        ops = read(path)
        ended = any(op["op"] == "end" for op in ops)
        if not ops or (not ended and ops[0].get("pid") and alive(ops[0])) or store.failure:
            left += 1  # still being written by a running stage, or the store failed
            continue
        try:
            _replay_one(store, root, path, ops)
            done += 1
        except Offline:
            left += 1
    return done, left, store.failure


def _replay_one(store: Store, root: Path, path: Path, ops: list[dict]) -> None:
    start, files = ops[0], path.with_suffix(".files")
    run_id = store.call("find run", lambda c: _find(c, start))
    if run_id is None:
        if "experiment" not in start:  # ends a run this store does not have: nothing to do
            path.unlink()
            return
        run_id = store.call("create run", lambda c: c.create_run(
            experiment_id(c, start["experiment"], store.uri, root), start_time=start["start_time"],
            tags=start["tags"], run_name=start["run_name"]).info.run_id)
    rest = ops[1:]
    if not any(op["op"] == "end" for op in rest):  # its process died with the run open
        rest.append({"op": "end", "status": "KILLED", "end_time": int(time.time() * 1000)})
    for i, op in enumerate(rest):
        try:
            store.call(f"replay {op['op']}", lambda c, op=op: apply(c, run_id, op, files))
        except Offline:
            # keep what is not replayed yet, now naming the run it belongs to
            lines = [{**start, "run_id": run_id}, *rest[i:]]
            path.write_text("".join(json.dumps(o, default=str) + "\n" for o in lines))
            raise
    path.unlink()
    shutil.rmtree(files, ignore_errors=True)


def _find(client, start: dict) -> str | None:
    from mlflow.exceptions import MlflowException

    if start.get("run_id"):
        try:
            return client.get_run(start["run_id"]).info.run_id
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise  # e.g. the store is down: not a reason to create a second run
    if "experiment" not in start:
        return None
    # a run created just before the store stopped answering: found by its key, not duplicated
    exp = client.get_experiment_by_name(start["experiment"])
    if exp is None:
        return None
    key = start["tags"].get("llmbench.run_key", "")
    runs = client.search_runs([exp.experiment_id], f"tags.`llmbench.run_key` = '{key}'", max_results=1)
    return runs[0].info.run_id if runs else None
