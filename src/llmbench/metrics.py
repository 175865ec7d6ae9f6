"""Pure statistics for benchmark results: no torch, no I/O.

The vocabulary (ttft_s, tpot_s, itl_s, e2e_s, decode_tps, prefill_tps, ...) is defined once,
in llmbench.spec.METRICS.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from llmbench.spec import STATS

PERCENTILES = (50, 90, 95, 99)
STAT_KEYS = (*STATS, "n", "values")  # the fields of results.Stats


def describe_samples(values: Iterable[float]) -> dict:
    """Stats dict {p50, p90, p95, p99, mean, std, cv, n, values} of raw measurements.

    Percentiles use numpy's default (linear interpolation). std is the population std
    (ddof=0, as numpy and optimum-benchmark); cv = std / mean. No values -> n=0, stats None.
    """
    raw = [float(v) for v in values]
    if not raw:
        return {**{k: None for k in STAT_KEYS}, "n": 0, "values": []}
    arr = np.asarray(raw, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"describe_samples: non-finite value in {raw}")
    mean = float(arr.mean())
    std = float(arr.std())
    stats = {f"p{p}": float(v) for p, v in zip(PERCENTILES, np.percentile(arr, PERCENTILES))}
    stats.update(mean=mean, std=std, cv=(std / mean) if mean != 0 else None, n=len(raw), values=raw)
    return stats


def gaps(timestamps: Sequence[float]) -> list[float]:
    """Differences between consecutive timestamps (len - 1 values)."""
    return [float(b - a) for a, b in zip(timestamps[:-1], timestamps[1:])]


def tpot(e2e_s: float, ttft_s: float, n_out: int) -> float | None:
    """Time per output token after the first; None when only one token was generated."""
    if n_out < 2:
        return None
    return (e2e_s - ttft_s) / (n_out - 1)


def decode_tps(batch_size: int, n_out: int, e2e_s: float, ttft_s: float) -> float | None:
    """Generated tokens per second in the decode phase (all sequences of the batch)."""
    if n_out < 2 or e2e_s <= ttft_s:
        return None
    return batch_size * (n_out - 1) / (e2e_s - ttft_s)


def prefill_tps(batch_size: int, n_in: int, ttft_s: float) -> float | None:
    """Prompt tokens per second up to the first generated token."""
    if ttft_s <= 0:
        return None
    return batch_size * n_in / ttft_s


def bandwidth_gbps(bytes_moved: float, seconds: float) -> float:
    """Decimal GB/s (1e9 bytes), as memory bandwidth is usually quoted."""
    if seconds <= 0:
        raise ValueError("bandwidth_gbps: seconds must be > 0")
    return bytes_moved / seconds / 1e9


def roofline(weight_bytes: float, decode_tps_value: float | None, peak_gbps: float | None) -> dict | None:
    """Achieved decode bandwidth (weights streamed once per step at batch 1) vs the measured peak."""
    if not decode_tps_value or not peak_gbps or not math.isfinite(decode_tps_value):
        return None
    achieved = weight_bytes * decode_tps_value / 1e9
    return {"achieved_gbps": achieved, "ratio": achieved / peak_gbps}


def mib(n_bytes: float) -> float:
    """Bytes -> MiB (2**20)."""
    return n_bytes / 2**20
