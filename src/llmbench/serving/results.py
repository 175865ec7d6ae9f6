"""The serve stage's result (metrics/serve/<endpoint>.json): every level with its statistics and
the raw per-request samples. Written with model_dump_json, read with model_validate_json."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from llmbench.serving.endpoints import SLO

Status = Literal["ok", "skipped", "unsupported", "failed"]
Profile = Literal["concurrency", "rate"]
TokensSource = Literal["usage", "tokenizer", "chunks"]

# how tokens are counted; the report quotes it beside the figures
TOKENS_NOTE = ("tokens out: the server's usage.completion_tokens when the stream returns usage "
               "(stream_options.include_usage), else the tokenizer's count of the streamed text, "
               "else the number of content chunks. ITL is one gap per content chunk (a chunk with "
               "several tokens gives one, longer gap, as in vLLM bench serve); TPOT = (e2e - TTFT) "
               "/ (tokens out - 1) uses the token count, so it is right either way.")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RequestSample(_Model):
    index: int  # position in the level's plan
    prompt_id: str
    scheduled_s: float  # when it was due, from the level's start
    sent_s: float  # when it was sent (a concurrency slot or the in-flight ceiling may delay it)
    outcome: str  # ok | error:<kind> | timeout | truncated (stream ended with no finish_reason)
    error: str | None = None  # one line, never holding the API key
    finish_reason: str | None = None
    ttft_s: float | None = None  # request sent -> first content chunk
    e2e_s: float | None = None
    itl_s: list[float] = []  # every gap between content chunks
    n_in: int | None = None
    n_out: int | None = None
    n_chunks: int = 0
    tokens_source: TokensSource = "chunks"

    @property
    def tpot_s(self) -> float | None:
        if self.ttft_s is None or self.e2e_s is None or not self.n_out or self.n_out < 2:
            return None
        return (self.e2e_s - self.ttft_s) / (self.n_out - 1)


class Percentiles(_Model):
    n: int
    mean: float
    p50: float
    p90: float
    p95: float
    p99: float


class LevelResult(_Model):
    profile: Profile
    level: float  # streams (concurrency) or multiple of single-stream throughput (rate)
    rate_rps: float | None = None  # the Poisson arrival rate sent (rate profile)
    status: Status = "ok"
    reason: str | None = None
    n_planned: int
    n_sent: int
    n_ok: int
    failures: dict[str, int] = {}  # outcome -> count; n_ok + sum(failures) == n_sent
    capped: bool = False  # the level time cap stopped it
    duration_s: float  # level start -> last request finished (or the cap)
    ttft_s: Percentiles | None = None
    itl_s: Percentiles | None = None
    tpot_s: Percentiles | None = None
    e2e_s: Percentiles | None = None
    request_throughput_rps: float = 0.0  # ok requests / duration
    output_tok_s: float = 0.0  # ok requests' tokens out / duration
    error_rate: float = 0.0  # failures / sent
    goodput_rps: float = 0.0  # ok requests whose own TTFT and TPOT meet the SLO / duration
    meets_slo: bool = False  # p95 TTFT and p95 TPOT within the SLO, error rate within budget
    samples: list[RequestSample] = []


class Capacity(_Model):
    profile: Profile
    level: float
    request_throughput_rps: float
    output_tok_s: float
    goodput_rps: float


class ServedAccuracy(_Model):
    """Accuracy of what the endpoint serves (issue 13 item 4): scored only where verified."""
    status: Status
    reason: str | None = None
    tasks: dict[str, float] = {}  # task -> acc_norm, when status is ok


NO_SERVED_ACCURACY = (
    "not scored over HTTP: llama-cpp-python 0.3.36's server returns echo token_logprobs shifted "
    "by one token (each token scored under the next token's distribution) and needs "
    "--logits_all True; the in-process llamacpp deployment's score is the same GGUF's accuracy")


class ServeResult(_Model):
    schema_version: int = 1
    endpoint: str
    target: str  # the remote base URL, or "managed:<deployment>" (its loopback port is ephemeral)
    model: str
    api: Literal["completions", "chat"]
    revision: str | None = None
    server: str | None = None  # a managed server's software and flags (ManagedServer.describe())
    status: Status = "ok"
    reason: str | None = None
    slo: SLO
    max_error_rate: float
    max_tokens: int
    fixed_length: bool  # min_tokens + ignore_eos were sent
    tokens_note: str = TOKENS_NOTE
    warmup_sent: int = 0
    single_stream_rps: float | None = None  # the rate profile's 1.0x
    levels: list[LevelResult] = []
    capacity_by_profile: dict[str, Capacity | None] = {}
    capacity: Capacity | None = None  # the highest request throughput among profile capacities
    accuracy: ServedAccuracy = ServedAccuracy(status="unsupported", reason=NO_SERVED_ACCURACY)
