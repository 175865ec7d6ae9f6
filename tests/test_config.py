"""params.yaml validation: the repo's params load; each malformed one names its dotted key."""
import subprocess
import sys

import pytest
import yaml

import re
import typing

from llmbench import spec
from llmbench.config import PRESETS, Profile, ResolvedProfile, load_params, parse_params
from llmbench.errors import UserError


def base() -> dict:
    return {"roster": ["tiny"], "models": {"tiny": {"source": "random", "config": "tiny-gpt2"}}}


def test_repo_params_load(repo):
    p = load_params(repo / "params.yaml")
    assert set(p.roster) <= set(p.models)
    assert p.models["smollm2"].source == "gguf-package"
    with pytest.raises(Exception):
        p.infer.batch_size = 3  # frozen


def _set(d: dict, dotted: str, value):
    keys = dotted.split(".")
    for k in keys[:-1]:
        d = d.setdefault(k, {})
    d[keys[-1]] = value


@pytest.mark.parametrize("key,value,expected", [
    ("models.tiny.source", "gguf_pkg",
     "params.yaml: models.tiny.source: unknown source 'gguf_pkg' (expected one of: gguf-package, hub, local, random)"),
    ("models.tiny.colour", "red", "params.yaml: models.tiny.colour: unknown key"),
    ("infer.batch_size", "eight", "params.yaml: infer.batch_size: "),
    ("infer.batch_size", 0, "params.yaml: infer.batch_size: "),
    ("infer.btach_size", 8, "params.yaml: infer.btach_size: unknown key"),
    ("profile.preset", "huge", "params.yaml: profile.preset: "),
    ("roster", ["tiny", "ghost"], "params.yaml: roster: model 'ghost' is not defined under models"),
    ("dataset.source", "url", "params.yaml: dataset: source 'url' needs dataset.url and dataset.sha256"),
    ("prompts.variants", ["plain", "poem"], "params.yaml: prompts.variants.1: "),
    ("references.ghost", "org/ghost", "params.yaml: references: model 'ghost' is not defined under models"),
    ("profile.max_iterations", 2, "params.yaml: profile.max_iterations: 2 is below min_iterations 3"),
    ("profile.batch_sizes", [], "params.yaml: profile.batch_sizes: "),
    ("profile.batch_sizes", [1, 0], "params.yaml: profile.batch_sizes.1: "),
    ("profile.device", "tpu", "params.yaml: profile.device: "),
    ("profile.large_model_overrides", {"warmup": 0}, "params.yaml: profile.large_model_overrides.warmup: unknown key"),
    ("report.latency", "tpot_p50_ms", "params.yaml: report.latency: "),
    ("gate.confidence", 1.0, "params.yaml: gate.confidence: "),
    ("dataset.timeout_s", -1, "params.yaml: dataset.timeout_s: "),
])
def test_malformed_params_name_the_key(key, value, expected):
    raw = base()
    _set(raw, key, value)
    with pytest.raises(UserError) as err:
        parse_params(raw)
    msg = str(err.value)
    assert msg.startswith(expected), msg
    assert "\n" not in msg


def test_missing_required_key():
    raw = base()
    del raw["models"]["tiny"]["config"]
    with pytest.raises(UserError, match=r"^params.yaml: models.tiny.config: required key is missing$"):
        parse_params(raw)


def test_stage_exits_2_with_one_line(tmp_path, repo):
    raw = base()
    raw["models"]["tiny"]["source"] = "gguf_pkg"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    proc = subprocess.run([sys.executable, "-m", "stages.generate_prompts"], cwd=tmp_path,
                          capture_output=True, text=True, env={"PYTHONPATH": str(repo), "PATH": "/usr/bin"})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: params.yaml: models.tiny.source: unknown source 'gguf_pkg' "
        "(expected one of: gguf-package, hub, local, random)"]
    assert not (tmp_path / "data").exists()  # nothing written


def test_model_name_with_a_dot_is_refused():
    # DVC would read models.tiny-1.1b as a nested key and fail mid-pipeline
    raw = base()
    raw["models"]["tiny-1.1b"] = {"source": "random", "config": "tiny-gpt2"}
    with pytest.raises(UserError, match=r"^params.yaml: models.tiny-1.1b: model names may use letters"):
        parse_params(raw)


def test_resolved_profile_is_the_preset_with_overrides():
    r = Profile().resolved()
    assert isinstance(r, ResolvedProfile) and r.preset == "cpu-small"
    assert r.model_dump(exclude={"preset", "large_model_overrides"}) == {
        k: tuple(v) if isinstance(v, list) else v for k, v in PRESETS["cpu-small"].items()
        if k != "large_model_overrides"}
    p = Profile(preset="llm-perf", warmup=2, threads=None).resolved()
    assert (p.input_lens, p.output_len, p.warmup, p.min_iterations, p.min_duration_s) == ((256,), 64, 2, 10, 10.0)
    assert p.threads is None and p.max_iterations is None  # None here means "no cap" / "torch default"
    # every key of ResolvedProfile is either a preset key or `preset`; a preset sets them all
    for preset in PRESETS.values():
        assert set(preset) | {"preset"} == set(ResolvedProfile.model_fields)
    assert Profile(device="cuda:1").resolved().device == "cuda:1"
    # the preset's own max_iterations (200) vs a raised min_iterations: the merge is checked too
    with pytest.raises(UserError, match=r"^profile\.max_iterations: 200 is below min_iterations 500$"):
        Profile(min_iterations=500).resolved()


def test_large_model_grid():
    r = Profile(large_model_params=1000).resolved()
    small, reduced = r.for_model(1000)
    assert small is r and not reduced
    big, reduced = r.for_model(1001)
    assert reduced and (big.batch_sizes, big.attentions, big.dtypes) == ((1,), ("sdpa",), ("bfloat16",))
    assert (big.input_lens, big.output_len) == (r.input_lens, r.output_len)  # keys not overridden stay
    assert r.for_model(None) == (r, False)  # unknown size: full grid
    custom = Profile(large_model_params=10, batch_sizes=[1, 4],
                     large_model_overrides={"dtypes": ["bfloat16"]}).resolved()
    assert custom.for_model(11)[0].dtypes == ("bfloat16",) and custom.for_model(11)[0].batch_sizes == (1, 4)
    assert Profile(preset="llm-perf").resolved().for_model(10**12)[1] is False  # no cap in llm-perf


def test_references_and_paths(repo):
    p = load_params(repo / "params.yaml")
    assert p.references["smollm2"] == "HuggingFaceTB/SmolLM2-135M"
    assert all(not hasattr(m, "reference_id") for m in p.models.values())
    paths = p.paths
    assert str(paths.profile_json("smollm2", "llamacpp")) == f"{paths.profile}/smollm2.llamacpp.json"
    assert str(paths.infer_json("a", "b")) == f"{paths.infer}/a.b.json"
    assert str(paths.evaluate_json("a", "b")) == f"{paths.evaluate}/a.b.json"
    assert str(paths.infer_jsonl("a", "b")) == f"{paths.infer_outputs}/a.b.jsonl"
    assert str(paths.evaluate_jsonl("a", "b")) == f"{paths.evaluate_outputs}/a.b.jsonl"
    assert str(paths.prepared("a")) == f"{paths.models}/a"
    assert str(paths.report_md) == f"{paths.reports}/report.md" and str(paths.summary_json) == paths.summary
    # dvc.yaml spells each of them as ${paths.x}, never the folder itself
    dvc = (repo / "dvc.yaml").read_text()
    stages = dvc.split("\nplots:")[0]
    for key in ("profile", "infer", "evaluate", "infer_outputs", "evaluate_outputs", "summary", "models",
                "prompts", "reference", "reports"):
        assert "${paths." + key + "}" in stages, key
        assert not re.search(r"(?<![\w/.])" + re.escape(getattr(paths, key)) + r"(?![\w.])", stages), key


def test_report_latency_choices_are_the_spec_latencies():
    from llmbench.config import Report

    assert typing.get_args(Report.model_fields["latency"].annotation) == spec.LATENCIES
    assert Report().latency in spec.LATENCIES
