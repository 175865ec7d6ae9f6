"""The committed JSON Schemas (docs/schema/): no drift from results.py, real stage outputs
validate against them (with jsonschema, not the pydantic models that wrote them), and an old or
foreign file is a one-line error naming the file and the field."""
from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import jsonschema
import pytest

from llmbench import results
from llmbench.config import parse_params
from llmbench.errors import UserError

SCHEMAS = results.SCHEMA_DIR
REPO = Path(__file__).resolve().parents[1]
BACKENDS = ("transformers", "llamacpp")


def test_committed_schemas_match_the_models(tmp_path):
    written = results.export_schemas(tmp_path)
    assert sorted(p.name for p in written) == sorted(p.name for p in SCHEMAS.glob("*.schema.json"))
    for p in written:
        assert p.read_text() == (SCHEMAS / p.name).read_text(), (
            f"docs/schema/{p.name} is stale: run `python -m llmbench.results export-schemas`")


def test_schema_fields_carry_units():
    prof = json.loads((SCHEMAS / "profile.schema.json").read_text())
    row = prof["$defs"]["ProfileRow"]["properties"]
    assert row["ttft_s"]["description"].endswith("[s]") and row["decode_tps"]["description"].endswith("[tok/s]")
    mem = prof["$defs"]["Memory"]["properties"]
    assert mem["rss_peak_mib"]["description"].endswith("[MiB]")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """A tiny roster through the real stage functions, in-process: a saved random-init GPT-2 as
    a local ('pretrained') model, so infer and evaluate really run, and a random-weights model,
    so they are skipped. Returns {(kind, model, backend): path of the written result}."""
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config

    from llmbench.models import gpt2_tokenizer

    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))  # the stage modules live at the repo root, next to src/
    # the real stage modules, as DVC runs them
    aggregate, evaluate, fetch_dataset, generate_prompts, infer, prepare, profile, quantize = (
        importlib.import_module(f"stages.{n}") for n in ("aggregate", "evaluate", "fetch_dataset",
                                                           "generate_prompts", "infer", "prepare", "profile",
                                                           "quantize"))
    root = tmp_path_factory.mktemp("pipe")
    torch.manual_seed(0)
    saved = root / "saved"
    AutoModelForCausalLM.from_config(GPT2Config(n_layer=1, n_head=2, n_embd=8, n_positions=256)).save_pretrained(saved)
    gpt2_tokenizer().save_pretrained(saved)
    paths = {k: str(root / v) for k, v in {
        "reference": "data/reference", "prompts": "data/prompts.jsonl", "models": "data/models",
        "infer_outputs": "out/infer", "evaluate_outputs": "out/evaluate", "profile": "metrics/profile",
        "infer": "metrics/infer", "evaluate": "metrics/evaluate", "summary": "metrics/summary.json",
        "reports": "reports", "logs": "logs", "gguf": "data/gguf"}.items()}
    params = parse_params({
        "roster": ["tiny", "rnd"],
        "models": {"tiny": {"source": "local", "path": str(saved)},
                   "rnd": {"source": "random", "config": "tiny-gpt2"}},
        "paths": paths, "tracking": {"uri": f"sqlite:///{root / 'mlflow.db'}", "experiment": "schema"},
        "prompts": {"n": 4, "buckets": [8, 16]},
        "infer": {"batch_size": 2, "max_new_tokens": 3, "dtype": "float32", "threads": 1},
        "profile": {"batch_sizes": [1], "input_lens": [8], "output_len": 3, "warmup": 0, "min_iterations": 2,
                    "min_duration_s": 0, "dtypes": ["float32"], "attentions": ["sdpa"], "threads": 1,
                    "bandwidth_mib": 8},
        "evaluate": {"limit": 4, "batch_size": 2},
        "report": {"quality": "llmbench_smoke"},
        # one real conversion: the tiny GPT-2 (8-wide tensors: Q8_0 falls back, which is recorded)
        "backends": {"llamacpp": {"quantizations": ["Q8_0"], "threads": 1}},
    })
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.setenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
        fetch_dataset.main(params)
        generate_prompts.main(params)
        for m in params.roster:
            prepare.main(params, m)
            quantize.main(params, m)
            for b in BACKENDS:
                profile.main(params, m, b)
                infer.main(params, m, b)
                evaluate.main(params, m, b)
        aggregate.main(params)
    p = params.paths
    out = {("summary", None, None): p.summary_json}
    for m in params.roster:
        out[("gguf", m, None)] = p.gguf_json(m)
        for b in BACKENDS:
            out.update({("profile", m, b): p.profile_json(m, b), ("infer", m, b): p.infer_json(m, b),
                        ("evaluate", m, b): p.evaluate_json(m, b)})
    return out


def _validator(kind: str):
    schema = json.loads((SCHEMAS / f"{kind}.schema.json").read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def test_real_outputs_validate_against_the_committed_schemas(pipeline):
    for (kind, *_), path in pipeline.items():
        doc = json.loads(path.read_text())
        errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in _validator(kind).iter_errors(doc)]
        assert not errors, f"{path}: {errors[:3]}"
    # both paths were exercised: real measurements and real skips
    rnd_inf = json.loads(pipeline["infer", "rnd", "llamacpp"].read_text())
    assert rnd_inf["status"] == "skipped"
    # every deployment, one file per backend: transformers at infer.dtype, llamacpp on the converted Q8_0
    for b in BACKENDS:
        tiny_inf = json.loads(pipeline["infer", "tiny", b].read_text())
        assert tiny_inf["status"] == "ok" and [(r["deployment"]["backend"], r["status"])
                                               for r in tiny_inf["runs"]] == [(b, "ok")]
        assert tiny_inf["runs"][0]["gen_tps"] > 0
        tiny_ev = json.loads(pipeline["evaluate", "tiny", b].read_text())
        assert tiny_ev["status"] == "ok" and [r["tasks"]["llmbench_smoke"]["n"] for r in tiny_ev["runs"]] == [4]
        prof = json.loads(pipeline["profile", "rnd", b].read_text())
        assert prof["status"] == "ok" and prof["results"][0]["ttft_s"]["n"] >= 2
        assert {r["deployment"]["backend"] for r in prof["results"]} == {b}
    gguf = json.loads(pipeline["gguf", "rnd", None].read_text())
    assert [(f["precision"], f["origin"], f["status"]) for f in gguf["files"]] == [("Q8_0", "converted", "ok")]
    summary = json.loads(pipeline["summary", None, None].read_text())
    assert set(summary["rows"]) == {f"{m}.{d}" for m in ("tiny", "rnd")
                                    for d in ("transformers.float32.sdpa", "llamacpp.Q8_0")}


def test_schemas_are_not_vacuous(pipeline):
    doc = json.loads(pipeline["profile", "tiny", "transformers"].read_text())
    v = _validator("profile")
    for broken in ({k: val for k, val in doc.items() if k != "status"}, {**doc, "schema_version": 0},
                   {**doc, "results": [{**doc["results"][0], "ttft_s": {"p50": "fast"}}]}):
        assert not v.is_valid(broken)


@pytest.mark.parametrize("edit, field", [
    (lambda d: d.pop("schema_version"), "schema_version"),  # a file from before the schema
    (lambda d: d.update(schema_version=99), "schema_version"),  # from a future version
    (lambda d: d["results"][0].pop("deployment"), "results.0.deployment"),
    (lambda d: d["results"][0].update(dtype="float32"), "results.0.dtype"),  # the old layout's key
])
def test_old_or_foreign_file_is_one_line_naming_file_and_field(pipeline, tmp_path, edit, field):
    doc = json.loads(pipeline["profile", "tiny", "transformers"].read_text())
    edit(doc)
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(UserError) as err:
        results.read_result(path, results.ProfileResult)
    msg = str(err.value)
    assert msg.startswith(f"{path}: {field}: ") and "\n" not in msg, msg


def test_missing_and_non_json_files(tmp_path):
    with pytest.raises(UserError, match=r"not found"):
        results.read_result(tmp_path / "nope.json", results.InferResult)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError) as err:
        results.read_result(tmp_path / "bad.json", results.InferResult)
    assert str(err.value).startswith(f"{tmp_path / 'bad.json'}: ") and "\n" not in str(err.value)


def test_summary_without_version_is_refused(pipeline, tmp_path):
    doc = json.loads(pipeline["summary", None, None].read_text())
    del doc["schema_version"]
    (tmp_path / "summary.json").write_text(json.dumps(doc))
    with pytest.raises(UserError, match=r"summary\.json: schema_version: required field is missing; an old"):
        results.read_result(tmp_path / "summary.json", results.Summary)


def test_readme_vocabulary_is_the_metric_spec():
    from llmbench.spec import METRICS, vocabulary_table

    text = (REPO / "README.md").read_text()
    block = text.split("<!-- spec:vocabulary -->\n", 1)[1].split("\n<!-- /spec:vocabulary -->", 1)[0]
    assert block == vocabulary_table(), "README vocabulary table is stale: paste `python -m llmbench.spec`"
    assert all(f"| `{name}` |" in block for name in METRICS)
