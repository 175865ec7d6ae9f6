"""The report's serving section: every endpoint's capacity at the SLO, its levels, a throughput
vs p95 latency figure (PNG) and the same points as a CSV for `dvc plots` (dvc.yaml `plots:`).

`section(params)` reads metrics/serve/<endpoint>.json for params.endpoints (other files ignored:
a removed endpoint's stale file must not reappear); report.build_report(serving=...) appends it
and, with budget.min_capacity_rps set, `capacity_exclusions` keeps deployments without enough
served capacity out of the recommendation."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import pandas as pd
from matplotlib.figure import Figure

from llmbench.config import Params
from llmbench.results import read_result
from llmbench.serving.endpoints import SLO, Endpoint
from llmbench.serving.results import TOKENS_NOTE, LevelResult, ServeResult
from llmbench.spec import METRICS

MISSING = "—"
PLOT_CSV = "serving.csv"
PLOT_PNG = "serving_latency_vs_throughput.png"
_LAT = ("ttft_s", "tpot_s", "itl_s", "e2e_s")


@dataclass
class ServingSection:
    results: dict[str, ServeResult]  # endpoint -> its result (endpoints that ran)
    markdown: str
    figures: dict[str, Figure] = field(default_factory=dict)
    plot_data: dict[str, pd.DataFrame] = field(default_factory=dict)
    # deployment key (managed endpoints) -> the highest capacity at the SLO among its endpoints
    capacity_rps: dict[str, float] = field(default_factory=dict)
    deployments: dict[str, str] = field(default_factory=dict)  # endpoint -> deployment key


def _deployment_key(ep: Endpoint) -> str | None:
    from llmbench.results import Deployment
    if ep.managed is None:
        return None
    return Deployment(model=ep.managed.model, backend="llamacpp", precision=ep.managed.precision).key


def usd_per_m_output(usd_per_hour: float, output_tok_s: float) -> float | None:
    return usd_per_hour / (output_tok_s * 3600) * 1e6 if output_tok_s > 0 else None


def _ms(pct, stat: str) -> str:
    return MISSING if pct is None else f"{getattr(pct, stat) * 1e3:.0f}"


def _f(x: float | None, fmt: str = "{:.2f}") -> str:
    return MISSING if x is None else fmt.format(x)


def _md(df: pd.DataFrame) -> str:
    return df.astype(str).to_markdown(index=False, disable_numparse=True)


def plot_rows(results: Mapping[str, ServeResult]) -> pd.DataFrame:
    """One row per measured level, display units, spec column names (ttft_p95_ms ...)."""
    rows = []
    for name, r in results.items():
        for lv in r.levels:
            if lv.status == "skipped":
                continue
            row = {"endpoint": name, "profile": lv.profile, "level": lv.level,
                   "series": f"{name} {lv.profile}", "rate_rps": lv.rate_rps,
                   "request_throughput_rps": lv.request_throughput_rps,
                   "output_tok_s": lv.output_tok_s, "goodput_rps": lv.goodput_rps,
                   "error_rate": lv.error_rate, "meets_slo": lv.meets_slo}
            for m in _LAT:
                pct = getattr(lv, m)
                for stat in ("p50", "p95"):
                    row[METRICS[m].column(stat)] = (None if pct is None else
                                                    METRICS[m].shown(getattr(pct, stat)))
            rows.append(row)
    cols = ["endpoint", "profile", "level", "series", "rate_rps", "request_throughput_rps",
            "output_tok_s", "goodput_rps", "error_rate", "meets_slo",
            *[METRICS[m].column(s) for m in _LAT for s in ("p50", "p95")]]
    return pd.DataFrame(rows, columns=cols)


def figure(points: pd.DataFrame, slo: SLO) -> Figure:
    fig = Figure(figsize=(9, 4), dpi=110)
    for i, (m, limit) in enumerate((("ttft_s", slo.ttft_ms), ("tpot_s", slo.tpot_ms))):
        ax = fig.add_subplot(1, 2, i + 1)
        col = METRICS[m].column("p95")
        for series, sel in points.groupby("series", sort=True):
            sel = sel.sort_values("level")  # in order of offered load
            ax.plot(sel["request_throughput_rps"], sel[col], marker="o", label=series)
            for x, y, lvl, prof in zip(sel["request_throughput_rps"], sel[col], sel["level"],
                                       sel["profile"]):
                tag = f"{lvl:g}" if prof == "concurrency" else f"{lvl:g}x"
                ax.annotate(tag, (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
        ax.axhline(limit, color="tab:red", linestyle="--", linewidth=1, label=f"SLO {limit:g} ms")
        ax.set(xlabel="requests/s (ok)", ylabel=METRICS[m].header("p95"),
               title=f"{METRICS[m].label} p95 vs throughput")
        ax.legend(fontsize=7)
    fig.suptitle("Served: p95 latency vs request throughput (labels: streams, or x single-stream rate)",
                 fontsize=9)
    fig.tight_layout()
    return fig


def _level_row(name: str, lv: LevelResult) -> dict:
    fails = ", ".join(f"{k} {v}" for k, v in sorted(lv.failures.items())) or "0"
    return {"endpoint": name, "profile": lv.profile,
            "level": f"{lv.level:g}" + ("x" if lv.profile == "rate" else ""),
            "rate req/s": _f(lv.rate_rps), "sent": lv.n_sent, "ok": lv.n_ok, "failed": fails,
            "TTFT p50/p95 ms": f"{_ms(lv.ttft_s, 'p50')}/{_ms(lv.ttft_s, 'p95')}",
            "TPOT p50/p95 ms": f"{_ms(lv.tpot_s, 'p50')}/{_ms(lv.tpot_s, 'p95')}",
            "ITL p95 ms": _ms(lv.itl_s, "p95"), "e2e p95 ms": _ms(lv.e2e_s, "p95"),
            "req/s": _f(lv.request_throughput_rps), "out tok/s": _f(lv.output_tok_s, "{:.1f}"),
            "goodput req/s": _f(lv.goodput_rps),
            "meets SLO": "yes" if lv.meets_slo else ("no" if lv.status == "ok" else
                                                      f"{lv.status}: {lv.reason}")}


def build(results: Mapping[str, ServeResult], endpoints: Mapping[str, Endpoint], *, slo: SLO,
          usd_per_hour: float, max_error_rate: float) -> ServingSection:
    deployments = {n: k for n, ep in endpoints.items() if (k := _deployment_key(ep))}
    lines = ["## Serving", "",
             f"Each endpoint under load, measured client-side (streamed). SLO per request: TTFT <= "
             f"{slo.ttft_ms:g} ms and TPOT <= {slo.tpot_ms:g} ms; goodput = requests/s meeting "
             "both (vLLM's definition). **Capacity at SLO** = the highest level whose p95 TTFT "
             f"and p95 TPOT meet the SLO with error rate <= {max_error_rate:g} (the best over the "
             "concurrency and rate profiles, in ok requests/s). USD per 1M output tokens at that "
             f"capacity uses cost.usd_per_hour ({usd_per_hour:g}), this machine's price, so "
             "managed endpoints only.", ""]
    head, levels, capacity = [], [], {}
    for name in endpoints:
        r = results.get(name)
        if r is None:
            head.append({"endpoint": name, "target": MISSING, "status": "not run",
                         "capacity at SLO": MISSING, "out tok/s": MISSING,
                         "USD/1M out tok": MISSING, "single-stream req/s": MISSING,
                         "served accuracy": MISSING})
            continue
        cap = r.capacity
        usd = (usd_per_m_output(usd_per_hour, cap.output_tok_s)
               if cap and endpoints[name].managed is not None else None)
        if cap and name in deployments:
            key = deployments[name]
            capacity[key] = max(capacity.get(key, 0.0), cap.request_throughput_rps)
        acc = r.accuracy
        head.append({
            "endpoint": name, "target": r.target, "status": r.status + (f": {r.reason}" if r.reason else ""),
            "capacity at SLO": (f"{cap.request_throughput_rps:.2f} req/s ({cap.profile} "
                                f"{cap.level:g}{'x' if cap.profile == 'rate' else ''})"
                                if cap else "none: no level meets the SLO"),
            "out tok/s": _f(cap.output_tok_s, "{:.1f}") if cap else MISSING,
            "USD/1M out tok": _f(usd, "{:.3g}"),
            "single-stream req/s": _f(r.single_stream_rps),
            "served accuracy": (", ".join(f"{t} {v:.3f}" for t, v in acc.tasks.items())
                                if acc.status == "ok" else f"not available ({acc.status})")})
        levels += [_level_row(name, lv) for lv in r.levels]
    lines += [_md(pd.DataFrame(head)), ""]
    if levels:
        lines += ["### Levels", "", _md(pd.DataFrame(levels)), ""]
    notes = sorted({f"{n}: {r.accuracy.reason}" for n, r in results.items()
                    if r.accuracy.status != "ok" and r.accuracy.reason})
    servers = [f"{n}: {r.server}" for n, r in results.items() if r.server]
    lines += [f"- Served accuracy: {x}" for x in notes]
    lines += [f"- Server: {x}" for x in servers]
    lines += [f"- Tokens: {TOKENS_NOTE}",
              "- llama-cpp-python's server reuses the KV cache of the longest prefix shared with "
              "the previous request, so back-to-back requests with a common prefix prefill less.",
              ""]
    section = ServingSection(dict(results), "", capacity_rps=capacity, deployments=deployments)
    points = plot_rows(results)
    if len(points):
        section.plot_data[PLOT_CSV] = points
        section.figures[PLOT_PNG] = figure(points, slo)
        lines += [f"![serving](plots/{PLOT_PNG})", ""]
    section.markdown = "\n".join(lines) + "\n"
    return section


def outputs(serving: ServingSection | None) -> tuple[str, dict[str, Figure], dict[str, pd.DataFrame]]:
    """(markdown, figures, plot CSVs) the report adds. With no endpoint the plot files still
    exist (an empty CSV, a placeholder PNG), so dvc.yaml's `plots:` entries always resolve."""
    if serving is not None and serving.plot_data:
        return serving.markdown, serving.figures, serving.plot_data
    fig = Figure(figsize=(7, 3), dpi=100)
    fig.text(0.5, 0.5, "no serve@ results (params.yaml endpoints)", ha="center", va="center", fontsize=16)
    note = ("## Serving\n\nNo serve@ results: params.yaml `endpoints` is empty or its stages did not "
            f"run.\n\n![serving](plots/{PLOT_PNG})\n")
    return (serving.markdown if serving else "") + note, {PLOT_PNG: fig}, {PLOT_CSV: plot_rows({})}


def section(params: Params) -> ServingSection | None:
    """The serving section for params.endpoints, or None when no endpoint is configured."""
    if not params.endpoints:
        return None
    results = {n: read_result(params.paths.serve_json(n), ServeResult)
               for n in params.endpoints if params.paths.serve_json(n).exists()}
    return build(results, params.endpoints, slo=params.slo, usd_per_hour=params.cost.usd_per_hour,
                 max_error_rate=params.serve.max_error_rate)


def capacity_exclusions(keys, serving: ServingSection | None,
                        min_rps: float | None) -> dict[str, str]:
    """Report rows (deployment keys, optionally with a shape suffix) that budget.min_capacity_rps
    keeps out of the recommendation, with the reason."""
    if min_rps is None:
        return {}
    caps = serving.capacity_rps if serving else {}
    served = set(serving.deployments.values()) if serving else set()
    out = {}
    for key in keys:
        dep = next((d for d in served if key == d or str(key).startswith(d + ".")), None)
        if dep is None:
            out[key] = (f"no managed endpoint serves it, so its served capacity is unknown "
                        f"(budget.min_capacity_rps={min_rps:g})")
        elif caps.get(dep, 0.0) < min_rps:
            have = f"{caps[dep]:.3g} req/s" if dep in caps else "none at the SLO"
            out[key] = f"served capacity {have} < budget.min_capacity_rps {min_rps:g}"
    return out
