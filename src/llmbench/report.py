"""The aggregate report: one row per roster model's headline deployment, joining measured
latency/memory (ProfileResult), live accuracy (EvaluateResult), published reference scores
(params.references) and cost; then the Pareto frontier, a budget recommendation, PNG plots,
CSVs for `dvc plots` (dvc.yaml `plots:` names them) and metrics/summary.json.

The table keeps SI units under spec field names (ttft_s_p50, rss_peak_mib); only the markdown,
the figures and the plot CSVs convert (spec.Metric.scale). build_report computes (no I/O);
write_report writes the files."""
from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from llmbench.config import Budget, Cost, Report
from llmbench.errors import UserError
from llmbench.io import write_bytes_atomic
from llmbench.reference import BENCHMARKS
from llmbench.report_serving import ServingSection, capacity_exclusions
from llmbench.report_serving import outputs as serving_outputs
from llmbench.report_deployments import gguf_facts, live, pick_rows, precision_table, speedups
from llmbench.results import (EvaluateResult, GgufSet, InferResult, ProfileResult, ProfileRow, Summary, SummaryRow,
                              row_key)
from llmbench.spec import METRICS, lookup
from llmbench.tradeoff import (Recommendation, comparable, fingerprint_id, pareto_front, recommend,
                               usd_per_mtok)

MISSING = "—"
REF_LABEL = "reference (published)"
P50 = {m: METRICS[m].field("p50") for m in ("ttft_s", "tpot_s", "e2e_s", "decode_tps", "prefill_tps")}
SHAPE_KEYS = ("backend", "precision", "attention", "batch_size", "input_len", "output_len")
_ID = ("model", "deployment", "weights", *SHAPE_KEYS)
# csv name -> columns, in SI field names; written with display names (spec.Metric.column)
PLOT_CSVS = {
    "latency_vs_batch.csv": (*_ID, P50["ttft_s"], P50["tpot_s"], P50["e2e_s"], "fingerprint"),
    "tokps_vs_input.csv": (*_ID, P50["decode_tps"], P50["prefill_tps"], "fingerprint"),
    "tradeoff.csv": (*_ID, P50["ttft_s"], P50["tpot_s"], "rss_peak_mib", "usd_per_mtok", "quality",
                     "frontier", "headline", "fingerprint"),
    "tokps_per_model.csv": ("model", "deployment", "weights", "batch_size", P50["decode_tps"]),
}


@dataclass
class ReportResult:
    table: pd.DataFrame  # one row per roster model (index: results.row_key of its deployment)
    markdown: str
    figures: dict[str, Figure]  # png file name -> figure (for MLflow log_figure)
    plot_data: dict[str, pd.DataFrame]  # csv file name -> flat frame in display units (dvc plots)
    summary: Summary  # metrics/summary.json
    quality: str  # the table column that ranks quality
    frontier: list[str] = field(default_factory=list)
    recommendation: Recommendation | None = None
    notes: list[str] = field(default_factory=list)


def display(df: pd.DataFrame) -> pd.DataFrame:
    """SI spec fields -> display units and names (ttft_s_p50 in s -> ttft_p50_ms in ms)."""
    out = df.copy()
    for col in df.columns:
        found = lookup(col)
        if found:
            metric, stat = found
            out[col] = pd.to_numeric(df[col], errors="coerce") * metric.scale
            out = out.rename(columns={col: metric.column(stat)})
    return out


def _num(x: Any, fmt: str = "{:.1f}") -> str:
    return MISSING if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


def _txt(col: pd.Series) -> pd.Series:
    return col.astype(object).where(col.notna(), MISSING)


def _reference_row(reference: pd.DataFrame, ref_id: str | None, protocol: str | None) -> pd.Series | None:
    if not ref_id or reference is None or reference.empty:
        return None
    rows = reference[reference["model_id"].astype(str) == ref_id]
    if rows.empty:
        return None
    # several protocols for one model: prefer the one report.reference_protocol ranks, then the most scores
    order = rows.assign(_other=rows["protocol"] != protocol,
                        _n=-rows[list(BENCHMARKS)].notna().sum(axis=1))
    return rows.loc[order.sort_values(["_other", "_n"], kind="stable").index[0]]


def _measured(r: ProfileRow) -> dict[str, Any]:
    """The SI numbers of one profiled row, under spec field names."""
    return {**{P50[m]: getattr(r, m).p50 for m in P50}, "rss_peak_mib": r.memory.rss_peak_mib,
            "rss_anon_peak_mib": r.memory.rss_anon_peak_mib, "rss_file_peak_mib": r.memory.rss_file_peak_mib,
            "weights_mib": r.memory.weights_mib, "load_s": r.load_s,
            **{k: getattr(r.deployment, k) for k in ("backend", "precision", "attention")},
            **{k: getattr(r, k) for k in ("batch_size", "input_len", "output_len")},
            "deployment": r.deployment.key}


def _shapes(prof: ProfileResult, cost: float) -> list[dict]:
    fp = fingerprint_id(prof.fingerprint.model_dump())
    shown = {id(r) for _, r, _, _ in pick_rows(prof) if r is not None}  # each deployment's report row
    rows = []
    for r in prof.results:
        if r.status == "ok":
            row = {"model": prof.model, "weights": prof.weights, **_measured(r), "fingerprint": fp,
                   "headline": id(r) in shown}
            row["usd_per_mtok"] = usd_per_mtok(cost, row[P50["decode_tps"]])
            rows.append(row)
    return rows


def _model_rows(model: str, prof: ProfileResult | None, inf: InferResult | None, ev: EvaluateResult | None,
                reference: pd.DataFrame, ref_id: str | None, protocol: str | None, cost: float,
                gguf: Mapping[str, GgufSet]) -> list[dict]:
    """One row per deployment of the model (report_deployments.pick_rows), or one row saying why
    the model has none."""
    weights = prof.weights if prof else ev.weights if ev else "?"
    base: dict[str, Any] = {"model": model, "weights": weights, "n_params": prof.info.n_params if prof else np.nan,
                            "deployment": None, "reference_id": ref_id,
                            "fingerprint": fingerprint_id(prof.fingerprint.model_dump()) if prof else None}
    ref = _reference_row(reference, ref_id, protocol)
    for col in (*BENCHMARKS, "average", "average_n", "protocol", "protocol_detail", "source", "note"):
        base[f"ref_{col}"] = np.nan if ref is None else ref.get(col, np.nan)
    picked = pick_rows(prof) if prof else []
    if not picked:
        reason = prof.reason if prof else "not profiled (no profile result)"
        picked = [(None, None, "failed" if prof else "skipped", reason)]
    rows = []
    for dep, r, status, reason in picked:
        run = inf.run(dep) if inf and dep else None
        row = {**base, "status": status, "reason": reason, "gen_tps": run.gen_tps if run else np.nan}
        if dep is not None:
            row.update({"deployment": dep.key, "backend": dep.backend, "precision": dep.precision,
                        "attention": dep.attention, **gguf_facts(dict(gguf), dep)})
        if r is not None:
            row.update(_measured(r))
        row = {k: np.nan if v is None and k not in ("reference_id", "fingerprint", "reason", "deployment",
                                                    "attention", "gguf_origin") else v for k, v in row.items()}
        row["usd_per_mtok"] = usd_per_mtok(cost, row.get(P50["decode_tps"], np.nan))
        row["live_skipped"], scores = live(ev, dep, weights)
        for task, (val, text) in scores.items():
            row[f"live_{task}"], row[f"live_{task}_text"] = val, text
        rows.append(row)
    return rows


def _quality_column(name: str, table: pd.DataFrame) -> str:
    """report.quality -> column. 'reference:<bench>' / 'live:<task>' force the kind; a bare
    name is a live lm-eval task if any model ran it, else a published benchmark."""
    kind, _, key = name.partition(":") if ":" in name else ("", "", name)
    refs = (*BENCHMARKS, "average")
    if kind == "reference" or (not kind and key in refs and f"live_{key}" not in table):
        if key not in refs:
            raise UserError(f"params.yaml: report.quality: unknown reference benchmark '{key}' "
                            f"(expected one of: {', '.join(refs)})")
        return f"ref_{key}"
    if kind not in ("", "live"):
        raise UserError(f"params.yaml: report.quality: '{name}' must be a task name, "
                        "'live:<task>' or 'reference:<benchmark>'")
    return f"live_{key}"


def _live_cols(t: pd.DataFrame) -> list[str]:
    return [c for c in t.columns if c.startswith("live_") and c != "live_skipped"
            and not c.endswith("_text")]


def _md_table(df: pd.DataFrame) -> str:
    # disable_numparse: cells are already formatted text (tabulate would turn "20.0" into "20")
    return df.astype(str).replace(r"\|", "/", regex=True).to_markdown(index=False, disable_numparse=True)


def build_report(roster: list[str], profile: Mapping[str, ProfileResult], infer: Mapping[str, InferResult],
                 evaluate: Mapping[str, EvaluateResult], reference: pd.DataFrame | None, *, cost: Cost,
                 budget: Budget, report: Report, references: Mapping[str, str],
                 failed: list[dict] = (), serving: ServingSection | None = None,
                 gguf: Mapping[str, GgufSet] | None = None) -> ReportResult:
    """Join everything for the roster's models only (other files/rows are ignored). `failed`:
    llmbench.failures.failed_rows(...), one dict per model whose stage failed."""
    usd_h = cost.usd_per_hour
    reference = reference if reference is not None else pd.DataFrame(columns=["model_id", "protocol"])
    gguf = {m: s for m, s in (gguf or {}).items() if m in roster}
    rows = [row for m in roster for row in _model_rows(
        m, profile.get(m), infer.get(m), evaluate.get(m), reference, references.get(m),
        report.reference_protocol, usd_h, gguf)]
    table = pd.DataFrame(rows)
    for f in failed:  # a failed stage's row says which stage and why, not "not profiled"
        table.loc[table["model"] == f["model"], ["status", "reason"]] = ["failed", f["reason"]]
    for col in (*SHAPE_KEYS, "rss_anon_peak_mib", "rss_file_peak_mib", "bits_per_weight", "gguf_mib",
                "gguf_origin"):  # no model profiled (all failed): the report is still written
        if col not in table:
            table[col] = None if col in ("backend", "precision", "attention", "gguf_origin") else np.nan
    table.index = [d if isinstance(d, str) else m for m, d in zip(table["model"], table["deployment"])]
    qcol = _quality_column(report.quality, table)
    latency = METRICS[report.latency].field("p50")
    # every live task column gets a cell per model: the score, why it was skipped, or "—"
    tasks = {c[5:] for c in _live_cols(table)} | ({qcol[5:]} if qcol[:5] == "live_" else set())
    for task in sorted(tasks) or (["lm_eval"] if table["live_skipped"].notna().any() else []):
        col = f"live_{task}"
        table[col] = pd.to_numeric(table[col], errors="coerce") if col in table else np.nan
        text = table[f"{col}_text"] if f"{col}_text" in table else pd.Series(np.nan, table.index)
        table[f"{col}_text"] = _txt(text.astype(object).fillna(table["live_skipped"]))
    table["quality"] = pd.to_numeric(table[qcol], errors="coerce") if qcol in table else np.nan
    notes: list[str] = [f"**Failed:** {f['model']}: {f['reason']}" for f in failed]
    kept, pre_excluded, fp_note = comparable(dict(zip(table.index, table["fingerprint"])),
                                             report.mix_fingerprints)
    notes += [fp_note] if fp_note else []
    want = report.reference_protocol
    if qcol.startswith("ref_") and want:
        other = table["quality"].notna() & (table["ref_protocol"] != want)
        for k in table.index[other]:
            pre_excluded.setdefault(k, f"reference score under protocol "
                                       f"'{table.at[k, 'ref_protocol']}', not '{want}'")
    for k in table.index[table.get(latency, pd.Series(np.nan, table.index)).isna()
                         | table.get("rss_peak_mib", pd.Series(np.nan, table.index)).isna()]:
        pre_excluded.setdefault(k, f"not profiled: no measured {latency} / peak RSS")
    for col in (latency, "rss_peak_mib", *P50.values(), "load_s", "weights_mib"):
        table[col] = pd.to_numeric(table[col], errors="coerce") if col in table else np.nan
    table["compared"] = [k in kept and k not in pre_excluded for k in table.index]
    judged = table.loc[table["compared"]]
    front = pareto_front(judged, "quality", latency, "rss_peak_mib")
    table["frontier"] = table.index.isin(front[front].index)
    # budget.min_capacity_rps: a deployment needs that much served capacity at the SLO
    pre_excluded = {**capacity_exclusions(table.index, serving, budget.min_capacity_rps), **pre_excluded}
    rec = recommend(table, "quality", budget, pre_excluded, label=qcol)
    if table["quality"].notna().sum() == 0:
        notes.append(f"No model has a '{qcol}' score, so there is no frontier." + (
            " Random weights are never scored; set report.quality: reference:average to rank by "
            "the real models' published scores." if qcol.startswith("live_") else ""))
    shapes = pd.DataFrame([s for m in roster if m in profile for s in _shapes(profile[m], usd_h)],
                          columns=list(dict.fromkeys(c for cols in PLOT_CSVS.values() for c in cols)))
    shapes["quality"] = shapes["deployment"].map(dict(zip(table["deployment"], table["quality"])))
    on_front = dict(zip(table["deployment"], table["frontier"]))
    shapes["frontier"] = shapes["deployment"].map(on_front).eq(True) & shapes["headline"].astype(bool)
    plot_data = {name: display(shapes.loc[:, list(cols)]) for name, cols in PLOT_CSVS.items()
                 if name != "tokps_per_model.csv"}
    plot_data["tokps_per_model.csv"] = display(table.loc[table[P50["decode_tps"]].notna(),
                                                         list(PLOT_CSVS["tokps_per_model.csv"])])
    figures = _figures(table, qcol, latency)
    md = _markdown(table, qcol, latency, rec, budget, notes, usd_h, list(figures), gguf)
    s_md, s_figs, s_csvs = serving_outputs(serving)  # endpoints under load (llmbench.report_serving)
    md, figures, plot_data = md + s_md, {**figures, **s_figs}, {**plot_data, **s_csvs}
    return ReportResult(table, md, figures, plot_data, _summary(table, rec), qcol,
                        list(table.index[table["frontier"]]), rec, notes)


def _opt(v: Any) -> float | None:
    return None if v is None or pd.isna(v) else float(v)


def _summary(table: pd.DataFrame, rec: Recommendation) -> Summary:
    rows = {}
    for key, r in table.iterrows():
        attention = r["attention"] if isinstance(r["attention"], str) else None  # NaN for llamacpp rows
        dep = None if pd.isna(r["deployment"]) else {"model": r["model"], "backend": r["backend"],
                                                      "precision": r["precision"], "attention": attention}
        rows[key] = SummaryRow(
            deployment=dep, status=r["status"], reason=r["reason"] if isinstance(r["reason"], str) else None,
            **{k: _opt(r[k]) for k in ("n_params", "load_s", *(P50[m] for m in ("ttft_s", "tpot_s", "e2e_s",
                                                                                "decode_tps")),
                                        "rss_peak_mib", "rss_anon_peak_mib", "rss_file_peak_mib",
                                        "bits_per_weight", "usd_per_mtok", "quality", "ref_average")},
            live={c[5:]: float(r[c]) for c in _live_cols(table) if pd.notna(r[c])},
            frontier=int(bool(r["frontier"])), recommended=int(key == rec.model))
    return Summary(rows=rows, frontier_size=int(table["frontier"].sum()), n_rows=len(table),
                   n_compared=int(table["compared"].sum()))


def _shown(t: pd.DataFrame, col: str, fmt: str = "{:.1f}") -> pd.Series:
    metric, _ = lookup(col)
    return t[col].map(lambda x: _num(metric.shown(x) if pd.notna(x) else x, fmt))


def _header(col: str) -> str:
    metric, stat = lookup(col)
    return metric.header(stat)


def _markdown(table: pd.DataFrame, qcol: str, latency: str, rec: Recommendation, budget: Budget,
              notes: list[str], usd_h: float, pngs: list[str], gguf: Mapping[str, GgufSet] | None = None) -> str:
    t = table
    perf = pd.DataFrame({
        "model": t["model"], "weights": t["weights"],
        "params": [_num(p / 1e6, "{:.1f}M") for p in t["n_params"]],
        "deployment": [MISSING if not isinstance(d, str) else d.split(".", 1)[1] for d in t["deployment"]],
        "batch": [_num(b, "{:.0f}") for b in t.get("batch_size", pd.Series(np.nan, t.index))]})
    for col, fmt in (("load_s", "{:.1f}"), (P50["ttft_s"], "{:.1f}"), (P50["tpot_s"], "{:.1f}"),
                     (P50["decode_tps"], "{:.1f}"), (P50["e2e_s"], "{:.1f}"), ("rss_peak_mib", "{:.0f}"),
                     ("rss_anon_peak_mib", "{:.0f}"), ("rss_file_peak_mib", "{:.0f}"), ("usd_per_mtok", "{:.3g}")):
        perf[_header(col)] = _shown(t, col, fmt)
    perf["quality"] = [_num(q, "{:.1f}") for q in t["quality"]]
    perf["env"] = _txt(t["fingerprint"])
    qual = pd.DataFrame({"model": t["model"], "weights": t["weights"], "deployment": perf["deployment"]})
    for b in BENCHMARKS:
        qual[b] = t[f"ref_{b}"].map(lambda x: _num(x, "{:.2f}"))
    qual["average"] = [_num(a, "{:.2f}") + ("" if pd.isna(n) or n == len(BENCHMARKS) else
                                            f" ({n:.0f}/{len(BENCHMARKS)})")
                       for a, n in zip(t["ref_average"], t["ref_average_n"])]
    qual["reference protocol"] = _txt(t["ref_protocol"])
    for c in [c for c in t.columns if c.startswith("live_") and c.endswith("_text")]:
        qual[f"live {c[5:-5]}"] = _txt(t[c])
    lat_h = _header(latency)
    lines = ["# llmbench report", "",
             f"Quality column: `{qcol}`; latency: {lat_h}; memory: peak RSS; cost at "
             f"{usd_h:g} USD/hour as usd_per_hour / (decode tok/s * 3600) * 1e6 at the batch size "
             "shown. Each row is a deployment (model.backend.precision[.attention]) at batch 1 and the "
             "smallest input length (else its first measured shape). Peak RSS = anonymous (heap) + "
             "file-backed (mmapped files: a GGUF's weights) resident memory; the budget applies to it.",
             ""]
    if (t["weights"] == "random").any():
        lines += ["**Random weights:** for models marked `random`, latency and memory are measured "
                  "on random weights of the real model's shape; they have no accuracy. Quality "
                  f"columns marked *{REF_LABEL}* are published numbers for the real model, not "
                  "measured here.", ""]
    lines += [f"> {n}" for n in notes] + ([""] if notes else [])
    lines += ["## Measured on this machine", "", _md_table(perf), ""]
    bad = t[(t["status"] != "ok") & t["deployment"].map(lambda d: isinstance(d, str))]
    lines += [f"- `{k}`: {r['status']} ({r['reason']})" for k, r in bad.iterrows()] + ([""] if len(bad) else [])
    fast = speedups(t, latency, P50["decode_tps"])
    if fast:
        lines += ["## What the fastest deployment buys", "",
                  "Against transformers bf16 of the same model, in the same profile run (same batch, "
                  "input length and threads); quality points are the quality column's.", "", *fast, ""]
    if (t["backend"] == "llamacpp").any():
        cols = {}
        for col, fmt in ((P50["decode_tps"], "{:.1f}"), (P50["ttft_s"], "{:.1f}"), ("rss_peak_mib", "{:.0f}")):
            cols[col] = _shown(t, col, fmt)
        frame, disk = precision_table(t.assign(**{c: v for c, v in cols.items()}), {
            c: _header(c) for c in cols} | {"quality": "quality"}, dict(gguf or {}))
        frame["quality"] = frame["quality"].map(lambda q: _num(q, "{:.1f}"))
        lines += ["## llama.cpp types", "", "Effective bits per weight = tensor bytes x 8 / weights (a "
                  "K-quant falls back to other types on tensor widths not divisible by 256). `-from-` "
                  "types are made from a shipped GGUF's weights, not from the original ones.", "",
                  _md_table(frame), ""]
        lines += (["Disk:", "", *disk, "", "`dvc gc -w` drops cache entries no longer used by the "
                   "workspace (e.g. after editing backends.llamacpp.quantizations).", ""] if disk else [])
    lines += [
              "## Quality", "", f"Benchmark columns are *{REF_LABEL}* scores (percent) for the "
              "model's id in params.yaml `references`; `live` columns are this run's lm-eval results.",
              "", _md_table(qual), ""]
    refs = t[t["ref_protocol"].notna()].drop_duplicates("reference_id")
    lines += [f"- `{r['ref_protocol']}` ({r['reference_id']}): {r['ref_protocol_detail']}; "
              f"source: {r['ref_source']}" + (f"; **note:** {r['ref_note']}"
                                              if isinstance(r["ref_note"], str) else "")
              for _, r in refs.iterrows()]
    lines += ["", "## Pareto frontier", ""]
    fr = t[t["frontier"]]
    lat_m, _ = lookup(latency)
    lines += ([f"- **{k}**: {qcol} {_num(r['quality'], '{:.2f}')}, {lat_h} "
               f"{_num(lat_m.shown(r[latency]))}, peak RSS {_num(r['rss_peak_mib'], '{:.0f}')} MiB"
               for k, r in fr.iterrows()] or ["No model has quality, latency and memory together."])
    limits = ", ".join(f"{k}={v:g}" for k, v in budget.model_dump().items() if v is not None)
    lines += ["", "## Recommendation", "", f"Budget: {limits or 'none set'}", "",
              rec.text, ""] + [f"- {m}: {why}" for m, why in rec.excluded.items()]
    lines += ["", "## Plots", ""] + [f"![{p[:-4]}](plots/{p})" for p in pngs]
    return "\n".join(lines) + "\n"


def _label(ax, xs, ys, names) -> None:
    for x, y, n in zip(xs, ys, names):
        ax.annotate(n, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)


BACKEND_COLORS = {"transformers": "tab:blue", "llamacpp": "tab:orange"}


def _short(t: pd.DataFrame) -> list[str]:
    """Plot labels: the deployment key without the attention (model.backend.precision)."""
    return [m if not isinstance(d, str) else ".".join(d.split(".")[:3]) for m, d in zip(t["model"], t["deployment"])]


def _figures(t: pd.DataFrame, qcol: str, latency: str) -> dict[str, Figure]:
    figs = {}
    fig = Figure(figsize=(7, 4.5), dpi=110)
    ax = fig.add_subplot()
    lat_m, lat_stat = lookup(latency)
    ok = t[t["quality"].notna() & t[latency].notna()].copy()
    ok[latency] = ok[latency] * lat_m.scale  # shown in the display unit (ms)
    lat_h = lat_m.header(lat_stat)
    for kind, marker in (("pretrained", "o"), ("random", "s")):
        for backend, color in BACKEND_COLORS.items():
            sel = ok[(ok["weights"] == kind) & (ok["backend"] == backend)]
            if len(sel):
                ax.scatter(sel[latency], sel["quality"], marker=marker, s=40,
                           facecolors="none" if kind == "random" else color, edgecolors=color,
                           label=f"{backend}, {kind} weights" + (" (latency on real shape)"
                                                                 if kind == "random" else ""))
    _label(ax, ok[latency], ok["quality"], _short(ok))
    ax.margins(0.15)  # room for the model labels
    fr = ok[ok["frontier"]].sort_values(latency)
    if len(fr):
        ax.step(fr[latency], fr["quality"], where="post", color="tab:red", lw=1.2,
                label="Pareto frontier (quality, latency, memory)")
        ax.scatter(fr[latency], fr["quality"], s=90, facecolors="none", edgecolors="tab:red")
    missing = [m for k, m in zip(t.index, _short(t)) if k not in ok.index]
    if ok.empty:
        ax.text(0.5, 0.5, f"no model has both '{qcol}' and {lat_h}", ha="center",
                transform=ax.transAxes)
    ylabel = f"{qcol[4:]}, {REF_LABEL}" if qcol.startswith("ref_") else f"live {qcol[5:]} (%)"
    ax.set(xlabel=f"{lat_h} (lower is better)", ylabel=f"{ylabel} (higher is better)",
           title="Quality vs latency")
    if missing:
        fig.text(0.01, 0.01, "not shown (no score or no latency): " + ", ".join(missing), fontsize=7)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    figs["latency_vs_quality.png"] = fig

    fig = Figure(figsize=(7, 4.5), dpi=110)
    ax = fig.add_subplot()
    mem = t[t["n_params"].notna() & t["rss_peak_mib"].notna()]
    for backend, color in BACKEND_COLORS.items():
        sel = mem[mem["backend"] == backend]
        if len(sel):
            ax.scatter(sel["n_params"] / 1e6, sel["rss_peak_mib"], color=color, label=f"{backend}: peak RSS MiB")
            ax.scatter(sel["n_params"] / 1e6, sel["weights_mib"], color=color, marker="x",
                       label=f"{backend}: weights MiB")
    _label(ax, mem["n_params"] / 1e6, mem["rss_peak_mib"], _short(mem))
    if len(mem) and (mem["n_params"] > 0).all():
        ax.set_xscale("log")
    ax.set(xlabel="parameters (millions)", ylabel="MiB", title="Memory vs parameters")
    ax.legend(fontsize=8)
    fig.tight_layout()
    figs["memory_vs_params.png"] = fig

    fig = Figure(figsize=(7, 0.6 + 0.45 * max(len(t), 1)), dpi=110)
    ax = fig.add_subplot()
    tps = P50["decode_tps"]
    tp = t[t[tps].notna()].sort_values(tps)
    bars = ax.barh([f"{m} (bs {_num(b, '{:.0f}')})" for m, b in zip(_short(tp), tp["batch_size"])],
                   tp[tps], color=[BACKEND_COLORS.get(b, "tab:gray") for b in tp["backend"]])
    for bar, kind in zip(bars, tp["weights"]):
        bar.set_hatch("//" if kind == "random" else "")
    ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.margins(x=0.12)
    ax.set(xlabel="decode tokens/s (p50, batch 1; hatched = random weights; blue = transformers, "
                  "orange = llama.cpp)", title="Decode throughput per deployment")
    fig.tight_layout()
    figs["tokps_per_model.png"] = fig
    return figs


def write_report(result: ReportResult, reports_dir: str | os.PathLike,
                 summary_path: str | os.PathLike) -> list[Path]:
    """reports/report.md, reports/plots/*.png|*.csv and the summary json, each written atomically."""
    out = Path(reports_dir)
    files: dict[Path, bytes] = {}
    for name, fig in result.figures.items():
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        files[out / "plots" / name] = buf.getvalue()
    for name, df in result.plot_data.items():
        files[out / "plots" / name] = df.to_csv(index=False, float_format="%.6g",
                                                lineterminator="\n").encode()
    files[out / "report.md"] = result.markdown.encode()
    files[Path(summary_path)] = (result.summary.model_dump_json(indent=2) + "\n").encode()
    for path, data in files.items():
        write_bytes_atomic(path, data)
    return list(files)
