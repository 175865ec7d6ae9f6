"""The defect matrix: every params section and every file a stage reads x a defect kind (empty,
truncated, non-UTF-8, missing field/column, wrong type, duplicate, beyond the model's context or
the machine, empty experiment name, bad device). Each case runs in-process, through the entry a
user hits (`python -m llmbench.check`, a stage's cli.run_stage, `llmbench.config ci-args`) and
asserts: non-zero exit, exactly one error line naming the key/file/model, no traceback, the stage
body never reached, nothing lost (earlier outputs untouched) and no MLflow run or spool."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from llmbench import check, cli
from llmbench.config import Dataset
from llmbench.reference import fetch

REPO = Path(__file__).resolve().parents[1]
MODEL = "tiny-gpt2"
PER_MODEL = ("prepare", "infer", "profile", "evaluate")
PER_BACKEND = ("infer", "profile", "evaluate")
SENTINELS = {"reports/report.md": "# the last good report\n", "metrics/summary.json": '{"rows": {}}\n'}
PROMPTS = "data/prompts/prompts.jsonl"
MANIFEST = f"data/models/{MODEL}/llmbench_model.json"
CONFIG = f"data/models/{MODEL}/config.json"
REF_CSV, REF_JSON = "data/reference/reference.csv", "data/reference/reference.json"


def _prompt(i: int, **kw) -> dict:
    return {"id": f"p{i}", "bucket": 16, "variant": "plain", "template": "explain", "topic": "tides",
            "n_tokens": 12, "text": f"Explain tides {i}.", "sha256": "0" * 64, **kw}


def _jsonl(rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


@pytest.fixture(scope="module")
def reference_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "reference"
    fetch(Dataset(), out)  # the bundled table, normalised as the fetch-dataset stage writes it
    return out


@pytest.fixture
def repo(tmp_path, monkeypatch, reference_dir) -> Path:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["roster"], raw["ci_roster"] = [MODEL], [MODEL]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    files = {PROMPTS: _jsonl(_prompt(i) for i in range(4)),
             MANIFEST: json.dumps({"name": MODEL, "source": "random", "weights": "random",
                                   "tokenizer": "gpt2", "spec": {}}),
             CONFIG: (REPO / "src/llmbench/configs/tiny-gpt2.json").read_text(), **SENTINELS}
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    shutil.copytree(reference_dir, tmp_path / "data/reference")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LLMBENCH_PARAMS", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


# ----------------------------------------------------------------- how a case mutates the repo
def setp(dotted: str, value):
    def mutate(root: Path):
        raw = yaml.safe_load((root / "params.yaml").read_text())
        node, keys = raw, dotted.split(".")
        for k in keys[:-1]:
            if not isinstance(node.get(k), dict):
                node[k] = {}
            node = node[k]
        node[keys[-1]] = value
        (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return mutate


def edit(mapping: dict):
    def mutate(root: Path):
        raw = yaml.safe_load((root / "params.yaml").read_text())
        raw.update(mapping)
        (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return mutate


def write(rel: str, data: str | bytes):
    def mutate(root: Path):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return mutate


def truncate(rel: str, keep: float = 0.5):
    def mutate(root: Path):
        blob = (root / rel).read_bytes()
        (root / rel).write_bytes(blob[:int(len(blob) * keep)])
    return mutate


def reference_without(column: str):
    """A hand-edited reference table whose sha256 was updated too: only the columns are wrong."""
    def mutate(root: Path):
        lines = (root / REF_CSV).read_text().splitlines()
        cols = lines[0].split(",")
        i = cols.index(column)
        csv = "".join(",".join(c for j, c in enumerate(line.split(",")) if j != i) + "\n" for line in lines)
        (root / REF_CSV).write_text(csv)
        meta = json.loads((root / REF_JSON).read_text())
        meta["sha256"] = hashlib.sha256(csv.encode()).hexdigest()
        (root / REF_JSON).write_text(json.dumps(meta))
    return mutate


def reference_duplicated(root: Path):
    lines = (root / REF_CSV).read_text().splitlines()
    csv = "\n".join([*lines, lines[1]]) + "\n"
    (root / REF_CSV).write_text(csv)
    meta = json.loads((root / REF_JSON).read_text())
    meta["sha256"] = hashlib.sha256(csv.encode()).hexdigest()
    (root / REF_JSON).write_text(json.dumps(meta))


NOT_UTF8 = b"\xff\xfe\x00 caf\xe9"

# (id: section-or-file/defect, entry, mutation, what the error line must name)
CASES = [
    # params.yaml as a file
    ("params.yaml/empty", "check", write("params.yaml", ""), "params.yaml"),
    ("params.yaml/truncated", "check", truncate("params.yaml", 0.02), "params.yaml"),
    ("params.yaml/non-utf8", "infer", write("params.yaml", NOT_UTF8), "params.yaml"),
    ("params.yaml/unknown-section", "check", edit({"profiles": {"preset": "cpu-small"}}), "profiles"),
    # every params section
    ("roster/empty", "check", edit({"roster": []}), "roster"),
    ("roster/duplicate", "check", edit({"roster": [MODEL, MODEL]}), "roster"),
    ("roster/wrong-type", "check", edit({"roster": 5}), "roster"),
    ("ci_roster/unknown-model", "check", edit({"ci_roster": ["nope"]}), "ci_roster"),
    ("ci_roster/duplicate", "check", edit({"ci_roster": [MODEL, MODEL]}), "ci_roster"),
    ("ci_overrides/key-not-in-params", "config", edit({"ci_overrides": {"profile.nope": 3}}),
     "ci_overrides.profile.nope"),
    ("ci_overrides/wrong-type", "check", edit({"ci_overrides": {"profile.warmup": [1]}}), "ci_overrides"),
    ("models/missing-field", "check", setp(f"models.{MODEL}", {"source": "random"}), f"models.{MODEL}.config"),
    ("models/wrong-type", "check", setp(f"models.{MODEL}.config", 3), f"models.{MODEL}.config"),
    ("models/unknown-config", "prepare", setp(f"models.{MODEL}.config", "gpt-17"), f"models.{MODEL}.config"),
    ("models/local-path-missing", "check",
     setp(f"models.{MODEL}", {"source": "local", "path": "/nonexistent/model"}), f"models.{MODEL}.path"),
    ("models/package-missing", "prepare",
     setp(f"models.{MODEL}", {"source": "gguf-package", "package": "no_such_pkg", "file": "x.gguf"}),
     f"models.{MODEL}.package"),
    ("models/hub-offline-uncached", "check",
     setp(f"models.{MODEL}", {"source": "hub", "id": "nobody/nothing", "revision": "main"}), f"models.{MODEL}"),
    ("references/unknown-model", "check", edit({"references": {"nope": "x/y"}}), "references"),
    ("paths/wrong-type", "check", setp("paths.prompts", [1]), "paths.prompts"),
    ("tracking/empty-experiment", "check", setp("tracking.experiment", ""), "tracking.experiment"),
    ("tracking/blank-experiment", "aggregate", setp("tracking.experiment", "  "), "tracking.experiment"),
    ("network/wrong-type", "check", edit({"network": "maybe"}), "network"),
    ("dataset/missing-field", "check", setp("dataset.source", "url"), "dataset"),
    ("prompts/empty-list", "check", setp("prompts.buckets", []), "prompts.buckets"),
    ("prompts/wrong-type", "check", setp("prompts.n", "many"), "prompts.n"),
    ("infer/beyond-context", "infer", setp("infer.max_new_tokens", 5000), "infer.max_new_tokens"),
    ("infer/beyond-context-preflight", "check", setp("infer.max_new_tokens", 5000), "infer.max_new_tokens"),
    ("infer/beyond-machine", "check", setp("infer.batch_size", 10 ** 6), "infer.batch_size"),
    ("infer/threads-beyond-machine", "infer", setp("infer.threads", 4096), "infer.threads"),
    ("profile/empty-list", "check", setp("profile.dtypes", []), "profile.dtypes"),
    ("profile/wrong-type", "check", setp("profile.batch_sizes", "big"), "profile.batch_sizes"),
    ("profile/duplicate", "check", setp("profile.batch_sizes", [1, 1]), "profile.batch_sizes"),
    ("profile/beyond-context", "profile", setp("profile.input_lens", [2000]), "profile.input_lens"),
    ("profile/beyond-machine", "check", setp("profile.batch_sizes", [10 ** 8]), "profile.batch_sizes"),
    ("profile/bad-device-pattern", "check", setp("profile.device", "gpu"), "profile.device"),
    ("profile/device-not-present", "profile", setp("profile.device", "cuda:7"), "profile.device"),
    ("backends/threads-beyond-machine", "profile", setp("backends.llamacpp.threads", 4096),
     "backends.llamacpp.threads"),
    ("evaluate/empty-list", "check", setp("evaluate.tasks", []), "evaluate.tasks"),
    ("evaluate/missing-folder", "evaluate", setp("evaluate.include_path", "no/such/tasks"),
     "evaluate.include_path"),
    ("cost/out-of-range", "check", setp("cost.usd_per_hour", -1), "cost.usd_per_hour"),
    ("budget/wrong-type", "check", setp("budget.max_rss_mib", "lots"), "budget.max_rss_mib"),
    ("report/unknown-value", "check", setp("report.latency", "fast"), "report.latency"),
    ("gate/out-of-range", "check", setp("gate.confidence", 2), "gate.confidence"),
    ("failures/wrong-type", "check", setp("failures.allow", "sometimes"), "failures.allow"),
    # the prompts file (infer and profile read it)
    ("prompts.jsonl/empty", "infer", write(PROMPTS, ""), PROMPTS),
    ("prompts.jsonl/truncated", "profile", truncate(PROMPTS, 0.9), PROMPTS),
    ("prompts.jsonl/non-utf8", "infer", write(PROMPTS, NOT_UTF8), PROMPTS),
    ("prompts.jsonl/missing-field", "infer", write(PROMPTS, _jsonl([{"id": "p0", "variant": "plain"}])),
     "'text'"),
    ("prompts.jsonl/wrong-type", "profile", write(PROMPTS, _jsonl([_prompt(0, text=5)])), "'text'"),
    ("prompts.jsonl/not-an-object", "infer", write(PROMPTS, "[1, 2]\n"), PROMPTS),
    ("prompts.jsonl/duplicate", "infer", write(PROMPTS, _jsonl([_prompt(0), _prompt(0)])), "duplicate"),
    ("prompts.jsonl/beyond-context", "infer", write(PROMPTS, _jsonl([_prompt(0, n_tokens=1020)])),
     "infer.max_new_tokens"),
    # the prepared model folder (infer, profile and evaluate read it)
    ("manifest/empty", "profile", write(MANIFEST, ""), "llmbench_model.json"),
    ("manifest/wrong-type", "evaluate", write(MANIFEST, json.dumps({"weights": 3})), "llmbench_model.json"),
    ("manifest/missing", "infer", lambda root: (root / MANIFEST).unlink(), "llmbench_model.json"),
    ("config.json/truncated", "profile", truncate(CONFIG), "config.json"),
    ("config.json/non-utf8", "infer", write(CONFIG, NOT_UTF8), "config.json"),
    ("config.json/wrong-type", "infer", write(CONFIG, "[]"), "config.json"),
    # the reference table and the result files (the aggregate reads them)
    ("reference.csv/missing-column", "aggregate", reference_without("protocol"), "reference.csv"),
    ("reference.csv/hand-edited", "aggregate", truncate(REF_CSV, 0.8), "reference.csv"),
    ("reference.csv/non-utf8", "aggregate", write(REF_CSV, NOT_UTF8), "reference.csv"),
    ("reference.csv/duplicate", "aggregate", reference_duplicated, "duplicate"),
    ("reference.json/empty", "aggregate", write(REF_JSON, ""), "reference.json"),
    ("reference.json/truncated", "aggregate", truncate(REF_JSON), "reference.json"),
    ("profile-result/truncated", "aggregate", write(f"metrics/profile/{MODEL}.llamacpp.json", '{"schema_version": 1, '),
     f"metrics/profile/{MODEL}.llamacpp.json"),
    ("infer-result/wrong-type", "aggregate", write(f"metrics/infer/{MODEL}.llamacpp.json", '{"schema_version": "x"}'),
     f"metrics/infer/{MODEL}.llamacpp.json"),
    ("evaluate-result/non-utf8", "aggregate", write(f"metrics/evaluate/{MODEL}.llamacpp.json", NOT_UTF8),
     f"metrics/evaluate/{MODEL}.llamacpp.json"),
    ("local-model-config/non-utf8", "check",
     lambda root: (setp(f"models.{MODEL}", {"source": "local", "path": str(root / "mine")})(root),
                   write("mine/config.json", NOT_UTF8)(root)), "config.json"),
]


def _run(entry: str, monkeypatch) -> tuple[int, bool]:
    called = []
    if entry == "check":
        return check.main([]), False
    if entry == "config":
        return cli.config_main(["ci-args"]), False
    argv = [MODEL, "llamacpp"] if entry in PER_BACKEND else [MODEL] if entry in PER_MODEL else []
    monkeypatch.setattr(sys, "argv", ["stage", *argv])
    try:
        cli.run_stage(entry, lambda *a: called.append(a), per_model=entry in PER_MODEL,
                      per_backend=entry in PER_BACKEND)
        code = 0
    except SystemExit as exc:
        code = exc.code
    return code, bool(called)


@pytest.mark.parametrize("entry", ["check", "config", *PER_MODEL, "aggregate"])
def test_clean_repo_passes(repo, entry, monkeypatch, capsys):
    # the fixture is a valid repo: every failure below comes from its one defect
    code, called = _run(entry, monkeypatch)
    assert code == 0, capsys.readouterr().err
    assert called or entry in ("check", "config")


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_defect(repo, case, monkeypatch, capsys):
    _, entry, mutate, names = case
    mutate(repo)
    before = {rel: (repo / rel).read_text() for rel in SENTINELS}
    code, called = _run(entry, monkeypatch)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error")]
    assert code == 2, err
    assert len(errors) == 1 and names in errors[0], err
    assert "Traceback" not in err and not called
    assert {rel: (repo / rel).read_text() for rel in SENTINELS} == before  # nothing lost
    assert not (repo / "mlflow.db").exists() and not (repo / ".llmbench").exists()  # no MLflow run
    if entry in PER_MODEL and not case[0].startswith("params.yaml"):  # the failure is recorded for the report, outside the stage's outputs
        stage = f"{entry}-llamacpp" if entry in PER_BACKEND else entry
        rec = json.loads((repo / f"metrics/failures/{stage}@{MODEL}.json").read_text())
        assert rec["exit_code"] == 2 and rec["phase"] == "check" and names in rec["reason"]


# ----------------------------------------------------------------- sweeps on the shipped params
def _readme_overrides() -> list[list[str]]:
    """The -S values of every `dvc exp run` line in the README (shell loop variables filled in)."""
    out = []
    for line in (REPO / "README.md").read_text().splitlines():
        if "dvc exp run" in line and " -S " in line:
            words = shlex.split(line.split("dvc exp run", 1)[1].split("#")[0]
                                .replace("$b", "4").replace("$d", "bfloat16"))
            sets = [words[i + 1] for i, w in enumerate(words) if w in ("-S", "--set-param")]
            out.append([s for s in sets if not re.search(r"\$\(", s)])
    return [o for o in out if o]


def _ci_overrides() -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "LLMBENCH_PARAMS"}
    proc = subprocess.run([sys.executable, "-m", "llmbench.config", "ci-args"], cwd=REPO, env=env,
                          capture_output=True, text=True, check=True)
    words = proc.stdout.split()
    return [words[i + 1] for i, w in enumerate(words) if w == "-S"]


@pytest.mark.parametrize("overrides", [*_readme_overrides(), "ci-args"], ids=lambda o: str(o)[:60])
def test_sweeps_resolve_on_the_shipped_params(tmp_path, overrides):
    """DVC's own -S parser (struct mode: an unknown key is "not in struct") on a copy of the
    shipped params.yaml, then our validation of the result."""
    from dvc.utils.hydra import apply_overrides

    from llmbench.config import load_params

    overrides = _ci_overrides() if overrides == "ci-args" else overrides
    assert overrides
    params = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", params)
    apply_overrides(params, overrides)
    loaded = load_params(params)
    for o in overrides:  # the override took effect
        key, _, value = o.partition("=")
        node = yaml.safe_load(params.read_text())
        for part in key.split("."):
            node = node[part]
        assert node == yaml.safe_load(value)
    assert loaded.profile.resolved()


def test_an_unknown_sweep_key_is_refused_by_dvc(tmp_path):
    # the check above can fail: DVC refuses a key params.yaml does not spell out
    from dvc.utils.hydra import apply_overrides

    params = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", params)
    with pytest.raises(Exception, match="set-param"):
        apply_overrides(params, ["profile.no_such_key=3"])
