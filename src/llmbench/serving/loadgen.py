"""Async streaming load generator for OpenAI-compatible endpoints (httpx, SSE).

Profiles: a concurrency sweep (N streams, each sends its next request when the last ends) and a
Poisson rate sweep at multiples of the measured single-stream request throughput. Warmup requests
are not counted; each level sends a fixed number of requests under a time cap. Every planned
request that was sent ends with exactly one outcome, so ok + failures == sent always holds.
"""
from __future__ import annotations

import asyncio
import json
import random
import re
import time
from typing import Callable, Iterable, Sequence

import httpx
import numpy as np

from llmbench.errors import UserError
from llmbench.serving.endpoints import SLO, Endpoint, ServeParams, api_key
from llmbench.serving.results import (Capacity, LevelResult, Percentiles, RequestSample,
                                      ServeResult)

CountTokens = Callable[[str], int]


class MalformedStream(Exception):
    """An SSE data payload that is not JSON (or not a completion chunk)."""


class StreamError(Exception):
    """An error object sent inside the stream (outcome error:stream_error)."""


class HTTPStatus(Exception):
    """A non-200 answer: outcome error:http_<code>, the body's start as the detail."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"HTTP {code}: {detail}")
        self.code = code


def select_prompts(rows: Iterable[dict], api: str) -> list[dict]:
    """generate-prompts records for this API: the chat variant through chat, plain otherwise."""
    rows = list(rows)
    want = "chat" if api == "chat" else "plain"
    picked = [r for r in rows if r.get("variant", want) == want]
    if not picked:
        raise UserError(f"no '{want}' prompts for the {api} API (variants: "
                        f"{sorted({r.get('variant') for r in rows})})")
    return picked


def _one_line(text: str, secret: str | None, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    if secret:
        text = text.replace(secret, "***")
    return text[:limit]


def _kind(exc: BaseException) -> str:
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        return "error:connect"
    if isinstance(exc, (httpx.TimeoutException, asyncio.TimeoutError)):
        return "timeout"
    if isinstance(exc, HTTPStatus):
        return f"error:http_{exc.code}"
    if isinstance(exc, MalformedStream):
        return "error:malformed_sse"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "error:protocol"
    snake = re.sub(r"(?<!^)(?=[A-Z])", "_", type(exc).__name__).lower()
    return f"error:{snake}"


def _body(endpoint: Endpoint, model: str, text: str, max_tokens: int) -> dict:
    body: dict = {"model": model, "max_tokens": max_tokens, "stream": True, "temperature": 0.0,
                  "stream_options": {"include_usage": True}}
    if endpoint.api == "chat":
        # string content: llama-cpp-python's chat route fails on list-style content (DESIGN 8)
        body["messages"] = [{"role": "user", "content": text}]
    else:
        body["prompt"] = text
    if endpoint.fixed_length:
        body.update(min_tokens=max_tokens, ignore_eos=True)
    return body


async def _events(resp: httpx.Response):
    """SSE events' data payloads (multi-line data joined), comments and other fields skipped."""
    data: list[str] = []
    async for line in resp.aiter_lines():
        if line == "":
            if data:
                yield "\n".join(data)
                data = []
            continue
        if line.startswith(":"):
            continue  # keep-alive comment
        field, _, value = line.partition(":")
        if field == "data":
            data.append(value[1:] if value.startswith(" ") else value)
    if data:
        yield "\n".join(data)


async def _request(client: httpx.AsyncClient, endpoint: Endpoint, name: str, url: str, model: str,
                   prompt: dict, params: ServeParams, count_tokens: CountTokens | None,
                   sample: RequestSample) -> None:
    """Send one streaming request and fill `sample` in place (the caller keeps it on cancel)."""
    secret = api_key(endpoint, name)  # read now, per request; never stored
    headers = endpoint.headers(name)
    body = _body(endpoint, model, prompt["text"], params.max_tokens)
    path = "/chat/completions" if endpoint.api == "chat" else "/completions"
    t0 = time.perf_counter()
    stamps: list[float] = []
    pieces: list[str] = []
    usage: dict | None = None
    try:
        async with asyncio.timeout(params.request_timeout_s):
            async with client.stream("POST", url + path, json=body, headers=headers) as resp:
                if resp.status_code != 200:
                    detail = (await resp.aread()).decode("utf-8", "replace")
                    raise HTTPStatus(resp.status_code, detail)
                async for payload in _events(resp):
                    if payload.strip() == "[DONE]":
                        break
                    try:
                        chunk = json.loads(payload)
                    except json.JSONDecodeError as exc:
                        raise MalformedStream(f"not JSON: {payload[:60]!r}") from exc
                    if not isinstance(chunk, dict):
                        raise MalformedStream(f"not an object: {payload[:60]!r}")
                    if "error" in chunk:
                        raise StreamError(f"server error in stream: {chunk['error']}")
                    if isinstance(chunk.get("usage"), dict):
                        usage = chunk["usage"]
                    for choice in chunk.get("choices") or []:
                        text = choice.get("text")
                        if text is None:
                            text = (choice.get("delta") or {}).get("content")
                        if text:
                            stamps.append(time.perf_counter())
                            pieces.append(text)
                        if choice.get("finish_reason"):
                            sample.finish_reason = choice["finish_reason"]
        end = time.perf_counter()
        sample.outcome = "ok" if sample.finish_reason else "truncated"
        sample.error = None if sample.finish_reason else "stream ended without a finish_reason"
    except (httpx.HTTPError, asyncio.TimeoutError, HTTPStatus, MalformedStream, StreamError,
            OSError) as exc:
        detail = str(exc) if isinstance(exc, HTTPStatus) else f"{type(exc).__name__}: {exc}"
        sample.outcome, sample.error = _kind(exc), _one_line(detail, secret)
        end = time.perf_counter()
    except asyncio.CancelledError:  # the level cap: keep what arrived, outcome stays "timeout"
        _fill(sample, t0, stamps, time.perf_counter(), "".join(pieces), prompt["text"], usage,
              count_tokens)
        raise
    _fill(sample, t0, stamps, end, "".join(pieces), prompt["text"], usage, count_tokens)


def _fill(sample: RequestSample, t0: float, stamps: list[float], end: float, text: str,
          prompt_text: str, usage: dict | None, count_tokens: CountTokens | None) -> None:
    sample.n_chunks = len(stamps)
    sample.e2e_s = end - t0
    if stamps:
        sample.ttft_s = stamps[0] - t0
        sample.itl_s = np.diff(stamps).tolist()
    if usage and usage.get("completion_tokens") is not None:
        sample.n_out, sample.n_in, sample.tokens_source = (usage["completion_tokens"],
                                                           usage.get("prompt_tokens"), "usage")
    elif count_tokens is not None:
        sample.n_out, sample.n_in = count_tokens(text) if text else 0, count_tokens(prompt_text)
        sample.tokens_source = "tokenizer"
    else:
        sample.n_out, sample.tokens_source = len(stamps), "chunks"


def _pct(values: Sequence[float]) -> Percentiles | None:
    if not len(values):
        return None
    arr = np.asarray(values, dtype=float)
    p50, p90, p95, p99 = np.percentile(arr, [50, 90, 95, 99])
    return Percentiles(n=arr.size, mean=float(arr.mean()), p50=p50, p90=p90, p95=p95, p99=p99)


def level_stats(level: LevelResult, slo: SLO, max_error_rate: float) -> LevelResult:
    """Fill a level's statistics from its samples (pure: the same samples give the same stats)."""
    sent = level.samples
    ok = [s for s in sent if s.outcome == "ok"]
    failures: dict[str, int] = {}
    for s in sent:
        if s.outcome != "ok":
            failures[s.outcome] = failures.get(s.outcome, 0) + 1
    dur = max(level.duration_s, 1e-9)
    tpots = [s.tpot_s for s in ok if s.tpot_s is not None]

    def good(s: RequestSample) -> bool:  # vLLM goodput: the request's own TTFT and TPOT
        tpot = s.tpot_s
        return (s.ttft_s is not None and s.ttft_s * 1e3 <= slo.ttft_ms
                and (tpot is None or tpot * 1e3 <= slo.tpot_ms))

    level.n_sent, level.n_ok, level.failures = len(sent), len(ok), failures
    level.ttft_s = _pct([s.ttft_s for s in ok if s.ttft_s is not None])
    level.itl_s = _pct([g for s in ok for g in s.itl_s])
    level.tpot_s = _pct(tpots)
    level.e2e_s = _pct([s.e2e_s for s in ok if s.e2e_s is not None])
    level.request_throughput_rps = len(ok) / dur
    level.output_tok_s = sum(s.n_out or 0 for s in ok) / dur
    level.error_rate = (len(sent) - len(ok)) / len(sent) if sent else 1.0
    level.goodput_rps = sum(good(s) for s in ok) / dur
    if not sent:
        level.status, level.reason = "failed", "no request was sent within the level time cap"
    elif level.error_rate > max_error_rate:
        kinds = ", ".join(f"{k}: {v}" for k, v in sorted(failures.items()))
        level.status = "failed"
        level.reason = f"error rate {level.error_rate:.3f} > max_error_rate {max_error_rate:g} ({kinds})"
    else:
        level.status, level.reason = "ok", None
    level.meets_slo = (level.status == "ok" and level.ttft_s is not None
                       and level.ttft_s.p95 * 1e3 <= slo.ttft_ms
                       and (level.tpot_s is None or level.tpot_s.p95 * 1e3 <= slo.tpot_ms))
    return level


def capacity(levels: Sequence[LevelResult]) -> tuple[dict[str, Capacity | None], Capacity | None]:
    """Per profile, the highest level meeting the SLO; overall, the one with most requests/s."""
    by_profile: dict[str, Capacity | None] = {}
    for profile in dict.fromkeys(lv.profile for lv in levels):
        passing = [lv for lv in levels if lv.profile == profile and lv.meets_slo]
        best = max(passing, key=lambda lv: lv.level, default=None)
        by_profile[profile] = best and Capacity(
            profile=profile, level=best.level, request_throughput_rps=best.request_throughput_rps,
            output_tok_s=best.output_tok_s, goodput_rps=best.goodput_rps)
    caps = [c for c in by_profile.values() if c is not None]
    return by_profile, max(caps, key=lambda c: c.request_throughput_rps, default=None)


class LoadGenerator:
    """One endpoint's run: `await LoadGenerator(...).run()` -> ServeResult."""

    def __init__(self, endpoint: Endpoint, name: str, prompts: Sequence[dict], params: ServeParams,
                 slo: SLO, *, base_url: str | None = None, count_tokens: CountTokens | None = None,
                 deployment: str | None = None) -> None:
        if not prompts:
            raise UserError(f"endpoints.{name}: no prompts to send")
        api_key(endpoint, name)  # a missing key variable fails before anything is sent
        self.endpoint, self.name, self.prompts = endpoint, name, list(prompts)
        self.params, self.slo, self.count_tokens = params, slo, count_tokens
        self.url = endpoint.base_url(base_url)
        self.model = endpoint.model or deployment or name
        self.deployment = deployment

    def _client(self, limit: int) -> httpx.AsyncClient:
        p = self.params
        timeout = httpx.Timeout(p.request_timeout_s, connect=p.connect_timeout_s,
                                read=p.stall_timeout_s)
        limits = httpx.Limits(max_connections=limit, max_keepalive_connections=limit)
        # trust_env=False: a proxy from the environment must not see loopback traffic or the key
        return httpx.AsyncClient(timeout=timeout, limits=limits, trust_env=False)

    async def _level(self, profile: str, level: float, due: list[float], limit: int,
                     rate: float | None = None) -> LevelResult:
        # every level sends the same prompts in the same order, so levels differ only in load
        plan = [(i, d, self.prompts[i % len(self.prompts)]) for i, d in enumerate(due)]
        samples: list[RequestSample | None] = [None] * len(plan)
        gate = asyncio.Semaphore(limit)
        start = time.perf_counter()
        async with self._client(limit) as client:
            async def one(i: int, d: float, prompt: dict) -> None:
                await asyncio.sleep(max(0.0, start + d - time.perf_counter()))
                async with gate:
                    sample = RequestSample(index=i, prompt_id=str(prompt.get("id", i)),
                                           scheduled_s=d, sent_s=time.perf_counter() - start,
                                           outcome="timeout", error="level time cap reached")
                    samples[i] = sample  # from here on it counts as sent, whatever happens
                    await _request(client, self.endpoint, self.name, self.url, self.model, prompt,
                                   self.params, self.count_tokens, sample)

            tasks = [asyncio.create_task(one(*row)) for row in plan]
            done, pending = await asyncio.wait(tasks, timeout=self.params.level_time_cap_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            for task in done:  # e.g. the key variable unset mid-run: a UserError, not a sample
                if not task.cancelled() and task.exception() is not None:
                    raise task.exception()
        result = LevelResult(profile=profile, level=level, rate_rps=rate, n_planned=len(plan),
                             n_sent=0, n_ok=0, capped=bool(pending),
                             duration_s=time.perf_counter() - start,
                             samples=[s for s in samples if s is not None])
        return level_stats(result, self.slo, self.params.max_error_rate)

    async def _warmup(self) -> int:
        async with self._client(1) as client:
            for i in range(self.params.warmup_requests):
                sample = RequestSample(index=i, prompt_id="warmup", scheduled_s=0, sent_s=0,
                                       outcome="timeout")
                await _request(client, self.endpoint, self.name, self.url, self.model,
                               self.prompts[i % len(self.prompts)], self.params, None, sample)
        return self.params.warmup_requests

    async def run(self) -> ServeResult:
        p = self.params
        result = ServeResult(endpoint=self.name, model=self.model, api=self.endpoint.api,
                             target=(f"managed:{self.deployment or self.model}"
                                     if self.endpoint.managed else self.url),
                             revision=self.endpoint.revision, slo=self.slo,
                             max_error_rate=p.max_error_rate, max_tokens=p.max_tokens,
                             fixed_length=self.endpoint.fixed_length)
        result.warmup_sent = await self._warmup()
        n = p.requests_per_level
        if "concurrency" in p.profiles:
            for c in p.concurrency:
                result.levels.append(await self._level("concurrency", c, [0.0] * n, c))
        if "rate" in p.profiles:
            single = next((lv for lv in result.levels
                           if lv.profile == "concurrency" and lv.level == 1), None)
            if single is None:  # calibrate: a short synchronous run, kept out of the levels
                single = await self._level("concurrency", 1, [0.0] * min(n, 4), 1)
            result.single_stream_rps = single.request_throughput_rps or None
            rng = random.Random(p.seed)
            for mult in p.rate_multipliers:
                if not result.single_stream_rps:
                    result.levels.append(LevelResult(
                        profile="rate", level=mult, status="skipped", n_planned=n, n_sent=0,
                        n_ok=0, duration_s=0.0, reason="single-stream throughput is 0 "
                        "(no request succeeded at concurrency 1)"))
                    continue
                rate = mult * result.single_stream_rps
                gaps = [rng.expovariate(rate) for _ in range(n - 1)]
                due = [0.0, *np.cumsum(gaps).tolist()]
                result.levels.append(await self._level("rate", mult, due, p.max_in_flight, rate))
        result.capacity_by_profile, result.capacity = capacity(result.levels)
        if not any(lv.n_ok for lv in result.levels):
            kinds = sorted({k for lv in result.levels for k in lv.failures})
            result.status = "failed"
            result.reason = f"no request succeeded ({', '.join(kinds) or 'none sent'})"
        return result


def run(endpoint: Endpoint, name: str, prompts: Sequence[dict], params: ServeParams, slo: SLO,
        **kwargs) -> ServeResult:
    """Synchronous wrapper: the serve stage's one call."""
    return asyncio.run(LoadGenerator(endpoint, name, prompts, params, slo, **kwargs).run())


def preflight(endpoint: Endpoint, name: str, base_url: str | None = None,
              timeout_s: float = 5.0) -> None:
    """Fail in seconds, with one line, when the endpoint cannot be reached or rejects the key."""
    url = endpoint.base_url(base_url) + "/models"
    secret = api_key(endpoint, name)
    try:
        with httpx.Client(timeout=timeout_s, trust_env=False) as client:
            resp = client.get(url, headers=endpoint.headers(name))
    except httpx.HTTPError as exc:
        raise UserError(f"endpoints.{name}.url: cannot reach {url} "
                        f"({_one_line(f'{type(exc).__name__}: {exc}', secret, 120)})") from None
    if resp.status_code in (401, 403):
        which = f"the key in ${endpoint.api_key_env}" if endpoint.api_key_env else "no API key"
        raise UserError(f"endpoints.{name}: {url} answered {resp.status_code} with {which}")
