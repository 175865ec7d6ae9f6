"""params.yaml `endpoints:` / `serve:` / `slo:` entries. An endpoint is either a remote
OpenAI-compatible base URL or a managed llama.cpp server for one roster deployment. The API key is
only ever named (api_key_env); its value is read from the environment at request time."""
from __future__ import annotations

import os
import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from llmbench.errors import UserError

# endpoint names become DVC stage names (serve@<name>) and file names (metrics/serve/<name>.json)
EndpointName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$")]
_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Managed(_Strict):
    model: str  # a roster model name (params.models key) with a GGUF file
    precision: str = "Q4_1"  # the GGUF type served, e.g. Q4_1, Q8_0, F16


class Endpoint(_Strict):
    url: str | None = None  # OpenAI-compatible base ending in /v1, e.g. http://host:8000/v1
    managed: Managed | None = None  # instead of url: llmbench starts a llama.cpp server
    model: str | None = None  # the "model" field sent; a managed server's alias by default
    api: Literal["completions", "chat"] = "completions"
    api_key_env: Annotated[str, StringConstraints(pattern=_ENV_NAME)] | None = None
    revision: str | None = None  # bump when the remote deployment changes (DVC cannot hash it)
    # vLLM/llama.cpp honour min_tokens + ignore_eos (fixed output length); strict APIs reject them
    fixed_length: bool = True

    @model_validator(mode="after")
    def _one_target(self) -> "Endpoint":
        if (self.url is None) == (self.managed is None):
            raise ValueError("give exactly one of url or managed")
        if self.url is not None:
            if not re.match(r"^https?://[^/\s]+", self.url):
                raise ValueError(f"url must start with http:// or https:// (got {self.url!r})")
            if self.model is None:
                raise ValueError("a url endpoint needs model (the name the server serves)")
        return self

    def base_url(self, managed_url: str | None = None) -> str:
        url = managed_url if self.managed is not None else self.url
        if url is None:
            raise UserError("a managed endpoint has no URL until its server is started")
        return url.rstrip("/")

    def headers(self, name: str = "?") -> dict[str, str]:
        """Request headers, built per request so the key never sits in a long-lived object."""
        headers = {"Content-Type": "application/json"}
        key = api_key(self, name)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers


def api_key(endpoint: Endpoint, name: str = "?") -> str | None:
    """The key's value from the environment, or None when the endpoint needs none."""
    if endpoint.api_key_env is None:
        return None
    value = os.environ.get(endpoint.api_key_env)
    if not value:
        raise UserError(f"endpoints.{name}.api_key_env: environment variable "
                        f"{endpoint.api_key_env} is not set")
    return value


class SLO(_Strict):
    ttft_ms: float = Field(2000.0, gt=0)  # time to first token, per request
    tpot_ms: float = Field(200.0, gt=0)  # time per output token after the first, per request


class ServeParams(_Strict):
    profiles: list[Literal["concurrency", "rate"]] = ["concurrency", "rate"]
    concurrency: list[Annotated[int, Field(ge=1)]] = [1, 2, 4, 8]
    # Poisson arrival rates as multiples of the measured single-stream request throughput
    rate_multipliers: list[Annotated[float, Field(gt=0)]] = [0.25, 0.5, 1.0, 1.5]
    requests_per_level: int = Field(16, ge=1)
    warmup_requests: int = Field(2, ge=0)  # sent before the first level, never counted
    level_time_cap_s: float = Field(120.0, gt=0)  # a level stops sending and cancels at this
    request_timeout_s: float = Field(60.0, gt=0)  # one request, first byte to last
    stall_timeout_s: float = Field(20.0, gt=0)  # longest silence inside a stream
    connect_timeout_s: float = Field(5.0, gt=0)
    max_tokens: int = Field(32, ge=1)
    max_error_rate: float = Field(0.01, ge=0, le=1)
    max_in_flight: int = Field(64, ge=1)  # the rate profile's client-side ceiling
    ready_timeout_s: float = Field(120.0, gt=0)  # managed server: start -> GET /v1/models 200
    n_threads: int | None = Field(None, ge=1)  # managed server threads; None: all cores
    seed: int = 0  # Poisson arrival times and prompt order

    @model_validator(mode="after")
    def _sorted(self) -> "ServeParams":
        # "capacity = highest passing level" needs the levels in rising order
        if list(self.concurrency) != sorted(set(self.concurrency)):
            raise ValueError("concurrency must be strictly increasing")
        if list(self.rate_multipliers) != sorted(set(self.rate_multipliers)):
            raise ValueError("rate_multipliers must be strictly increasing")
        return self
