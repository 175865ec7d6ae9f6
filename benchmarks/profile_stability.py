"""How repeatable is a profile? cv of decode tok/s (p50 of each run) over 5 consecutive
run_profile() calls on SmolLM2-135M-Instruct, batch 1, per dtype, next to the within-run cv.

    .venv/bin/python benchmarks/profile_stability.py [--runs 5] [--threads N] [--preset cpu-small]
"""

from __future__ import annotations

import os

# before torch loads libgomp: spinning OpenMP threads on a shared 2-core box run 10-100x slower
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import statistics
import time

import torch

from llmbench import models, profiling
from llmbench.metrics import summarize
from profile_overhead import smollm2_dir  # benchmarks/ is sys.path[0] when run as a script


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, all cores)")
    ap.add_argument("--preset", default="cpu-small")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    a = ap.parse_args()
    path = smollm2_dir()
    tok, info = models.load_tokenizer(path), models.describe(path)
    texts = ["Explain, step by step, how a bicycle converts the rider's effort into forward motion.",
             "Write a short poem about the sea, then summarise it in one sentence."]
    cfg = {"preset": a.preset, "batch_sizes": [1], "attentions": ["sdpa"], "dtypes": a.dtypes.split(","),
           "threads": a.threads, "bandwidth_mib": 0}

    def factory(dtype, attn):
        return models.load(path, dtype=dtype, attn_implementation=attn)[0]

    per_dtype: dict[str, list[float]] = {}
    within: dict[str, list[float]] = {}
    print(f"SmolLM2-135M, preset {a.preset} (batch 1, sdpa), threads {a.threads}, {a.runs} runs; "
          f"loadavg {os.getloadavg()[0]:.2f}")
    for i in range(a.runs):
        t0 = time.perf_counter()
        out = profiling.run_profile(factory, tok, info, texts, cfg)
        line = []
        for r in out["results"]:
            if r["status"] != "ok":
                line.append(f"{r['dtype']} {r['status']}")
                continue
            d = r["decode_tps"]
            per_dtype.setdefault(r["dtype"], []).append(d["p50"])
            within.setdefault(r["dtype"], []).append(d["cv"])
            line.append(f"{r['dtype']} {d['p50']:.2f} tok/s (it {r['iterations']}, within-run cv {d['cv']:.3f})")
        print(f"run {i}: {time.perf_counter() - t0:5.1f} s  " + " | ".join(line)
              + f"  loadavg {out['protocol']['loadavg_1m'][1]:.2f}")
    for dtype, vals in per_dtype.items():
        s = summarize(vals)
        print(f"{dtype}: decode tok/s p50 over runs: mean {s['mean']:.2f}, min {min(vals):.2f}, max {max(vals):.2f}, "
              f"run-to-run cv {s['cv']:.3f}; median within-run cv {statistics.median(within[dtype]):.3f}")
    print(f"torch threads {torch.get_num_threads()} (restored), loadavg {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
