"""params.yaml validation: the repo's params load; each malformed one names its dotted key."""
import subprocess
import sys

import pytest
import yaml

from llmbench.config import load_params, parse_params
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
