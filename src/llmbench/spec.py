"""The one table of measured quantities (pure python: no torch, no pandas).

Everything that names a measured number takes the name from here: the profile and infer
results, the report's columns, the MLflow metric names, the gate and the README's vocabulary
table. Files keep the SI unit in `unit`; only what a person reads (report, README, plots)
is converted, by `scale`, into `display_unit`.
"""
from __future__ import annotations

from dataclasses import dataclass

# statistics over a metric's raw samples (metrics.describe_samples); p50 is the headline
STATS = ("p50", "p90", "p95", "p99", "mean", "std", "cv")


@dataclass(frozen=True)
class Metric:
    name: str  # the file/MLflow name, SI unit suffix included (ttft_s, rss_peak_mib)
    unit: str  # unit of the stored number
    higher_is_better: bool
    meaning: str  # one line, the definition used everywhere
    display_unit: str  # unit a person reads in the report
    scale: float = 1.0  # stored value * scale = displayed value
    label: str = ""  # short column label in the report (TTFT, decode, peak RSS)

    def field(self, stat: str | None = None) -> str:
        """The name a statistic of this metric has in files and MLflow: ttft_s_p50."""
        return self.name if stat is None else f"{self.name}_{stat}"

    def column(self, stat: str | None = None) -> str:
        """The column name a person reads in CSVs for `dvc plots`: ttft_p50_ms, decode_tps_p50."""
        suffix = f"_{_slug(self.unit)}"
        if self.scale == 1.0 or not self.name.endswith(suffix):
            return self.field(stat)
        stem = self.name[: -len(suffix)]
        return "_".join(x for x in (stem, stat, _slug(self.display_unit)) if x)

    def header(self, stat: str | None = None) -> str:
        """Markdown table header: 'TTFT p50 ms'."""
        return " ".join(x for x in (self.label or self.name, stat, self.display_unit) if x)

    def shown(self, value: float | None) -> float | None:
        return None if value is None else value * self.scale


def _slug(unit: str) -> str:
    return {"s": "s", "ms": "ms", "MiB": "mib", "tok/s": "tps", "USD": "usd", "GB/s": "gbps"}.get(
        unit, unit.lower().replace("/", "p"))


_TABLE = (
    Metric("load_s", "s", False, "model ready in memory: from the start of loading to a usable model",
           "s", 1.0, "load"),
    Metric("ttft_s", "s", False, "call -> first generated token (prefill + first decode step)",
           "ms", 1e3, "TTFT"),
    Metric("tpot_s", "s", False, "time per output token after the first: (e2e - ttft) / (n_out - 1)",
           "ms", 1e3, "TPOT"),
    Metric("itl_s", "s", False, "gaps between consecutive generated tokens after the first "
           "(a distribution, pooled over iterations)", "ms", 1e3, "ITL"),
    Metric("e2e_s", "s", False, "call -> last generated token", "ms", 1e3, "e2e"),
    Metric("decode_tps", "tok/s", True, "decode throughput: batch * (n_out - 1) / (e2e - ttft)",
           "tok/s", 1.0, "decode"),
    Metric("prefill_tps", "tok/s", True, "prefill throughput: batch * n_in / ttft", "tok/s", 1.0,
           "prefill"),
    Metric("gen_tps", "tok/s", True, "infer stage: generated tokens / wall time over all prompts "
           "(batched, EOS may end a request early)", "tok/s", 1.0, "infer gen"),
    Metric("rss_baseline_mib", "MiB", False, "resident memory of the process before the model "
           "is loaded", "MiB", 1.0, "baseline RSS"),
    Metric("rss_peak_mib", "MiB", False, "peak resident memory (anonymous + file-backed) while "
           "generating, sampled every ~10 ms by a separate process; the budget's memory",
           "MiB", 1.0, "peak RSS"),
    Metric("rss_anon_peak_mib", "MiB", False, "peak resident anonymous memory (heap: transformers' "
           "weights, KV cache, activations), sampled like rss_peak_mib", "MiB", 1.0, "anon RSS"),
    Metric("rss_file_peak_mib", "MiB", False, "peak resident file-backed memory (mmapped files: a "
           "GGUF's weights, shared libraries), sampled like rss_peak_mib", "MiB", 1.0, "file RSS"),
    Metric("weights_mib", "MiB", False, "bytes of the model's parameters and buffers (GGUF: its "
           "tensor bytes)", "MiB", 1.0, "weights"),
    Metric("kv_cache_mib", "MiB", False, "KV cache size from the config at batch x (n_in + n_out)",
           "MiB", 1.0, "KV cache"),
    Metric("cuda_max_allocated_mib", "MiB", False, "CUDA only: torch.cuda.max_memory_allocated",
           "MiB", 1.0, "CUDA allocated"),
    Metric("cuda_max_reserved_mib", "MiB", False, "CUDA only: torch.cuda.max_memory_reserved",
           "MiB", 1.0, "CUDA reserved"),
    Metric("copy_gbps", "GB/s", True, "memory bandwidth: best-of-5 large tensor copy, read + write "
           "(decimal GB)", "GB/s", 1.0, "copy bandwidth"),
    Metric("achieved_gbps", "GB/s", True, "decode bandwidth at batch 1: streamed weight bytes x "
           "decode_tps p50", "GB/s", 1.0, "achieved bandwidth"),
    Metric("usd_per_mtok", "USD", False, "cost of 1M output tokens: usd_per_hour / (decode_tps p50 "
           "* 3600) * 1e6, at the batch size measured", "USD", 1.0, "USD / 1M out tok"),
)
METRICS: dict[str, Metric] = {m.name: m for m in _TABLE}

# per-iteration distributions of one profiled shape (each a Stats object in the profile file)
SAMPLED = ("ttft_s", "tpot_s", "itl_s", "e2e_s", "decode_tps", "prefill_tps")
# memory of one profiled shape
MEMORY = ("rss_baseline_mib", "rss_peak_mib", "rss_anon_peak_mib", "rss_file_peak_mib", "weights_mib", "kv_cache_mib",
          "cuda_max_allocated_mib", "cuda_max_reserved_mib")
# what the regression gate compares (itl_s is pooled across calls, prefill_tps is 1/ttft)
GATED = ("ttft_s", "tpot_s", "e2e_s", "decode_tps")
# the latencies report.latency may rank by (p50)
LATENCIES = ("ttft_s", "tpot_s", "e2e_s")


def lookup(field: str) -> tuple[Metric, str | None] | None:
    """'ttft_s_p50' -> (METRICS['ttft_s'], 'p50'); 'rss_peak_mib' -> (..., None); else None."""
    if field in METRICS:
        return METRICS[field], None
    base, _, stat = field.rpartition("_")
    return (METRICS[base], stat) if base in METRICS and stat in STATS else None


def describe(name: str) -> str:
    """'<meaning> [unit]': the description a schema field carries."""
    m = METRICS[name]
    return f"{m.meaning} [{m.unit}]"


def vocabulary_table() -> str:
    """The README's vocabulary table (tests compare the README with this)."""
    rows = ["| name | unit | better | meaning | shown as |", "|---|---|---|---|---|"]
    for m in _TABLE:
        rows.append(f"| `{m.name}` | {m.unit} | {'higher' if m.higher_is_better else 'lower'} | "
                    f"{m.meaning} | {m.display_unit} |")
    return "\n".join(rows)


if __name__ == "__main__":  # `python -m llmbench.spec` prints the README table
    print(vocabulary_table())
