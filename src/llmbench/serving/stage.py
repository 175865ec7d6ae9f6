"""serve@<endpoint>: what the stage measures, apart from DVC and MLflow plumbing (stages/serve.py).

`measure(params, name)` runs the load generator against one endpoint: a remote one after a
pre-flight (unreachable = one line in seconds), a managed one against a llama-cpp-python server
started for its deployment's GGUF and always stopped. `mlflow_metrics(result)` names the numbers.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from llmbench.config import Params
from llmbench.errors import UserError
from llmbench.io import read_jsonl
from llmbench.results import Deployment, GgufSet, read_result
from llmbench.serving.endpoints import Endpoint, Managed
from llmbench.serving.loadgen import preflight, run, select_prompts
from llmbench.serving.results import ServedAccuracy, ServeResult
from llmbench.serving.server import ManagedServer, n_ctx_for
from llmbench.spec import METRICS

CHAT_TEMPLATE_MARGIN = 48  # tokens a chat template wraps around the user message (SmolLM2: ~20)
_REMOTE_ACCURACY = ("not scored: llmbench scores served models only on managed endpoints "
                    "(prompt logprobs and tokenization of a remote API are not verified)")


def deployment(managed: Managed) -> Deployment:
    return Deployment(model=managed.model, backend="llamacpp", precision=managed.precision)


def gguf_for(params: Params, name: str, managed: Managed) -> Path:
    """The managed deployment's GGUF: the usable file of that precision in the model's GGUF set
    (data/gguf/<model>/gguf.json, written by quantize@<model>; a shipped file stays in the
    prepared folder). Paths in the set are relative to the repository root (the stage's cwd)."""
    listing = params.paths.gguf_json(managed.model)
    if not listing.exists():
        raise UserError(f"endpoints.{name}.managed.model: no GGUF set for '{managed.model}' "
                        f"({listing} missing): run `dvc repro quantize@{managed.model}` (is it in "
                        "the roster?)")
    gset = read_result(listing, GgufSet)
    for f in gset.usable():
        if f.precision == managed.precision:
            return Path(f.path)
    have = ", ".join(f.precision for f in gset.usable()) or f"none ({gset.reason})"
    raise UserError(f"endpoints.{name}.managed.precision: no usable {managed.precision} GGUF for "
                    f"model '{managed.model}' in {listing} (usable: {have})")


def token_counter(gguf: Path) -> Callable[[str], int]:
    """The served model's own tokenizer (vocab only, no weights loaded), for streams without usage."""
    import llama_cpp

    vocab = llama_cpp.Llama(str(gguf), vocab_only=True, verbose=False)
    return lambda text: len(vocab.tokenize(text.encode("utf-8"), add_bos=False, special=False))


def _threads(params: Params) -> int:
    return params.serve.n_threads or len(os.sched_getaffinity(0))


def measure(params: Params, name: str, logs_dir: Path) -> ServeResult:
    ep: Endpoint = params.endpoints[name]
    prompts = select_prompts(read_jsonl(params.paths.prompts), ep.api)
    p, slo = params.serve, params.slo
    if ep.managed is None:
        preflight(ep, name, timeout_s=p.connect_timeout_s)
        result = run(ep, name, prompts, p, slo)
        result.accuracy = ServedAccuracy(status="unsupported", reason=_REMOTE_ACCURACY)
        return result
    gguf = gguf_for(params, name, ep.managed)
    count = token_counter(gguf)
    key = deployment(ep.managed).key
    longest = max(count(r["text"]) for r in prompts)
    margin = CHAT_TEMPLATE_MARGIN if ep.api == "chat" else 0
    with ManagedServer(gguf, n_threads=_threads(params),
                       n_ctx=n_ctx_for(longest + margin, p.max_tokens), alias=key,
                       log_path=logs_dir / f"serve@{name}.server.log",
                       ready_timeout_s=p.ready_timeout_s,
                       drop_env=[ep.api_key_env] if ep.api_key_env else []) as srv:
        result = run(ep, name, prompts, p, slo, base_url=srv.base_url, count_tokens=count,
                     deployment=key)
        result.server = srv.describe()
    return result


def _level_name(profile: str, level: float) -> str:
    return f"{profile}_{level:g}"


def mlflow_metrics(result: ServeResult) -> dict[str, float]:
    """<profile>_<level>.<metric>_<stat> per level (spec names), plus the capacity at the SLO."""
    out: dict[str, float] = {}
    for lv in result.levels:
        if lv.status == "skipped":
            continue
        pre = _level_name(lv.profile, lv.level)
        for m in ("ttft_s", "tpot_s", "itl_s", "e2e_s"):
            pct = getattr(lv, m)
            if pct is not None:
                out.update({f"{pre}.{METRICS[m].field(s)}": getattr(pct, s) for s in ("p50", "p95")})
        out.update({f"{pre}.request_throughput_rps": lv.request_throughput_rps,
                    f"{pre}.output_tok_s": lv.output_tok_s, f"{pre}.error_rate": lv.error_rate,
                    f"{pre}.goodput_rps": lv.goodput_rps})
    if result.capacity is not None:
        out["capacity_rps"] = result.capacity.request_throughput_rps
        out["capacity_output_tok_s"] = result.capacity.output_tok_s
    if result.single_stream_rps:
        out["single_stream_rps"] = result.single_stream_rps
    return out
