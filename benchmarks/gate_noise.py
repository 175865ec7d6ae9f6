"""Measure the regression gate's false-alarm and detection rates on synthetic profiles.

Each trial draws a base and a head sample of one profile config (ttft, tpot with lognormal
noise of the given sigma plus 5% spikes of 1.5-3x; e2e and decode_tps derived per iteration,
as the profile stage does), slows head by the true slowdown, and runs llmbench.gate.compare with
its defaults (threshold 10%, 95% CI, 2000 bootstrap resamples). Rates are the share of trials
judged "slower": per metric (mean over the 4 metrics) and per gate (any metric fails).
At slowdown 0 that share is the false-alarm rate; above it, the detection rate.

    python benchmarks/gate_noise.py [--seeds 200]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from llmbench import gate

SLOWDOWNS = (0.0, 0.05, 0.10, 0.15, 0.25, 0.50)
NOISES = (0.05, 0.20)
SIZES = (10, 30, 100)  # iterations a side: one CI profile .. pooled A/B rounds
N_OUT = 16


def draw(rng: np.random.Generator, n: int, slowdown: float, noise: float) -> dict:
    def noisy(base: float) -> np.ndarray:
        x = base * (1 + slowdown) * np.exp(rng.normal(0.0, noise, n))
        spikes = rng.random(n) < 0.05
        x[spikes] *= rng.uniform(1.5, 3.0, spikes.sum())
        return x

    ttft, tpot = noisy(0.02), noisy(0.01)
    e2e = ttft + tpot * (N_OUT - 1)
    values = {"ttft_s": ttft, "tpot_s": tpot, "e2e_s": e2e, "decode_tps": (N_OUT - 1) / (e2e - ttft)}
    return {"m": {("float32", "sdpa", 1, 32, N_OUT): {k: v.tolist() for k, v in values.items()}}}


def rates(n: int, slowdown: float, noise: float, seeds: int) -> tuple[float, float]:
    per_metric, per_gate = [], []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        rows, _ = gate.compare(draw(rng, n, 0.0, noise), draw(rng, n, slowdown, noise))
        slower = [r.verdict == gate.SLOWER for r in rows]
        per_metric.append(np.mean(slower))
        per_gate.append(any(slower))
    return float(np.mean(per_metric)), float(np.mean(per_gate))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=200, help="trials per cell (default 200)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    cols = " | ".join(f"{s:>4.0%} slower" for s in SLOWDOWNS)
    print(f"gate defaults: threshold 10%, confidence 95%, 2000 resamples; {args.seeds} trials/cell")
    print("share judged 'slower' — per metric (per gate: any of 4 metrics)")
    print(f"| noise | n/side | {cols} |")
    print("|---|---|" + "---|" * len(SLOWDOWNS))
    for noise in NOISES:
        for n in SIZES:
            cells = [rates(n, s, noise, args.seeds) for s in SLOWDOWNS]
            body = " | ".join(f"{m:5.1%} ({g:5.1%})" for m, g in cells)
            print(f"| {noise:.0%} | {n} | {body} |", flush=True)
    print(f"0% column = false-alarm rate; others = detection rate. {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
