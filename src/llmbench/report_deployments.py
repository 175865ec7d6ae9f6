"""Report rows are deployments (model x backend x precision [x attention]): which profiled row
stands for each deployment, which accuracy belongs to it, what the fastest deployment of a model
buys against transformers bf16, and how the GGUF types move speed, memory and accuracy.

Pure (no I/O); llmbench.report builds the table with it."""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from llmbench.results import Deployment, EvaluateResult, EvaluateRun, GgufSet, ProfileResult, ProfileRow
from llmbench.spec import METRICS

MISSING = "—"
BASELINE = ("transformers", "bfloat16")  # what the speed-up is stated against (today's default)


def comparison_point(prof: ProfileResult) -> tuple[int, int]:
    """(batch, input_len) every deployment of a model is compared at: batch 1 (else the smallest)
    and the smallest input length; one profile run, so the same threads and machine."""
    return min(prof.protocol.batch_sizes), min(prof.protocol.input_lens)


def pick_rows(prof: ProfileResult) -> list[tuple[Deployment, ProfileRow | None, str, str | None]]:
    """Per deployment, in sweep order: (deployment, its row at the comparison point - else its
    first ok row - or None, status, reason)."""
    b0, n0 = comparison_point(prof)
    out = []
    for dep in dict.fromkeys(r.deployment for r in prof.results):
        rows = [r for r in prof.results if r.deployment == dep]
        ok = [r for r in rows if r.status == "ok"]
        at = next((r for r in ok if (r.batch_size, r.input_len) == (b0, n0)), ok[0] if ok else None)
        out.append((dep, at, "ok" if at else rows[0].status, None if at else rows[0].reason))
    return out


def run_for(ev: EvaluateResult | None, dep: Deployment) -> tuple[EvaluateRun | None, str | None]:
    """The accuracy of a deployment and a note when it is borrowed: evaluate scores transformers
    once per model (evaluate.dtype, default attention), so another dtype/attention reuses it."""
    if ev is None:
        return None, None
    same = [r for r in ev.runs if (r.deployment.backend, r.deployment.precision) == (dep.backend, dep.precision)]
    if same:
        return same[0], None
    if dep.backend == "transformers":
        other = next((r for r in ev.runs if r.deployment.backend == "transformers"), None)
        if other is not None:
            return other, f"reuses the {other.deployment.precision} score"
    return None, None


def live(ev: EvaluateResult | None, dep: Deployment | None, weights: str
         ) -> tuple[str | None, dict[str, tuple[float, str]]]:
    """(why there is no score | None, task -> (value in %, cell text)). Random weights are never scored."""
    if ev is None:
        return None, {}
    if weights == "random" or ev.weights == "random":
        return "skipped (random weights)", {}
    if ev.status != "ok" and not ev.runs:
        return f"skipped ({ev.reason})", {}
    run, note = run_for(ev, dep) if dep is not None else (None, None)
    if run is None:
        return "not scored on this deployment", {}
    if run.status != "ok":
        return f"{run.status} ({run.reason})", {}
    out = {}
    for task, r in run.tasks.items():
        metric = "acc_norm" if r.acc_norm is not None else "acc"
        val, se = getattr(r, metric), getattr(r, f"{metric}_stderr")
        if r.status != "ok" or val is None:
            out[task] = (np.nan, f"no score ({r.reason})" if r.reason else "no score")
            continue
        lim = f", limit {r.limit}" if r.limit else ""
        shots = "?" if r.num_fewshot is None else r.num_fewshot
        how = f", {run.prompt_format}" + (f", {note}" if note else "")
        out[task] = (100 * val, f"{100 * val:.1f}{'' if se is None else f' ±{100 * se:.1f}'} "
                                f"({shots}-shot {metric}, n={r.n}{lim}, {r.suite}{how})")
    return None, out


def gguf_facts(sets: dict[str, GgufSet], dep: Deployment) -> dict[str, Any]:
    """bits_per_weight / gguf_mib / gguf_origin of a llamacpp deployment (NaN otherwise)."""
    f = None
    if dep.backend == "llamacpp" and dep.model in sets:
        f = next((x for x in sets[dep.model].files if x.precision == dep.precision), None)
    return {"bits_per_weight": f.bits_per_weight if f else np.nan,
            "gguf_mib": f.file_bytes / 2**20 if f and f.file_bytes else np.nan,
            "gguf_origin": f.origin if f else None}


def speedups(t: pd.DataFrame, latency: str, decode: str) -> list[str]:
    """Per model: what its fastest deployment buys and costs against transformers bf16, at the
    comparison point (rows of one profile: same batch, input length and threads)."""
    lines = []
    for model, g in t[t["status"] == "ok"].groupby("model", sort=False):
        g = g[g[decode].notna()]
        base = g[(g["backend"] == BASELINE[0]) & (g["precision"] == BASELINE[1])]
        if g.empty or base.empty:
            continue
        base, best = base.iloc[0], g.loc[g[decode].idxmax()]
        shape = f"batch {best['batch_size']:.0f}, {best['input_len']:.0f} tokens in"
        if best.name == base.name:
            lines.append(f"- **{model}**: transformers bf16 is already its fastest deployment ({shape}).")
            continue
        acc = ""
        if pd.notna(best.get("quality")) and pd.notna(base.get("quality")):
            acc = f", {best['quality'] - base['quality']:+.1f} quality points"
        elif best["weights"] == "random":
            acc = " (random weights: no accuracy)"
        lat = (f", {METRICS[latency.rsplit('_', 1)[0]].label} p50 x{best[latency] / base[latency]:.2f}"
               if pd.notna(best[latency]) and base[latency] else "")
        lines.append(f"- **{model}**: fastest is `{best.name}`: {best[decode] / base[decode]:.1f}x decode "
                     f"vs transformers bf16{acc}{lat} ({shape}).")
    return lines


def precision_table(t: pd.DataFrame, cols: dict[str, str], sets: dict[str, GgufSet]) -> tuple[pd.DataFrame, list[str]]:
    """The llamacpp rows per model and type (cols: table column -> header, already formatted
    by the caller), and one line per model on what its GGUFs cost on disk."""
    cpp = t[t["backend"] == "llamacpp"]
    frame = pd.DataFrame({"model": cpp["model"], "type": cpp["precision"],
                          "origin": cpp["gguf_origin"].fillna(MISSING),
                          "bits/weight": cpp["bits_per_weight"].map(lambda x: MISSING if pd.isna(x) else f"{x:.2f}"),
                          "GGUF MiB": cpp["gguf_mib"].map(lambda x: MISSING if pd.isna(x) else f"{x:.0f}")})
    for c, header in cols.items():
        frame[header] = cpp[c]
    disk = []
    for model, s in sets.items():
        made = [f for f in s.files if f.status == "ok" and f.origin != "shipped" and f.file_bytes]
        bad = [f for f in s.files if f.status != "ok"]
        if made:
            disk.append(f"- {model}: {sum(f.file_bytes for f in made) / 2**20:.0f} MiB of converted GGUFs "
                        f"({', '.join(f.precision for f in made)}) in data/gguf/{model}, and as much again "
                        "in the DVC cache")
        for f in bad:
            disk.append(f"- {model} {f.precision}: {f.status} ({f.reason})")
        if s.status != "ok" and not s.files and s.reason:
            disk.append(f"- {model}: no GGUF ({s.reason})")
    return frame, disk
