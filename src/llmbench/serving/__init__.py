"""Serving: benchmark OpenAI-compatible endpoints (remote, or a managed llama.cpp server) under load.

A serve stage for one endpoint `name` (params: endpoints[name]: Endpoint, serve: ServeParams,
slo: SLO) does, in this order:

    prompts = select_prompts(rows, ep.api)          # generate-prompts records: plain | chat variant
    if ep.managed:                                   # gguf = the deployment's prepared GGUF
        with ManagedServer(gguf, n_threads=T, n_ctx=n_ctx_for(max_prompt_tokens, p.max_tokens),
                           alias=deployment_key, log_path=logs / f"serve-{name}.log",
                           ready_timeout_s=p.ready_timeout_s) as srv:
            result = run(ep, name, prompts, p, slo, base_url=srv.base_url,
                         count_tokens=count, deployment=deployment_key)
            result.server = srv.describe()
    else:
        preflight(ep, name)                          # one-line UserError in seconds if unreachable
        result = run(ep, name, prompts, p, slo, count_tokens=count)
    path.write_text(result.model_dump_json(indent=1))   # metrics/serve/<name>.json

`count(text) -> int` is the model's tokenizer, used only when the stream carries no `usage`.
The API key is read from os.environ[ep.api_key_env] per request and never stored.
"""
from llmbench.serving.endpoints import SLO, Endpoint, EndpointName, Managed, ServeParams, api_key

# the rest imports httpx + numpy (~0.2 s): loaded on first use, so config.py (which needs only the
# params models above) stays cheap for every stage and the pre-flight check
_LAZY = {
    "LoadGenerator": "loadgen", "level_stats": "loadgen", "preflight": "loadgen", "run": "loadgen",
    "select_prompts": "loadgen", "capacity": "loadgen",
    "TOKENS_NOTE": "results", "Capacity": "results", "LevelResult": "results",
    "Percentiles": "results", "RequestSample": "results", "ServeResult": "results",
    "ServedAccuracy": "results",
    "ManagedServer": "server", "free_port": "server", "n_ctx_for": "server",
}

__all__ = ["SLO", "Endpoint", "EndpointName", "Managed", "ServeParams", "api_key", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f"llmbench.serving.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'llmbench.serving' has no attribute {name!r}")
