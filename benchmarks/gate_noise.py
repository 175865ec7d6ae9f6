"""The regression gate's false-alarm and detection rates on synthetic profiles, for the gate's
BCa interval (scipy.stats.bootstrap, what llmbench.gate uses) and the hand-written percentile
bootstrap it replaced (kept here only, so both are compared in one run on the same draws).

Each trial draws a base and a head sample of one profile config (ttft, tpot with lognormal
noise of the given sigma plus 5% spikes of 1.5-3x; e2e and decode_tps derived per iteration,
as the profile stage does), slows head by the true slowdown, and runs llmbench.gate.compare with
its defaults (threshold 10%, 95% CI, 2000 resamples). Rates are the share of trials judged
"slower": per metric (mean over the 4 metrics) and per gate (any metric fails). At slowdown 0
that share is the false-alarm rate; above it, the detection rate. Seeds are fixed (trial i uses
seed i), so a rerun prints the same table.

    python benchmarks/gate_noise.py [--seeds 200] [--sizes 10 20 30 100]
"""

from __future__ import annotations

import argparse
import contextlib
import time

import numpy as np

from llmbench import gate

SLOWDOWNS = (0.0, 0.15, 0.25)
NOISES = (0.05, 0.20)
SIZES = (10, 20, 30, 100)  # iterations a side: 20 = CI's ci_overrides .. pooled A/B rounds
N_OUT = 16
CONFIG = ("m.transformers.float32.sdpa", 1, 32, N_OUT)


def percentile_bootstrap(base: np.ndarray, head: np.ndarray, *, n_boot: int, confidence: float,
                         seed: int) -> tuple[float, float, float]:
    """The gate's previous interval: percentile bootstrap of the ratio of medians."""
    rng = np.random.default_rng(seed)
    b = base[rng.integers(0, base.size, (n_boot, base.size))]
    h = head[rng.integers(0, head.size, (n_boot, head.size))]
    ratios = np.median(h, axis=1) / np.median(b, axis=1)
    alpha = 1.0 - confidence
    low, high = np.quantile(ratios, [alpha / 2, 1 - alpha / 2])
    return float(np.median(head) / np.median(base)), float(low), float(high)


METHODS = {"old: percentile": percentile_bootstrap, "new: BCa (scipy)": gate.bootstrap_ratio}


@contextlib.contextmanager
def interval(method):
    # gate.compare looks bootstrap_ratio up at call time; swap it for the old one's run
    kept = gate.bootstrap_ratio
    gate.bootstrap_ratio = method
    try:
        yield
    finally:
        gate.bootstrap_ratio = kept


def draw(rng: np.random.Generator, n: int, slowdown: float, noise: float) -> dict:
    def noisy(base: float) -> np.ndarray:
        x = base * (1 + slowdown) * np.exp(rng.normal(0.0, noise, n))
        spikes = rng.random(n) < 0.05
        x[spikes] *= rng.uniform(1.5, 3.0, spikes.sum())
        return x

    ttft, tpot = noisy(0.02), noisy(0.01)
    e2e = ttft + tpot * (N_OUT - 1)
    values = {"ttft_s": ttft, "tpot_s": tpot, "e2e_s": e2e, "decode_tps": (N_OUT - 1) / (e2e - ttft)}
    return {"m": {CONFIG: {k: v.tolist() for k, v in values.items()}}}


def rates(n: int, slowdown: float, noise: float, seeds: int) -> dict[str, tuple[float, float]]:
    """method -> (per-metric rate, per-gate rate), both methods on the same draws."""
    pairs = []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        pairs.append((draw(rng, n, 0.0, noise), draw(rng, n, slowdown, noise)))
    out = {}
    for name, method in METHODS.items():
        per_metric, per_gate = [], []
        with interval(method):
            for base, head in pairs:
                rows, _ = gate.compare(base, head)
                slower = [r.verdict == gate.SLOWER for r in rows]
                per_metric.append(np.mean(slower))
                per_gate.append(any(slower))
        out[name] = (float(np.mean(per_metric)), float(np.mean(per_gate)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=200, help="trials per cell (default 200)")
    ap.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="samples a side")
    args = ap.parse_args()
    t0 = time.perf_counter()
    cols = " | ".join(f"{s:.0%} slower" for s in SLOWDOWNS)
    print(f"gate defaults: threshold {gate.DEFAULTS.threshold:.0%}, confidence "
          f"{gate.DEFAULTS.confidence:.0%}, 2000 resamples; {args.seeds} trials/cell, seeds 0..{args.seeds - 1}")
    print("share judged 'slower': per metric (per gate: any of 4 metrics)")
    print(f"| noise | n/side | interval | {cols} |")
    print("|---|---|---|" + "---|" * len(SLOWDOWNS))
    for noise in NOISES:
        for n in args.sizes:
            cells = [rates(n, s, noise, args.seeds) for s in SLOWDOWNS]
            for name in METHODS:
                body = " | ".join(f"{c[name][0]:5.1%} ({c[name][1]:5.1%})" for c in cells)
                print(f"| {noise:.0%} | {n} | {name} | {body} |", flush=True)
    print(f"0% column = false-alarm rate; others = detection rate. {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
