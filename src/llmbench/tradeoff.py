"""Trade-offs between quality, latency, memory and cost. Pure: no I/O, no plotting.

Tables here are DataFrames indexed by model name. Conventions: quality higher is better;
latency, memory and cost lower is better. A model with NaN in a needed column is never
on the frontier nor recommended, but it stays in the table with the reason.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from llmbench.config import Budget
from llmbench.spec import METRICS

# budget key -> (metric, statistic). The table holds SI units (the field, e.g. ttft_s_p50); a
# limit is in the metric's display unit (ms, MiB, USD), so values are scaled before comparing.
BUDGET_METRICS: dict[str, tuple[str, str | None]] = {
    "max_ttft_ms": ("ttft_s", "p50"),
    "max_tpot_ms": ("tpot_s", "p50"),
    "max_rss_mib": ("rss_peak_mib", None),
    "max_usd_per_mtok": ("usd_per_mtok", None),
}


def usd_per_mtok(usd_per_hour: float, decode_tps: Any) -> Any:
    """USD per 1M output tokens = usd_per_hour / (decode_tps * 3600) * 1e6.

    decode_tps counts all sequences of the batch, so the cost holds at the batch size it was
    measured at. Non-positive or missing throughput gives NaN (no cost can be claimed)."""
    tps = np.asarray(decode_tps, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        cost = np.where(tps > 0, usd_per_hour / (tps * 3600.0) * 1e6, np.nan)
    return float(cost) if cost.ndim == 0 else cost


def fingerprint_id(fp: Mapping[str, Any] | None) -> str | None:
    """Short stable id of an environment fingerprint (sorted JSON, sha256, 8 hex)."""
    if not fp:
        return None
    blob = json.dumps(fp, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:8]


def comparable(fingerprints: Mapping[str, str | None], mix: bool = False
               ) -> tuple[list[str], dict[str, str], str | None]:
    """Which models may be compared: (kept, excluded{model: reason}, plain note or None).

    Without mix, only the fingerprint shared by the most models is compared (ties: the first
    model's); models without a fingerprint have no measurement and are not judged here."""
    known = {m: f for m, f in fingerprints.items() if isinstance(f, str) and f}  # NaN: none
    groups = list(dict.fromkeys(known.values()))
    if mix or len(groups) <= 1:
        note = (f"Mixing {len(groups)} environments (report.mix_fingerprints: true): "
                "numbers from different machines are compared." if mix and len(groups) > 1
                else None)
        return list(fingerprints), {}, note
    counts = {g: sum(1 for f in known.values() if f == g) for g in groups}
    main = max(groups, key=lambda g: counts[g])  # max keeps the first on ties
    excluded = {m: f"measured in another environment (fingerprint {f}, compared: {main})"
                for m, f in known.items() if f != main}
    note = (f"Refusing to compare across environments: results come from {len(groups)} "
            f"fingerprints ({', '.join(groups)}); only {main} ({counts[main]} models) is compared. "
            "Set report.mix_fingerprints: true to mix them.")
    return [m for m in fingerprints if m not in excluded], excluded, note


def pareto_front(df: pd.DataFrame, quality: str, latency: str, memory: str) -> pd.Series:
    """True for models not dominated on (quality up, latency down, memory down).

    A dominates B when A is at least as good everywhere and strictly better somewhere, so
    exact ties are all kept. Rows with NaN in any of the three columns are never on it."""
    cols = df[[quality, latency, memory]].astype(float)
    ok = cols.notna().all(axis=1)
    pts = np.column_stack([-cols[quality], cols[latency], cols[memory]])  # all "lower is better"
    front = pd.Series(False, index=df.index)
    idx = np.flatnonzero(ok.to_numpy())
    for i in idx:
        others = pts[idx[idx != i]]
        dominated = np.any(np.all(others <= pts[i], axis=1) & np.any(others < pts[i], axis=1))
        front.iloc[i] = not dominated
    return front


@dataclass(frozen=True)
class Recommendation:
    model: str | None  # None: nothing fits
    text: str  # one plain line for the report
    excluded: dict[str, str] = field(default_factory=dict)  # model -> why not chosen
    binding: tuple[str, ...] = ()  # budget keys that decide "none fits"


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def _failures(row: pd.Series, limits: Mapping[str, float]) -> dict[str, str]:
    out = {}
    for key, limit in limits.items():
        name, stat = BUDGET_METRICS[key]
        metric = METRICS[name]
        val = row.get(metric.field(stat), np.nan)
        if val is None or pd.isna(val):
            out[key] = f"{metric.header(stat)} not measured"
        elif metric.shown(float(val)) > limit:
            out[key] = f"{metric.header(stat)} {_fmt(metric.shown(float(val)))} > {key} {_fmt(limit)}"
    return out


def _limits(budget: Budget | None) -> dict[str, float]:
    """The set limits (config.Budget validated them)."""
    b = budget or Budget()
    given = {"max_ttft_ms": b.max_ttft_ms, "max_tpot_ms": b.max_tpot_ms,
             "max_rss_mib": b.max_rss_mib, "max_usd_per_mtok": b.max_usd_per_mtok}
    return {k: float(v) for k, v in given.items() if v is not None}


def recommend(df: pd.DataFrame, quality: str, budget: Budget | None,
              pre_excluded: Mapping[str, str] | None = None,
              tie_break: Sequence[str] = ("tpot_s_p50", "rss_peak_mib"), label: str | None = None
              ) -> Recommendation:
    """Best-quality model within the budget, with the reason every other model lost.
    Ties on quality go to the lower tie_break columns, then the name. label names quality."""
    label = label or quality
    limits = _limits(budget)
    excluded: dict[str, str] = dict(pre_excluded or {})
    fails: dict[str, dict[str, str]] = {}
    fits_unscored: list[str] = []
    candidates: list[str] = []
    for model, row in df.iterrows():
        if model in excluded:
            continue
        f = _failures(row, limits)
        q = row.get(quality, np.nan)
        if f:
            fails[model] = f
            excluded[model] = "over budget: " + "; ".join(f.values())
        elif q is None or pd.isna(q):
            fits_unscored.append(model)
            excluded[model] = f"fits the budget but has no '{label}' score"
        else:
            candidates.append(model)
    budget_txt = ", ".join(f"{k}={_fmt(v)}" for k, v in limits.items()) or "no limits set"
    if candidates:
        keys = [c for c in tie_break if c in df.columns]
        ranked = (df.loc[candidates].assign(_name=candidates)
                  .sort_values([quality, *keys, "_name"], ascending=[False, *[True] * len(keys), True],
                               na_position="last"))
        best = str(ranked.index[0])
        bq = float(ranked[quality].iloc[0])
        for model in ranked.index[1:]:
            q = float(ranked.loc[model, quality])
            excluded[model] = (f"fits, but {label} {_fmt(q)} < {_fmt(bq)} ({best})" if q < bq
                               else f"fits and ties {best} on {label} {_fmt(q)}; lost the "
                                    f"tie-break ({', '.join(keys) or 'name'})")
        text = f"Recommended: {best} ({label} {_fmt(bq)}) within budget ({budget_txt})."
        return Recommendation(best, text, {m: excluded[m] for m in df.index if m in excluded})
    unscored = f" Fitting but unscored: {', '.join(fits_unscored)}." if fits_unscored else ""
    head = (f"No model with a '{label}' score fits the budget ({budget_txt})" if fits_unscored
            else f"No model fits the budget ({budget_txt})")
    # Which limit binds: those whose relaxation alone admits a scored model (and the value that
    # takes); if no single one does, the limit that excludes the most models.
    single: dict[str, list[tuple[float, str]]] = {}
    for model, f in fails.items():
        scored = not pd.isna(df.loc[model].get(quality, np.nan))
        if len(f) == 1 and scored and "not measured" not in next(iter(f.values())):
            key = next(iter(f))
            name, stat = BUDGET_METRICS[key]
            shown = METRICS[name].shown(float(df.loc[model, METRICS[name].field(stat)]))
            single.setdefault(key, []).append((shown, model))
    if single:
        parts = [f"{key}={_fmt(limits[key])} (relaxing it to {_fmt(min(opts)[0])} admits "
                 f"{min(opts)[1]})" for key, opts in single.items()]
        return Recommendation(None, f"{head}; binding limit: {'; '.join(parts)}.{unscored}",
                              excluded, tuple(single))
    counts = {k: sum(k in f for f in fails.values()) for k in limits}
    if not counts or not max(counts.values()):
        return Recommendation(None, f"{head}: no model has a '{label}' score and measurements."
                              f"{unscored}", excluded)
    worst = max(counts, key=lambda k: counts[k])
    text = (f"{head}; no single limit is to blame (each model breaks several or lacks a score); "
            f"most binding: {worst}={_fmt(limits[worst])} (excludes {counts[worst]} of "
            f"{len(fails)}).{unscored}")
    return Recommendation(None, text, excluded, (worst,))
