"""MLflow is best-effort, DVC files are the truth (issue 10 items 4 and 8, issue 9's log_input):
faulty stores cost a stage at most 5 s and nothing is lost (spool + replay, into a real server
too), killed runs end KILLED, a moved repo keeps its artifacts, secrets never reach a file."""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from conftest import free_port, running_mlflow_server

from llmbench import tracking_store
from llmbench.config import parse_params
from llmbench.errors import UserError
from llmbench.io import sha256_file
from llmbench.logs import log_event, setup_logging
from llmbench.redact import error_line, redact
from llmbench.tracking import main as tracking_main
from llmbench.tracking import stage_run

REPO = Path(__file__).resolve().parents[1]


def make_params(uri: str | None = None):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["tracking"] = {"uri": uri, "experiment": "llmbench"}
    return parse_params(raw)


@pytest.fixture
def repo(tmp_path, monkeypatch, mlflow_db) -> Path:
    """An empty user repo as the cwd, with a ready local store (the default sqlite:///<repo>/mlflow.db)."""
    import mlflow  # noqa: F401 - imported once here: a stage's import is not what is timed

    root = tmp_path / "repo"
    root.mkdir()
    shutil.copy(mlflow_db, root / "mlflow.db")
    monkeypatch.chdir(root)
    for var in [v for v in os.environ if v.startswith("MLFLOW_")]:
        monkeypatch.delenv(var)
    return root


@pytest.fixture
def stage_logging(repo):
    """Logging as cli.run_stage sets it up: JSON lines to stderr and <repo>/logs/."""
    def setup(stage: str, model: str | None) -> None:
        setup_logging(stage, model, repo / "logs")

    yield setup
    logger = logging.getLogger("llmbench")
    for handler in logger.handlers:
        handler.close()
    logger.handlers.clear()


def client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def local_uri(root: Path) -> str:
    return f"sqlite:///{root / 'mlflow.db'}"


def only_run(uri: str):
    c = client(uri)
    exp = c.get_experiment_by_name("llmbench")
    assert exp is not None
    runs = c.search_runs([exp.experiment_id])
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return runs[0]


def full_stage(params, body=None) -> Path:
    """A stage that logs one of everything; writes its DVC output first, as stages do."""
    out = Path("metrics/infer/m.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"status": "ok", "tps": 12.5}))
    prompts = Path("data/prompts.jsonl")
    prompts.parent.mkdir(parents=True, exist_ok=True)
    prompts.write_text('{"prompt": "hi"}\n')
    with stage_run("infer", "m", params, logged_params={"infer": {"max_new_tokens": 8}}) as run:
        run.log_metrics({"gen": {"tps": 12.5}, "n": 3, "label": "text is skipped"})
        run.set_tag("llmbench.weights", "random")
        run.mlflow.set_tag("compat", "yes")  # the old spelling still works
        run.log_artifact(out)
        run.log_table({"model": ["m"], "tps": [12.5]}, "table.json")
        run.log_input(prompts, "prompts", "inference")
        if body:
            body()
    return out


def check_full_run(r, c) -> None:
    assert r.info.status == "FINISHED" and r.info.run_name == "infer@m"
    assert r.data.metrics == {"gen.tps": 12.5, "n": 3.0}
    assert r.data.params == {"infer.max_new_tokens": "8"}
    assert (r.data.tags["llmbench.weights"], r.data.tags["compat"], r.data.tags["stage"]) == \
        ("random", "yes", "infer")
    assert {a.path for a in c.list_artifacts(r.info.run_id)} == {"m.json", "table.json"}
    (inp,) = r.inputs.dataset_inputs
    sha = sha256_file(Path("data/prompts.jsonl"))
    tags = {t.key: t.value for t in inp.tags}
    assert (inp.dataset.name, inp.dataset.digest, inp.dataset.source_type) == ("prompts", sha[:36], "local")
    assert json.loads(inp.dataset.source) == {"uri": "data/prompts.jsonl"}  # relative: not frozen
    assert tags == {"llmbench.sha256": sha, "mlflow.data.context": "inference"}


def leftovers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in (root / ".llmbench").rglob("*") if p.is_file())


def test_a_healthy_store_gets_everything_and_no_spool(repo):
    full_stage(make_params())
    c = client(local_uri(repo))
    r = only_run(local_uri(repo))
    check_full_run(r, c)
    assert Path(r.info.artifact_uri.removeprefix("file://")).is_relative_to(repo / "mlartifacts")
    assert leftovers(repo) == []  # no spool, no marker left open


@pytest.mark.parametrize("exc, status", [(ValueError("boom in the body"), "FAILED"),
                                         (KeyboardInterrupt(), "KILLED")])
def test_a_failing_body_propagates_unchanged_and_ends_its_run(repo, exc, status):
    with pytest.raises(type(exc)) as caught:
        with stage_run("profile", "m", make_params()):
            raise exc
    assert caught.value is exc
    r = only_run(local_uri(repo))
    assert r.info.status == status
    assert r.data.tags["llmbench.error"].startswith(type(exc).__name__)
    assert "boom in the body" in r.data.tags["llmbench.error"] or status == "KILLED"


def down_uri(tmp: Path, readonly) -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens: connection refused


def readonly_file_uri(tmp: Path, readonly) -> str:
    readonly(Path("mlflow.db"))  # the repo's own, tables created, now unwritable
    return local_uri(Path.cwd())


def readonly_dir_uri(tmp: Path, readonly) -> str:
    folder = tmp / "ro-store"
    folder.mkdir()
    readonly(folder)  # sqlite cannot create the db there
    return f"sqlite:///{folder / 'mlflow.db'}"


FAULTS = {"down": down_uri, "read-only file": readonly_file_uri, "read-only dir": readonly_dir_uri}


@pytest.mark.parametrize("fault", [*FAULTS, "silent"])
def test_a_faulty_store_costs_at_most_5_s_warns_once_and_spools(repo, fault, readonly,
                                                                 silent_server, capfd, stage_logging):
    uri = silent_server if fault == "silent" else FAULTS[fault](repo.parent, readonly)
    stage_logging("infer", "m")
    t0 = time.monotonic()
    out = full_stage(make_params(uri))
    elapsed = time.monotonic() - t0
    assert elapsed < tracking_store.BUDGET_S + 1.0, f"{fault}: the stage lost {elapsed:.1f} s"
    assert json.loads(out.read_text())["tps"] == 12.5  # the DVC output is written as usual
    err = capfd.readouterr().err
    warnings = [ln for ln in err.splitlines() if "llmbench.tracking replay" in ln]
    assert len(warnings) == 1 and "infer@m" in warnings[0], err
    assert "Traceback" not in err, err
    (spool,) = (repo / tracking_store.SPOOL).glob("*.jsonl")
    ops = [op["op"] for op in tracking_store.read(spool)]
    assert ops == ["start", "params", "metrics", "tags", "tags", "artifact", "table", "input", "end"]
    assert not list((repo / tracking_store.MARKERS).glob("*.json"))  # the run closed normally


def test_a_body_error_still_propagates_when_the_store_is_down(repo):
    with pytest.raises(UserError, match="bad file"):
        with stage_run("evaluate", "m", make_params(f"http://127.0.0.1:{free_port()}")):
            raise UserError("bad file")
    (spool,) = (repo / tracking_store.SPOOL).glob("*.jsonl")
    end = tracking_store.read(spool)[-1]
    assert end["op"] == "end" and end["status"] == "FAILED"


def test_replay_logs_the_spool_into_the_store_and_deletes_it(repo, readonly, capsys):
    uri = readonly_file_uri(repo.parent, readonly)
    full_stage(make_params(uri))
    assert tracking_main(["replay", "--uri", uri]) == 1  # still read-only: kept, one line
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:"), err
    assert len(list((repo / tracking_store.SPOOL).glob("*.jsonl"))) == 1
    readonly.undo()  # the store is writable again
    assert tracking_main(["replay", "--uri", uri]) == 0
    c = client(uri)
    check_full_run(only_run(uri), c)
    assert leftovers(repo) == []
    assert tracking_main(["replay", "--uri", uri]) == 0  # nothing left: idempotent
    assert len(c.search_runs([c.get_experiment_by_name("llmbench").experiment_id])) == 1


@pytest.mark.slow
def test_replay_into_a_real_mlflow_server_started_after_the_run(repo, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    full_stage(make_params(url))  # the server does not exist yet
    env = {**os.environ, "MLFLOW_TRACKING_URI": url}
    replay = [sys.executable, "-m", "llmbench.tracking", "replay"]
    with running_mlflow_server(tmp_path / "server", port):
        proc = subprocess.run(replay, cwd=repo, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        c = client(url)
        r = only_run(url)
        check_full_run(r, c)
        assert r.info.artifact_uri.startswith("mlflow-artifacts:")
        got = c.download_artifacts(r.info.run_id, "m.json", str(tmp_path))
        assert json.loads(Path(got).read_text()) == {"status": "ok", "tps": 12.5}
    assert leftovers(repo) == []


KILLED_STAGE = """
import os, sys, yaml
from llmbench.config import parse_params
from llmbench.tracking import stage_run
raw = yaml.safe_load(open(sys.argv[1]))
with stage_run("profile", "victim", parse_params(raw)):
    print("running", flush=True)
    sys.stdin.read()  # until killed
"""


def test_a_killed_stage_run_ends_killed_when_the_next_stage_starts(repo):
    params_file = repo / "params.yaml"
    shutil.copy(REPO / "params.yaml", params_file)
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(KILLED_STAGE), str(params_file)],
                            cwd=repo, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    try:
        assert proc.stdout.readline().strip() == "running"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    c = client(local_uri(repo))
    exp = c.get_experiment_by_name("llmbench")
    (victim,) = c.search_runs([exp.experiment_id])
    assert victim.info.status == "RUNNING"  # what MLflow alone leaves behind
    with stage_run("aggregate", None, make_params()):
        pass
    runs = {r.info.run_name: r for r in c.search_runs([exp.experiment_id])}
    assert runs["profile@victim"].info.status == "KILLED"
    assert "killed" in runs["profile@victim"].data.tags["llmbench.error"]
    assert runs["aggregate"].info.status == "FINISHED"
    assert leftovers(repo) == []


def test_a_moved_or_copied_repo_writes_its_artifacts_into_itself(repo, tmp_path, monkeypatch):
    def logged(root: Path, name: str) -> Path:
        (root / name).write_text(name)
        with stage_run(name, None, make_params()) as run:
            run.log_artifact(root / name)
        c = client(local_uri(root))
        (r,) = [r for r in c.search_runs([c.get_experiment_by_name("llmbench").experiment_id])
                if r.info.run_name == name]
        return Path(r.info.artifact_uri.removeprefix("file://"))

    assert logged(repo, "first").is_relative_to(repo / "mlartifacts")
    moved = tmp_path / "moved"
    shutil.move(repo, moved)
    monkeypatch.chdir(moved)
    assert (logged(moved, "second") / "second").read_text() == "second"
    assert not repo.exists()  # nothing written at the old place
    c = client(local_uri(moved))
    runs = c.search_runs([c.get_experiment_by_name("llmbench").experiment_id])
    for r in runs:  # the old run's artifacts moved with the repo, and its record follows them
        assert Path(r.info.artifact_uri.removeprefix("file://")).is_relative_to(moved / "mlartifacts")
    copy = tmp_path / "copy"
    shutil.copytree(moved, copy)
    monkeypatch.chdir(copy)
    assert (logged(copy, "third") / "third").is_file()
    assert not list((moved / "mlartifacts").rglob("third"))  # the original is untouched


def test_redact_masks_url_credentials_tokens_and_secret_env_values(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_ZZplantedTokenValue42")
    monkeypatch.setenv("SOME_FLAG_KEY", "1")  # too short to be a secret: left alone
    text = ("https://alice:pa55w0rd@data.example.com/x.csv?token=qqq123&x=1 "
            "Bearer hf_ZZplantedTokenValue42 flag=1 s3://k:secret@bucket/a")
    assert redact(text) == ("https://alice:***@data.example.com/x.csv?token=***&x=1 "
                            "Bearer *** flag=1 s3://k:***@bucket/a")
    assert redact("git@github.com:org/repo http://host:8080/path") == \
        "git@github.com:org/repo http://host:8080/path"  # no credentials: untouched
    assert error_line(ValueError("cannot fetch\nhttps://u:pw@h/x")) == "cannot fetch https://u:***@h/x"


@pytest.mark.parametrize("store", ["local", "down"])
def test_planted_secrets_reach_no_file_log_store_or_stderr(repo, store, monkeypatch, capfd,
                                                           stage_logging):
    token, password, query = "hf_PLANTEDtoken_9f8e7d6c", "PLANTEDpassw0rd", "PLANTEDquery77"
    monkeypatch.setenv("HF_TOKEN", token)
    monkeypatch.setenv("MY_SERVICE_PASSWORD", "PLANTEDenvPass")
    url = f"https://alice:{password}@data.example.com/ref.csv?token={query}"
    params = make_params(None if store == "local" else f"http://127.0.0.1:{free_port()}")
    stage_logging("fetch-dataset", None)
    with pytest.raises(UserError) as caught:
        with stage_run("fetch-dataset", None, params,
                       logged_params={"dataset": {"url": url, "note": f"with {token}"}}) as run:
            log_event("fetching", url=url, header=f"Authorization: Bearer {token}")
            logging.getLogger("llmbench").warning("env says %s", os.environ["MY_SERVICE_PASSWORD"])
            run.set_tag("dataset.url", url)
            raise UserError(f"cannot fetch {url}")
    print(f"error: {error_line(caught.value)}", file=sys.stderr)  # what cli.py prints
    logging.shutdown()  # flush the log files before reading them
    captured = capfd.readouterr()
    planted = (token, password, query, "PLANTEDenvPass")
    files = [p for p in repo.rglob("*") if p.is_file()]
    assert any(p.suffix == ".jsonl" and "logs" in p.parts for p in files)
    for p in files + [None]:
        data = (captured.out + captured.err).encode() if p is None else p.read_bytes()
        for secret in planted:
            assert secret.encode() not in data, f"{secret} leaked into {p or 'stdout/stderr'}"
    assert "alice:***@data.example.com" in captured.err
    if store == "local":
        r = only_run(local_uri(repo))
        assert r.data.params["dataset.url"] == "https://alice:***@data.example.com/ref.csv?token=***"
        assert r.info.status == "FAILED"
