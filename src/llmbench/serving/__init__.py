"""Serving: benchmark OpenAI-compatible endpoints (remote or a managed llama.cpp server) under load.

    from llmbench.serving import Endpoint, ServeParams, SLO, ManagedServer, run, preflight
    with ManagedServer(gguf, n_threads=2, n_ctx=512, alias=key, log_path=log) as srv:
        result = run(endpoint, name, prompts, params, slo, base_url=srv.base_url,
                     count_tokens=count, deployment=key)        # -> ServeResult
"""
from llmbench.serving.endpoints import SLO, Endpoint, Managed, ServeParams, api_key
from llmbench.serving.loadgen import LoadGenerator, level_stats, preflight, run, select_prompts
from llmbench.serving.results import (TOKENS_NOTE, Capacity, LevelResult, Percentiles,
                                      RequestSample, ServeResult)
from llmbench.serving.server import ManagedServer, free_port, n_ctx_for

__all__ = ["SLO", "Endpoint", "Managed", "ServeParams", "api_key", "LoadGenerator", "level_stats",
           "preflight", "run", "select_prompts", "TOKENS_NOTE", "Capacity", "LevelResult",
           "Percentiles", "RequestSample", "ServeResult", "ManagedServer", "free_port", "n_ctx_for"]
