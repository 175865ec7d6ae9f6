"""Issue 6 end to end, on git clones of one committed tiny copy of this repo (roster: tiny-gpt2):
parameter sweeps with DVC experiments (queued ones too), scale-out across clones through a shared
DVC remote and its run-cache (the benchmark workflow's own job scripts), and a real MLflow server."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from conftest import free_port, running_mlflow_server
from test_e2e import BIN, SMALL, copy_repo, merge, ran, run

from llmbench.config import load_params, params_hash, parse_params

pytestmark = pytest.mark.slow

MODEL = "tiny-gpt2"
TINY = {**{k: v for k, v in SMALL.items() if k != "evaluate"}, "roster": [MODEL], "ci_roster": [MODEL]}
# serve@smollm2-q4 runs too: the shipped endpoint's model is outside this roster, so it records "skipped"
BACKENDS = ("transformers", "llamacpp")
STAGES = {"fetch-dataset", "generate-prompts", "aggregate", "serve@smollm2-q4", f"prepare@{MODEL}",
          f"quantize@{MODEL}", *(f"{s}-{b}@{MODEL}" for s in ("infer", "profile", "evaluate") for b in BACKENDS)}
METRICS = [f"metrics/{s}/{MODEL}.{b}.json" for s in ("infer", "profile", "evaluate") for b in BACKENDS]
WORKFLOW = Path(__file__).resolve().parents[1] / ".github/workflows/benchmark.yml"
# generated in the working tree, possibly untracked but not ignored: a clone starts without them
GENERATED = ("dvc.lock", "metrics", "reports")
# queued (dvc exp run --queue, dvc queue start) and one run in the workspace (dvc exp run)
SWEEPS = {"sweep-b2": {"profile": {"batch_sizes": [2]}},
          "sweep-bf16": {"profile": {"dtypes": ["bfloat16"]}}}
WORKSPACE_SWEEP = ("sweep-b12", {"profile": {"batch_sizes": [1, 2]}})


def base_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{BIN}:{env['PATH']}"
    # `dvc exp run` on a dirty workspace stashes it with a git commit: needs an identity
    for who in ("AUTHOR", "COMMITTER"):
        env[f"GIT_{who}_NAME"], env[f"GIT_{who}_EMAIL"] = "llmbench tests", "tests@llmbench.invalid"
    return env


def clone(origin: Path, dst: Path, env: dict) -> tuple[Path, dict]:
    run(["git", "clone", "-q", str(origin), str(dst)], origin.parent, env)
    return dst, {**env, "PYTHONPATH": str(dst / "src")}  # stages import this checkout's library


def workflow_step(job: str, name: str) -> str:
    steps = yaml.safe_load(WORKFLOW.read_text())["jobs"][job]["steps"]
    return next(s["run"] for s in steps if s.get("name") == name)


def bash(script: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    # exactly GitHub's `shell: bash`
    return run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script], cwd, env)


def same_bytes(a: Path, b: Path, rels, why: str = "was recomputed, not restored") -> None:
    for rel in rels:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), f"{rel} {why}"


@pytest.fixture(scope="module")
def origin(tmp_path_factory, repo) -> tuple[Path, dict]:
    work = copy_repo(repo, tmp_path_factory.mktemp("scaleout") / "origin")
    for rel in map(work.joinpath, GENERATED):
        if rel.is_dir():
            shutil.rmtree(rel)
        rel.unlink(missing_ok=True)
    params = merge(yaml.safe_load((work / "params.yaml").read_text()), TINY)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = base_env()
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "init"]):
        run(cmd, work, env)
    return work, env


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-server")
    with running_mlflow_server(root, free_port()) as url:
        yield url, root / "artifacts"


@pytest.fixture(scope="module")
def machine_a(origin, mlflow_server):
    """One benchmark-workflow `stages` job, verbatim, tracking to the server; then the rest of the
    pipeline (fetch-dataset, aggregate) and the push of outputs + run-cache to a shared remote."""
    src, env = origin
    remote = src.parent / "remote"
    a, env = clone(src, src.parent / "a", env)
    env.update(MLFLOW_TRACKING_URI=mlflow_server[0], MODEL=MODEL, URL=str(remote), KEY_ID="", KEY="")
    bash(workflow_step("stages", "Configure the DVC remote (only when the secret is set)"), a, env)
    matrix = bash(workflow_step("stages", "Run this model's stages"), a, env)
    rest = run(["dvc", "repro"], a, env)
    bash(workflow_step("stages", "Push outputs and run-cache"), a, env)
    return a, env, remote, ran(matrix) | ran(rest)


def test_a_second_clone_reruns_none_of_the_first_clones_stages(origin, machine_a):
    a, _, remote, ran_a = machine_a
    assert ran_a == STAGES
    src, env = origin
    b, env = clone(src, src.parent / "b", env)
    run(["dvc", "remote", "add", "--local", "-d", "shared", str(remote)], b, env)
    # B makes the shared prompts itself, with CI's params as a second matrix job would: A's
    # run-cache entries for infer/profile are keyed on the prompts' hash (deterministic stages)
    ci_args = run(["python", "-m", "llmbench.config", "ci-args"], b, env).stdout.split()
    own = run(["dvc", "exp", "run", *ci_args, "generate-prompts"], b, env)
    assert ran(own) == {"generate-prompts"}
    same_bytes(a, b, ["data/prompts/prompts.jsonl"], "differs between clones: not deterministic")
    # plain repro on the params exp run left in the workspace (CI's, as on A); --pull fetches
    # run-cache entries and their outputs (plain `dvc pull --run-cache` fails with no dvc.lock)
    proc = run(["dvc", "repro", "--pull"], b, env)
    assert ran(proc) == {"aggregate"}, proc.stdout  # aggregate's outputs are uncached: it always runs
    assert f"Stage 'profile-llamacpp@{MODEL}' is cached - skipping run" in proc.stdout
    same_bytes(a, b, METRICS)
    assert MODEL in (b / "reports/report.md").read_text()


def test_the_workflows_aggregate_job_restores_instead_of_recomputing(origin, machine_a):
    a, _, remote, _ = machine_a
    src, env = origin
    c, env = clone(src, src.parent / "c", env)
    env.update(URL=str(remote), KEY_ID="", KEY="")
    bash(workflow_step("aggregate", "Configure the DVC remote"), c, env)
    bash(workflow_step("aggregate", "Pull the run-cache"), c, env)
    # the step's own guard greps repro.log for recomputed per-model stages and fails the job
    proc = bash(workflow_step("aggregate", "Aggregate without recomputing"), c, env)
    assert ran(proc) == {"aggregate"}, proc.stdout
    same_bytes(a, c, METRICS)
    assert json.loads((c / "metrics/summary.json").read_text()) == \
        json.loads((a / "metrics/summary.json").read_text())


def _runs(client, name: str = "llmbench"):
    exp = client.get_experiment_by_name(name)
    assert exp is not None, f"no MLflow experiment {name!r}"
    return client.search_runs([exp.experiment_id], max_results=1000)


def test_pipeline_runs_land_on_the_mlflow_server(machine_a, mlflow_server):
    from mlflow.tracking import MlflowClient

    a, env, _, _ = machine_a
    runs = _runs(MlflowClient(tracking_uri=mlflow_server[0]))
    assert sorted(r.info.run_name for r in runs) == sorted(STAGES)  # one per stage x model
    commit = run(["git", "rev-parse", "HEAD"], a, env).stdout.strip()
    expected_hash = params_hash(load_params(a / "params.yaml"))
    for r in runs:
        stage, _, model = r.info.run_name.partition("@")
        assert (r.data.tags["stage"], r.data.tags["model"]) == (stage, model)
        assert (r.data.tags["git_commit"], r.data.tags["params_hash"]) == (commit, expected_hash)
    assert not (a / "mlflow.db").exists()  # MLFLOW_TRACKING_URI won over the local default


def test_artifacts_are_stored_by_the_mlflow_server(machine_a, mlflow_server, tmp_path):
    from mlflow.tracking import MlflowClient

    a, _, _, _ = machine_a
    url, store = mlflow_server
    client = MlflowClient(tracking_uri=url)
    runs = {r.info.run_name: r for r in _runs(client)}
    for name, r in runs.items():
        # proxied through the server: reachable from every client, not a path on the first one
        assert r.info.artifact_uri.startswith("mlflow-artifacts:"), (name, r.info.artifact_uri)
        assert client.list_artifacts(r.info.run_id), f"{name}: no artifacts"
    prof = runs[f"profile-llamacpp@{MODEL}"]
    got = client.download_artifacts(prof.info.run_id, f"{MODEL}.llamacpp.json", str(tmp_path))
    mine = json.loads((a / f"metrics/profile/{MODEL}.llamacpp.json").read_text())
    assert json.loads(Path(got).read_text()) == mine
    assert list(store.rglob(f"{prof.info.run_id}/artifacts/{MODEL}.llamacpp.json"))  # on the server's disk


def _md_rows(md: str) -> dict[str, dict[str, str]]:
    lines = [[c.strip() for c in ln.strip().strip("|").split("|")]
             for ln in md.splitlines() if ln.startswith("|")]
    header, rows = lines[0], lines[2:]
    named = {}
    for cells in rows:
        first = cells[0]
        key = first[first.index("[") + 1:first.index("]")] if "[" in first else first
        named[key] = dict(zip(header, cells))
    return named


def _wait_for_queue(work: Path, env: dict, names, timeout_s: float = 420) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        out = run(["dvc", "queue", "status"], work, env).stdout
        status = {p[1]: p[-1] for p in map(str.split, out.splitlines())
                  if len(p) > 2 and p[1] in names}
        if len(status) == len(names) and all(s in ("Success", "Failed") for s in status.values()):
            break
        assert time.monotonic() < deadline, f"queue not done after {timeout_s} s:\n{out}"
        time.sleep(5)
    for name, state in status.items():
        assert state == "Success", run(["dvc", "queue", "logs", name], work, env).stdout[-3000:]


def _set_args(over: dict) -> list[str]:
    return [a for sec, kv in over.items() for k, v in kv.items()
            for a in ("-S", f"{sec}.{k}={json.dumps(v)}")]


def test_sweeps_queued_and_in_the_workspace(origin, machine_a):
    from mlflow.tracking import MlflowClient

    src, env = origin
    s, env = clone(src, src.parent / "s", env)
    # a warm cache (as on a machine that already ran the pipeline): untouched stages restore
    shutil.copytree(machine_a[0] / ".dvc/cache", s / ".dvc/cache")
    committed = yaml.safe_load((s / "params.yaml").read_text())
    # a sweep reruns only the stages reading its keys
    swept = {*(f"profile-{b}@{MODEL}" for b in BACKENDS), "aggregate"}
    try:
        for name, over in SWEEPS.items():
            run(["dvc", "exp", "run", "--queue", "-n", name, *_set_args(over)], s, env)
        run(["dvc", "queue", "start"], s, env)
        _wait_for_queue(s, env, SWEEPS)
        for name in SWEEPS:
            assert ran(run(["dvc", "queue", "logs", name], s, env)) == swept
        name, over = WORKSPACE_SWEEP
        single = run(["dvc", "exp", "run", "-n", name, *_set_args(over)], s, env)
    finally:
        subprocess.run(["dvc", "queue", "stop", "--kill"], cwd=s, env=env, capture_output=True,
                       timeout=120)
    assert ran(single) == swept
    # every deployment (transformers, llama.cpp types) ran both swept batch sizes
    for b in BACKENDS:
        prof = json.loads((s / f"metrics/profile/{MODEL}.{b}.json").read_text())
        assert sorted({r["batch_size"] for r in prof["results"] if r["status"] == "ok"}) == [1, 2], b

    # summary keys are rows.<deployment key>.<field>: the headline deployment follows the swept dtype
    keep = rf"^(Experiment|profile\.(batch_sizes|dtypes)|rows\.{MODEL}\..*\.decode_tps_p50)$"
    show = run(["dvc", "exp", "show", "--md", "--drop", ".*", "--keep", keep], s, env).stdout
    rows = _md_rows(show)
    experiments = {**SWEEPS, WORKSPACE_SWEEP[0]: WORKSPACE_SWEEP[1]}
    swept_params = {n: merge(json.loads(json.dumps(committed)), o) for n, o in experiments.items()}
    for name, params in swept_params.items():
        want = (str(params["profile"]["batch_sizes"]), str(params["profile"]["dtypes"]))
        assert (rows[name]["profile.batch_sizes"], rows[name]["profile.dtypes"]) == want, show
        cols = [k for k, v in rows[name].items()
                if k.startswith(f"rows.{MODEL}.") and k.endswith("decode_tps_p50") and v not in ("", "-")]
        assert cols and all(float(rows[name][k]) > 0 for k in cols), show

    # queued runs ran in .dvc/tmp/exps/tmpXXXX (deleted afterwards): their MLflow runs and
    # artifacts must be in this repo's mlflow.db and mlartifacts/, found by their params hash
    runs = _runs(MlflowClient(tracking_uri=f"sqlite:///{s / 'mlflow.db'}"))
    for name, params in swept_params.items():
        h = params_hash(parse_params(params))
        mine = {r.info.run_name: r for r in runs if r.data.tags.get("params_hash") == h}
        assert set(mine) == swept, (name, sorted(mine))
        got = mine["aggregate"].data.metrics
        shown = [k for k, v in rows[name].items()
                 if k.startswith(f"rows.{MODEL}.") and k.endswith("decode_tps_p50") and v not in ("", "-")]
        for k in shown:  # the same number in MLflow and in dvc exp show
            assert got[k] == pytest.approx(float(rows[name][k]), rel=1e-3), (k, sorted(got)[:20])
        for r in mine.values():
            folder = Path(r.info.artifact_uri.removeprefix("file://"))
            assert folder.is_relative_to(s / "mlartifacts") and any(folder.iterdir()), r.info.artifact_uri
