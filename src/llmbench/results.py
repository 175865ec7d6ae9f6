"""Typed results: one pydantic model per file the pipeline writes, written and read through it.

    metrics/profile/<m>.<b>.json ProfileResult      metrics/infer/<m>.<b>.json InferResult
    metrics/evaluate/<m>.<b>.json EvaluateResult     metrics/summary.json       Summary

Every result and every row carries `status` (ok | skipped | unsupported | failed) and a
one-line `reason` when not ok, and names what was measured by a Deployment, whose `key` is the
one spelling MLflow metric names, summary.json keys and report rows derive from (`row_key`).
Numbers keep SI units (llmbench.spec); JSON Schemas: `python -m llmbench.results export-schemas`.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from llmbench import spec
from llmbench.errors import UserError

SCHEMA_VERSION = 1
Status = Literal["ok", "skipped", "unsupported", "failed"]
Weights = Literal["pretrained", "random"]
SCHEMA_DIR = Path(__file__).resolve().parents[2] / "docs" / "schema"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Deployment(_Strict):
    """What was measured: model x backend x precision (+ attention for transformers)."""

    model: str = Field(description="roster name (params.yaml models.<name>), e.g. smollm2")
    backend: str = Field("transformers", description="runtime id without dots: transformers | llamacpp")
    precision: str = Field(description="float32 | bfloat16 | float16, or a GGUF type (Q4_1, Q8_0, F16)")
    attention: str | None = Field(None, description="attention implementation (transformers only): sdpa | eager")

    @property
    def key(self) -> str:
        """'smollm2.transformers.bfloat16.sdpa', 'smollm2.llamacpp.Q4_1'."""
        return ".".join(p for p in (self.model, self.backend, self.precision, self.attention) if p)


def row_key(deployment: Deployment, batch_size: int | None = None, input_len: int | None = None) -> str:
    """The one spelling of a report row / summary.json key / MLflow metric prefix: the deployment
    key, plus 'b{batch}.in{n_in}' for a per-shape number."""
    if batch_size is None:
        return deployment.key
    return f"{deployment.key}.b{batch_size}.in{input_len}"


class _Statused(_Strict):
    status: Status = Field(description="ok | skipped | unsupported | failed")
    reason: str | None = Field(None, description="one line; set whenever status is not ok")

    @model_validator(mode="after")
    def _reason_when_not_ok(self):
        if self.status != "ok" and not self.reason:
            raise ValueError(f"status '{self.status}' needs a reason")
        return self


def _require_version(schema: dict) -> None:
    schema["required"] = sorted({*schema.get("required", []), "schema_version"})


class _File(_Strict):
    """A result file. schema_version defaults when code builds one, but a file must carry it."""

    model_config = ConfigDict(json_schema_extra=_require_version)
    schema_version: Literal[1] = Field(SCHEMA_VERSION, description="bumped on any incompatible change")

    @model_validator(mode="before")
    @classmethod
    def _file_has_version(cls, data, info):
        if (info.context or {}).get("file") and isinstance(data, dict) and "schema_version" not in data:
            raise ValueError("schema_version: required field is missing")
        return data


class _Versioned(_File, _Statused):
    pass


class Stats(_Strict):
    """Statistics of raw samples (numpy linear percentiles, population std); None when n == 0."""

    p50: float | None
    p90: float | None
    p95: float | None
    p99: float | None
    mean: float | None
    std: float | None
    cv: float | None = Field(description="std / mean")
    n: int = Field(ge=0)
    values: list[float] = Field(description="the raw samples, in measurement order")


def _stats(name: str):
    return Field(description=spec.describe(name))


def _opt(name: str):
    return Field(None, description=spec.describe(name))


class Memory(_Strict):
    rss_baseline_mib: float | None = _opt("rss_baseline_mib")
    rss_peak_mib: float | None = _opt("rss_peak_mib")
    rss_anon_peak_mib: float | None = _opt("rss_anon_peak_mib")
    rss_file_peak_mib: float | None = _opt("rss_file_peak_mib")
    weights_mib: float | None = _opt("weights_mib")
    kv_cache_mib: float | None = _opt("kv_cache_mib")
    cuda_max_allocated_mib: float | None = _opt("cuda_max_allocated_mib")
    cuda_max_reserved_mib: float | None = _opt("cuda_max_reserved_mib")


class Roofline(_Strict):
    achieved_gbps: float = _stats("achieved_gbps")
    ratio: float = Field(description="achieved_gbps / copy_gbps (1 = memory-bound at the measured peak)")


class Fingerprint(_Strict):
    """Where the numbers were measured."""

    cpu: str
    cores: int
    torch_threads: int
    ram_gib: float = Field(description="total RAM [GiB]")
    os: str
    python: str
    torch: str
    transformers: str
    device: str = Field(description="'cpu' or the CUDA device name")
    llama_cpp: str | None = Field(None, description="llama-cpp-python version and its build's system "
                                  "info, when a llamacpp deployment was measured")


class ModelFacts(_Strict):
    """The model as loaded (llmbench.models.ModelInfo)."""

    name: str
    source: str
    weights: Weights
    n_params: int = Field(description="parameter count, tied embeddings counted once")
    weight_bytes: int = Field(description="bytes of parameters and buffers at `dtype` [bytes]")
    dtype: str
    architecture: str
    tokenizer: str

    @classmethod
    def of(cls, info) -> "ModelFacts":
        return cls(**{k: getattr(info, k) for k in cls.model_fields})


class ProfileRow(_Statused):
    """One deployment x shape of the sweep."""

    deployment: Deployment
    batch_size: int = Field(ge=1)
    input_len: int = Field(ge=1, description="prompt tokens per sequence")
    output_len: int = Field(ge=1, description="generated tokens per sequence (fixed)")
    iterations: int = Field(ge=0, description="measured generate() calls (warmup excluded)")
    load_s: float | None = _opt("load_s")
    ttft_s: Stats = _stats("ttft_s")
    tpot_s: Stats = _stats("tpot_s")
    itl_s: Stats = _stats("itl_s")
    e2e_s: Stats = _stats("e2e_s")
    decode_tps: Stats = _stats("decode_tps")
    prefill_tps: Stats = _stats("prefill_tps")
    memory: Memory
    roofline: Roofline | None = Field(None, description="batch 1 only")

    @property
    def key(self) -> str:
        return row_key(self.deployment, self.batch_size, self.input_len)


class Headline(_Strict):
    """Which row stands for the model: batch 1 (else smallest), first precision, first attention,
    smallest input; the first ok row of that shape in sweep order."""

    deployment: Deployment
    batch_size: int
    input_len: int


class ProfileProtocol(_Strict):
    preset: str
    warmup: int
    min_iterations: int
    min_duration_s: float = Field(description="[s]")
    max_iterations: int | None
    threads: int | None
    device: str
    bandwidth_mib: int = Field(description="copy size of the bandwidth measurement, 0 = skipped [MiB]")
    large_model_params: int | None
    batch_sizes: list[int] = Field(description="the grid actually swept (after grid_reduced)")
    input_lens: list[int]
    output_len: int
    dtypes: list[str]
    attentions: list[str]
    backends: list[str] = Field(default_factory=list, description="the runtimes swept (llmbench.backends)")
    grid_reduced: bool = Field(description="large_model_overrides applied (n_params > large_model_params)")
    notes: list[str]
    omp_wait_policy: str | None
    loadavg_1m: list[float] = Field(description="1-minute load average before and after the sweep")


class ProfileResult(_Versioned):
    """metrics/profile/<model>.<backend>.json"""

    model: str
    weights: Weights
    info: ModelFacts
    fingerprint: Fingerprint
    copy_gbps: float | None = _opt("copy_gbps")
    results: list[ProfileRow]
    headline: Headline | None
    protocol: ProfileProtocol

    def headline_row(self) -> ProfileRow | None:
        h = self.headline
        if h is None:
            return None
        return next((r for r in self.results if (r.deployment, r.batch_size, r.input_len)
                     == (h.deployment, h.batch_size, h.input_len)), None)


def _run_for(runs, deployment: Deployment):
    return next((r for r in runs if r.deployment == deployment), None)


class InferRun(_Statused):
    """The prompts generated on one deployment."""

    deployment: Deployment
    n_prompts: int | None = None
    generated_tokens: int | None = None
    wall_s: float | None = Field(None, description="generation wall time over all prompts [s]")
    gen_tps: float | None = _opt("gen_tps")
    ttft_s: Stats | None = Field(None, description="per request: " + spec.describe("ttft_s"))
    e2e_s: Stats | None = Field(None, description="per request: " + spec.describe("e2e_s"))
    outputs_sha256: str | None = Field(None, description="sha256 over the outputs' sha256s, in prompt order")


class InferResult(_Versioned):
    """metrics/infer/<model>.<backend>.json: one run per deployment (status ok when any run is ok)."""

    model: str
    weights: Weights
    batch_size: int
    max_new_tokens: int
    runs: list[InferRun] = Field(default_factory=list)

    def run(self, deployment: Deployment) -> InferRun | None:
        return _run_for(self.runs, deployment)


class TaskScore(_Statused):
    """One lm-eval task (fractions in 0..1, not percent)."""

    acc: float | None
    acc_stderr: float | None
    acc_norm: float | None
    acc_norm_stderr: float | None
    n: int = Field(description="scored items")
    num_fewshot: int | None
    limit: int | None
    suite: Literal["smoke", "standard", "local"]


class EvaluateRun(_Statused):
    """lm-eval's scores of one deployment."""

    deployment: Deployment
    prompt_format: Literal["chat template", "plain"] = Field(
        description="how requests were built: through the tokenizer's chat template (chat: true and "
                    "the model has one) or as plain text; the same on every backend of a model")
    tasks: dict[str, TaskScore] = Field(default_factory=dict)
    wall_s: float | None = Field(None, description="scoring wall time [s]")


class EvaluateResult(_Versioned):
    """metrics/evaluate/<model>.<backend>.json: one run per deployment (status ok when any run is ok)."""

    model: str
    weights: Weights
    lm_eval_version: str
    runs: list[EvaluateRun] = Field(default_factory=list)

    def run(self, deployment: Deployment) -> EvaluateRun | None:
        return _run_for(self.runs, deployment)


class GgufFile(_Statused):
    """One GGUF a model runs on under llamacpp: shipped, converted from HF weights, or requantized."""

    precision: str = Field(description="the deployment's precision: the GGUF type (Q4_K_M), or "
                           "'<type>-from-<shipped type>' when made from a shipped GGUF's weights")
    type_name: str = Field(description="the llama.cpp type asked for (F16, Q8_0, Q4_K_M, ...)")
    origin: Literal["shipped", "converted", "requantized"]
    path: str | None = Field(None, description="the file, relative to the repository root")
    file_type: str | None = Field(None, description="the type the file says it has")
    bits_per_weight: float | None = Field(None, description="effective: tensor bytes * 8 / weights "
                                          "(K-quants fall back on tensor widths not divisible by 256)")
    tensor_bytes: int | None = None
    file_bytes: int | None = Field(None, description="size on disk [bytes]")
    tensor_types: dict[str, int] = Field(default_factory=dict, description="ggml type -> tensors")
    context_length: int | None = Field(None, description="the model's training context [tokens]")
    seconds: float | None = Field(None, description="time to make it (conversion share included) [s]")


class GgufSet(_Versioned):
    """data/gguf/<model>/gguf.json: every GGUF of one model (quantize@<model>)."""

    model: str
    weights: Weights
    converter: str = Field(description="the llama.cpp converter that made the converted files")
    tokenizer: str = Field(description="the tokenizer inside the converted GGUFs")
    files: list[GgufFile]

    def usable(self) -> list[GgufFile]:
        return [f for f in self.files if f.status == "ok" and f.path]


class SummaryRow(_Statused):
    """One report row (numbers in SI units; quality and live in percent)."""

    deployment: Deployment | None = Field(description="the model's headline deployment; null when not profiled")
    n_params: float | None = None
    load_s: float | None = _opt("load_s")
    ttft_s_p50: float | None = _opt("ttft_s")
    tpot_s_p50: float | None = _opt("tpot_s")
    e2e_s_p50: float | None = _opt("e2e_s")
    decode_tps_p50: float | None = _opt("decode_tps")
    rss_peak_mib: float | None = _opt("rss_peak_mib")
    rss_anon_peak_mib: float | None = _opt("rss_anon_peak_mib")
    rss_file_peak_mib: float | None = _opt("rss_file_peak_mib")
    bits_per_weight: float | None = Field(None, description="llamacpp: the GGUF's effective bits per weight")
    usd_per_mtok: float | None = _opt("usd_per_mtok")
    quality: float | None = Field(None, description="the report.quality column [percent]")
    ref_average: float | None = Field(None, description="published average [percent]")
    live: dict[str, float] = Field(default_factory=dict, description="lm-eval task -> score [percent]")
    frontier: int = Field(description="1 when on the Pareto frontier")
    recommended: int = Field(description="1 for the recommendation")


class Summary(_File):
    """metrics/summary.json (keys: results.row_key)."""
    rows: dict[str, SummaryRow]
    frontier_size: int
    n_rows: int
    n_compared: int



MODELS: dict[str, type[BaseModel]] = {"profile": ProfileResult, "infer": InferResult,
                                      "evaluate": EvaluateResult, "summary": Summary,
                                      "gguf": GgufSet}  # data/gguf/<model>/gguf.json
# result models defined elsewhere, imported only to export their schemas (so the stages that
# import this module do not depend on those modules): file name -> "module:class"
EXTERNAL = {"serve": "llmbench.serving.results:ServeResult"}  # metrics/serve/<endpoint>.json
R = TypeVar("R", bound=BaseModel)
_OLD = "; an old or foreign file: rerun its stage (`dvc repro`)"


def read_result(path: str | Path, model: type[R]) -> R:
    """Read a result file; a missing, old or foreign file is a one-line UserError naming the
    file and the first bad field."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"{path}: not found (has its stage run? try `dvc repro`)") from None
    try:
        if "schema_version" not in model.model_fields:
            raise TypeError(f"{model.__name__} is not a result file model")
        return model.model_validate_json(text, context={"file": True})
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = "required field is missing" if err["type"] == "missing" else err["msg"]
        if msg.startswith("Value error, schema_version: "):
            loc, msg = "schema_version", msg.removeprefix("Value error, schema_version: ")
        if err["type"] == "json_invalid":
            msg = f"not valid JSON ({err['msg']})"
        hint = _OLD if loc.startswith("schema_version") else ""
        raise UserError(f"{path}: {loc}: {msg}{hint}") from None


def write_result(path: str | Path, result: BaseModel) -> Path:
    from llmbench.io import write_bytes_atomic

    return write_bytes_atomic(Path(path), (result.model_dump_json(indent=2) + "\n").encode())


def schemas() -> dict[str, str]:
    """file name -> JSON Schema text, as committed under docs/schema/."""
    return {f"{name}.schema.json": json.dumps(m.model_json_schema(), indent=2, sort_keys=True) + "\n"
            for name, m in {**MODELS, **{n: _external(r) for n, r in EXTERNAL.items()}}.items()}


def _external(ref: str) -> type[BaseModel]:
    import importlib
    module, cls = ref.split(":")
    return getattr(importlib.import_module(module), cls)


def export_schemas(out: str | Path = SCHEMA_DIR) -> list[Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in schemas().items():
        (out / name).write_text(text)
        written.append(out / name)
    return written


if __name__ == "__main__":
    args = sys.argv[1:]
    if not args or args[0] != "export-schemas" or len(args) > 2:
        sys.exit("usage: python -m llmbench.results export-schemas [OUT_DIR]")
    for p in export_schemas(*args[1:]):
        print(p)
