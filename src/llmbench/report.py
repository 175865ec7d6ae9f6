"""The aggregate report: one table per roster model joining measured latency/memory (profile),
live accuracy (evaluate), published reference scores (by ModelInfo.reference_id) and cost;
then the Pareto frontier, a budget recommendation, PNG plots, CSVs for `dvc plots` and a flat
metrics/summary.json. build_report computes (no I/O); write_report writes the files."""
from __future__ import annotations

import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from llmbench.errors import UserError
from llmbench.io import write_bytes_atomic
from llmbench.reference import BENCHMARKS, V1_PROTOCOL
from llmbench.tradeoff import (Recommendation, comparable, fingerprint_id, pareto_front,
                               recommend, usd_per_mtok)

MISSING = "—"
REF_LABEL = "reference (published)"
LATENCIES = ("ttft_p50_ms", "tpot_p50_ms", "e2e_p50_ms")
SHAPE_KEYS = ("dtype", "attention", "batch_size", "input_len", "output_len")
# (csv name, columns) for dvc plots; every file is flat, one row per model x measured shape.
PLOT_CSVS = {
    "latency_vs_batch.csv": ("model", "weights", *SHAPE_KEYS, *LATENCIES, "fingerprint"),
    "tokps_vs_input.csv": ("model", "weights", *SHAPE_KEYS, "decode_tps", "prefill_tps",
                           "fingerprint"),
    "tradeoff.csv": ("model", "weights", *SHAPE_KEYS, "ttft_p50_ms", "tpot_p50_ms",
                     "rss_peak_mib", "usd_per_mtok", "quality", "frontier", "headline",
                     "fingerprint"),
    "tokps_per_model.csv": ("model", "weights", "batch_size", "decode_tps"),
}
DVC_PLOTS_YAML = """\
plots:  # from llmbench.report.DVC_PLOTS_YAML; hover a point in `dvc plots show` for its model
  - Quality vs TPOT p50 ms: {template: scatter, x: tpot_p50_ms, y: {reports/plots/tradeoff.csv: quality}}
  - TPOT p50 ms vs batch size: {template: scatter, x: batch_size, y: {reports/plots/latency_vs_batch.csv: tpot_p50_ms}}
  - Decode tok/s vs input length: {template: scatter, x: input_len, y: {reports/plots/tokps_vs_input.csv: decode_tps}}
  - Decode tok/s per model: {template: bar_horizontal_sorted, x: decode_tps, y: {reports/plots/tokps_per_model.csv: model}}
  - reports/plots/latency_vs_quality.png
  - reports/plots/memory_vs_params.png
  - reports/plots/tokps_per_model.png
"""


@dataclass
class ReportResult:
    table: pd.DataFrame  # one row per roster model (index: model name)
    markdown: str
    figures: dict[str, Figure]  # png file name -> figure (for MLflow log_figure)
    plot_data: dict[str, pd.DataFrame]  # csv file name -> flat frame (dvc plots)
    summary: dict  # metrics/summary.json
    quality: str  # the table column that ranks quality
    frontier: list[str] = field(default_factory=list)
    recommendation: Recommendation | None = None
    notes: list[str] = field(default_factory=list)


def _section(cfg: Any, name: str) -> dict:
    sec = cfg.get(name) if isinstance(cfg, Mapping) else getattr(cfg, name, None)
    return {} if sec is None else sec.model_dump() if hasattr(sec, "model_dump") else dict(sec)


def _p50(stats: Any, scale: float = 1.0) -> float:
    v = stats.get("p50") if isinstance(stats, Mapping) else stats
    return float(v) * scale if isinstance(v, (int, float)) else np.nan


def _num(x: Any, fmt: str = "{:.1f}") -> str:
    return MISSING if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


def _txt(col: pd.Series) -> pd.Series:
    return col.astype(object).where(col.notna(), MISSING)


def _live(ev: Mapping | None, weights: str) -> tuple[str | None, dict[str, tuple[float, str]]]:
    """(why skipped | None, task -> (value in %, cell text)). Random weights are never scored."""
    if not ev:
        return None, {}
    if weights == "random" or ev.get("weights") == "random":
        return "skipped (random weights)", {}
    if ev.get("status") != "ok":
        return f"skipped ({ev.get('reason') or 'no reason given'})", {}
    out = {}
    for task, r in (ev.get("tasks") or {}).items():
        metric = "acc_norm" if r.get("acc_norm") is not None else "acc"
        val, se = r.get(metric), r.get(f"{metric}_stderr")
        if val is None:
            out[task] = (np.nan, "no score")
            continue
        lim = f", limit {r['limit']}" if r.get("limit") else ""
        out[task] = (100 * val, f"{100 * val:.1f}{'' if se is None else f' ±{100 * se:.1f}'} "
                                f"({r.get('num_fewshot', '?')}-shot {metric}, n={r.get('n', '?')}"
                                f"{lim}, {r.get('suite', '?')})")
    return None, out


def _reference_row(reference: pd.DataFrame, ref_id: str | None) -> pd.Series | None:
    if not ref_id or reference is None or reference.empty:
        return None
    rows = reference[reference["model_id"].astype(str) == ref_id]
    if rows.empty:
        return None
    # several protocols for one model: prefer the v1 leaderboard, then the most scores
    order = rows.assign(_v1=rows["protocol"] != V1_PROTOCOL,
                        _n=-rows[list(BENCHMARKS)].notna().sum(axis=1))
    return rows.loc[order.sort_values(["_v1", "_n"], kind="stable").index[0]]


def _shapes(model: str, prof: Mapping, cost: float) -> list[dict]:
    head = prof.get("headline") or {}
    rows = []
    for r in prof.get("results") or []:
        if r.get("status") != "ok":
            continue
        row = {"model": model, "weights": prof.get("weights"), **{k: r.get(k) for k in SHAPE_KEYS},
               "ttft_p50_ms": _p50(r.get("ttft_s"), 1e3), "tpot_p50_ms": _p50(r.get("tpot_s"), 1e3),
               "e2e_p50_ms": _p50(r.get("e2e_s"), 1e3), "decode_tps": _p50(r.get("decode_tps")),
               "prefill_tps": _p50(r.get("prefill_tps")),
               "rss_peak_mib": (r.get("memory") or {}).get("rss_peak_mib", np.nan),
               "fingerprint": fingerprint_id(prof.get("fingerprint"))}
        row["usd_per_mtok"] = usd_per_mtok(cost, row["decode_tps"])
        row["headline"] = all(r.get(k) == head.get(k) for k in SHAPE_KEYS)
        rows.append(row)
    return rows


def _model_row(model: str, prof: Mapping | None, inf: Mapping | None, ev: Mapping | None,
               reference: pd.DataFrame, cost: float) -> dict:
    prof = prof or {}
    info, head = prof.get("info") or {}, prof.get("headline") or {}
    weights = prof.get("weights") or info.get("weights") or (ev or {}).get("weights") or "?"
    row: dict[str, Any] = {"model": model, "weights": weights, "params": info.get("params", np.nan),
                           "dtype": head.get("dtype"), "attention": head.get("attention"),
                           "batch_size": head.get("batch_size"), "input_len": head.get("input_len"),
                           "output_len": head.get("output_len"),
                           "load_s": prof.get("load_s", head.get("load_s", np.nan)),
                           "weights_mib": head.get("weights_mib", np.nan),
                           "rss_peak_mib": head.get("rss_peak_mib", np.nan),
                           "decode_tps": head.get("decode_tps_p50", np.nan),
                           "fingerprint": fingerprint_id(prof.get("fingerprint")),
                           "reference_id": info.get("reference_id"),
                           "infer_gen_tps": (inf or {}).get("gen_tps", np.nan)}
    for col in LATENCIES:
        v = head.get(col.replace("_ms", "_s"))
        row[col] = 1e3 * v if isinstance(v, (int, float)) else np.nan
    row = {k: np.nan if v is None and k not in ("reference_id", "fingerprint") else v
           for k, v in row.items()}
    row["usd_per_mtok"] = usd_per_mtok(cost, row["decode_tps"])
    ref = _reference_row(reference, row["reference_id"])
    for col in (*BENCHMARKS, "average", "average_n", "protocol", "protocol_detail", "source", "note"):
        row[f"ref_{col}"] = np.nan if ref is None else ref.get(col, np.nan)
    row["live_skipped"], scores = _live(ev, weights)
    for task, (val, text) in scores.items():
        row[f"live_{task}"], row[f"live_{task}_text"] = val, text
    return row


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
    cells = [[str(c) for c in df.columns]] + [[str(v).replace("|", "/") for v in r]
                                               for r in df.itertuples(index=False)]
    return "\n".join("| " + " | ".join(r) + " |" for r in
                     [cells[0], ["---"] * len(df.columns), *cells[1:]])


def build_report(roster: list[str], profile: Mapping[str, dict], infer: Mapping[str, dict],
                 evaluate: Mapping[str, dict], reference: pd.DataFrame | None, cfg: Any
                 ) -> ReportResult:
    """Join everything for the roster's models only (other files/rows are ignored)."""
    cost_cfg, budget, rep = (_section(cfg, s) for s in ("cost", "budget", "report"))
    usd_h = float(cost_cfg.get("usd_per_hour", 0.10))
    reference = reference if reference is not None else pd.DataFrame(columns=["model_id", "protocol"])
    rows = [_model_row(m, profile.get(m), infer.get(m), evaluate.get(m), reference, usd_h)
            for m in roster]
    table = pd.DataFrame(rows).set_index("model", drop=False)
    table.index.name = None
    qcol = _quality_column(str(rep.get("quality", "reference:average")), table)
    latency = str(rep.get("latency", "tpot_p50_ms"))
    if latency not in LATENCIES:
        raise UserError(f"params.yaml: report.latency: '{latency}' not in {', '.join(LATENCIES)}")
    # every live task column gets a cell per model: the score, why it was skipped, or "—"
    tasks = {c[5:] for c in _live_cols(table)} | ({qcol[5:]} if qcol[:5] == "live_" else set())
    for task in sorted(tasks) or (["lm_eval"] if table["live_skipped"].notna().any() else []):
        col = f"live_{task}"
        table[col] = pd.to_numeric(table[col], errors="coerce") if col in table else np.nan
        text = table[f"{col}_text"] if f"{col}_text" in table else pd.Series(np.nan, table.index)
        table[f"{col}_text"] = _txt(text.astype(object).fillna(table["live_skipped"]))
    table["quality"] = pd.to_numeric(table[qcol], errors="coerce") if qcol in table else np.nan
    notes: list[str] = []
    kept, pre_excluded, fp_note = comparable(dict(zip(table.index, table["fingerprint"])),
                                             bool(rep.get("mix_fingerprints", False)))
    notes += [fp_note] if fp_note else []
    want = rep.get("reference_protocol", V1_PROTOCOL)
    if qcol.startswith("ref_") and want:
        other = table["quality"].notna() & (table["ref_protocol"] != want)
        for m in table.index[other]:
            pre_excluded.setdefault(m, f"reference score under protocol "
                                       f"'{table.at[m, 'ref_protocol']}', not '{want}'")
    for m in table.index[table[latency].isna() | table["rss_peak_mib"].isna()]:
        pre_excluded.setdefault(m, f"not profiled: no measured {latency} / peak RSS")
    table["compared"] = [m in kept and m not in pre_excluded for m in table.index]
    judged = table.loc[table["compared"]]
    front = pareto_front(judged, "quality", latency, "rss_peak_mib")
    table["frontier"] = table.index.isin(front[front].index)
    rec = recommend(table, "quality", budget, pre_excluded, label=qcol)
    if table["quality"].notna().sum() == 0:
        notes.append(f"No model has a '{qcol}' score, so there is no frontier." + (
            " Random weights are never scored; set report.quality: reference:average to rank by "
            "the real models' published scores." if qcol.startswith("live_") else ""))
    shapes = pd.DataFrame([s for m in roster for s in _shapes(m, profile.get(m) or {}, usd_h)],
                          columns=[*PLOT_CSVS["tradeoff.csv"], "e2e_p50_ms", "decode_tps",
                                   "prefill_tps"])
    shapes["quality"] = shapes["model"].map(table["quality"])
    shapes["frontier"] = shapes["model"].map(table["frontier"]) & shapes["headline"].astype(bool)
    plot_data = {name: shapes.loc[:, list(cols)] for name, cols in PLOT_CSVS.items()
                 if name != "tokps_per_model.csv"}
    plot_data["tokps_per_model.csv"] = table.loc[table["decode_tps"].notna(),
                                                 list(PLOT_CSVS["tokps_per_model.csv"])]
    figures = _figures(table, qcol, latency)
    md = _markdown(table, qcol, latency, rec, budget, notes, usd_h, list(figures))
    return ReportResult(table, md, figures, plot_data, _summary(table, rec), qcol,
                        list(table.index[table["frontier"]]), rec, notes)


def _summary(table: pd.DataFrame, rec: Recommendation) -> dict:
    keys = ("params", "load_s", *LATENCIES, "decode_tps", "rss_peak_mib", "usd_per_mtok",
            "quality", "ref_average", *_live_cols(table))
    models = {m: {**{k: float(r[k]) for k in keys if pd.notna(r[k])},
                  "frontier": int(bool(r["frontier"])), "recommended": int(m == rec.model)}
              for m, r in table.iterrows()}
    return {"models": models, "frontier_size": int(table["frontier"].sum()),
            "n_models": int(len(table)), "n_compared": int(table["compared"].sum())}


def _markdown(table: pd.DataFrame, qcol: str, latency: str, rec: Recommendation, budget: dict,
              notes: list[str], usd_h: float, pngs: list[str]) -> str:
    t = table
    perf = pd.DataFrame({
        "model": t["model"], "weights": t["weights"],
        "params": [_num(p / 1e6, "{:.1f}M") for p in t["params"]], "dtype": _txt(t["dtype"]),
        "batch": [_num(b, "{:.0f}") for b in t["batch_size"]], "load s": t["load_s"].map(_num),
        "TTFT p50 ms": t["ttft_p50_ms"].map(_num), "TPOT p50 ms": t["tpot_p50_ms"].map(_num),
        "decode tok/s": t["decode_tps"].map(_num), "e2e p50 ms": t["e2e_p50_ms"].map(_num),
        "peak RSS MiB": t["rss_peak_mib"].map(lambda x: _num(x, "{:.0f}")),
        "USD / 1M out tok": t["usd_per_mtok"].map(lambda x: _num(x, "{:.3g}")),
        "env": _txt(t["fingerprint"])})
    qual = pd.DataFrame({"model": t["model"], "weights": t["weights"]})
    for b in BENCHMARKS:
        qual[b] = t[f"ref_{b}"].map(lambda x: _num(x, "{:.2f}"))
    qual["average"] = [_num(a, "{:.2f}") + ("" if pd.isna(n) or n == len(BENCHMARKS) else
                                            f" ({n:.0f}/{len(BENCHMARKS)})")
                       for a, n in zip(t["ref_average"], t["ref_average_n"])]
    qual["reference protocol"] = _txt(t["ref_protocol"])
    for c in [c for c in t.columns if c.startswith("live_") and c.endswith("_text")]:
        qual[f"live {c[5:-5]}"] = _txt(t[c])
    lines = ["# llmbench report", "",
             f"Quality column: `{qcol}`; latency: `{latency}`; memory: peak RSS; cost at "
             f"{usd_h:g} USD/hour as usd_per_hour / (decode tok/s * 3600) * 1e6 at the batch size "
             "shown.", ""]
    if (t["weights"] == "random").any():
        lines += ["**Random weights:** for models marked `random`, latency and memory are measured "
                  "on random weights of the real model's shape; they have no accuracy. Quality "
                  f"columns marked *{REF_LABEL}* are published numbers for the real model, not "
                  "measured here.", ""]
    lines += [f"> {n}" for n in notes] + ([""] if notes else [])
    lines += ["## Measured on this machine", "", _md_table(perf), "",
              "## Quality", "", f"Benchmark columns are *{REF_LABEL}* scores (percent) for the "
              "model's reference_id; `live` columns are this run's lm-eval results.", "",
              _md_table(qual), ""]
    refs = t[t["ref_protocol"].notna()].drop_duplicates("reference_id")
    lines += [f"- `{r['ref_protocol']}` ({r['reference_id']}): {r['ref_protocol_detail']}; "
              f"source: {r['ref_source']}" + (f"; **note:** {r['ref_note']}"
                                              if isinstance(r["ref_note"], str) else "")
              for _, r in refs.iterrows()]
    lines += ["", "## Pareto frontier", ""]
    fr = t[t["frontier"]]
    lines += ([f"- **{m}**: {qcol} {_num(r['quality'], '{:.2f}')}, {latency} "
               f"{_num(r[latency])}, peak RSS {_num(r['rss_peak_mib'], '{:.0f}')} MiB"
               for m, r in fr.iterrows()] or ["No model has quality, latency and memory together."])
    limits = ", ".join(f"{k}={v:g}" for k, v in (budget or {}).items() if v is not None)
    lines += ["", "## Recommendation", "", f"Budget: {limits or 'none set'}", "",
              rec.text, ""] + [f"- {m}: {why}" for m, why in rec.excluded.items()]
    lines += ["", "## Plots", ""] + [f"![{p[:-4]}](plots/{p})" for p in pngs]
    return "\n".join(lines) + "\n"


def _label(ax, xs, ys, names) -> None:
    for x, y, n in zip(xs, ys, names):
        ax.annotate(n, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)


def _figures(t: pd.DataFrame, qcol: str, latency: str) -> dict[str, Figure]:
    figs = {}
    fig = Figure(figsize=(7, 4.5), dpi=110)
    ax = fig.add_subplot()
    ok = t[t["quality"].notna() & t[latency].notna()]
    for kind, marker in (("pretrained", "o"), ("random", "s")):
        sel = ok[ok["weights"] == kind]
        if len(sel):
            ax.scatter(sel[latency], sel["quality"], marker=marker, s=40,
                       facecolors="none" if kind == "random" else "tab:blue", edgecolors="tab:blue",
                       label=f"{kind} weights" + (" (latency on real shape)" if kind == "random"
                                                  else ""))
    _label(ax, ok[latency], ok["quality"], ok.index)
    ax.margins(0.15)  # room for the model labels
    fr = ok[ok["frontier"]].sort_values(latency)
    if len(fr):
        ax.step(fr[latency], fr["quality"], where="post", color="tab:red", lw=1.2,
                label="Pareto frontier (quality, latency, memory)")
        ax.scatter(fr[latency], fr["quality"], s=90, facecolors="none", edgecolors="tab:red")
    missing = [m for m in t.index if m not in ok.index]
    if ok.empty:
        ax.text(0.5, 0.5, f"no model has both '{qcol}' and {latency}", ha="center",
                transform=ax.transAxes)
    ylabel = f"{qcol[4:]}, {REF_LABEL}" if qcol.startswith("ref_") else f"live {qcol[5:]} (%)"
    ax.set(xlabel=f"{latency} (lower is better)", ylabel=f"{ylabel} (higher is better)",
           title="Quality vs latency")
    if missing:
        fig.text(0.01, 0.01, "not shown (no score or no latency): " + ", ".join(missing), fontsize=7)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    figs["latency_vs_quality.png"] = fig

    fig = Figure(figsize=(7, 4.5), dpi=110)
    ax = fig.add_subplot()
    mem = t[t["params"].notna() & t["rss_peak_mib"].notna()]
    ax.scatter(mem["params"] / 1e6, mem["rss_peak_mib"], label="peak RSS MiB")
    ax.scatter(mem["params"] / 1e6, mem["weights_mib"], marker="x", label="weights MiB")
    _label(ax, mem["params"] / 1e6, mem["rss_peak_mib"], mem.index)
    if len(mem) and (mem["params"] > 0).all():
        ax.set_xscale("log")
    ax.set(xlabel="parameters (millions)", ylabel="MiB", title="Memory vs parameters")
    ax.legend(fontsize=8)
    fig.tight_layout()
    figs["memory_vs_params.png"] = fig

    fig = Figure(figsize=(7, 0.6 + 0.45 * max(len(t), 1)), dpi=110)
    ax = fig.add_subplot()
    tp = t[t["decode_tps"].notna()].sort_values("decode_tps")
    bars = ax.barh([f"{m} (bs {_num(b, '{:.0f}')})" for m, b in zip(tp.index, tp["batch_size"])],
                   tp["decode_tps"], color="tab:green")
    for bar, kind in zip(bars, tp["weights"]):
        bar.set_hatch("//" if kind == "random" else "")
    ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.margins(x=0.12)
    ax.set(xlabel="decode tokens/s (p50, headline shape; hatched = random weights)",
           title="Decode throughput per model")
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
    files[Path(summary_path)] = (json.dumps(result.summary, indent=2, sort_keys=True) + "\n").encode()
    for path, data in files.items():
        write_bytes_atomic(path, data)
    return list(files)
