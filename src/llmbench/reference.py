"""Reference dataset: published scores (and optional llm-perf numbers) in ONE wide schema.

Sources (params.yaml `dataset.source`):
  bundled  src/llmbench/data/reference_scores.csv (offline default; DESIGN.md §5)
  url      a CSV or parquet over http(s), checked against a pinned sha256 before anything is written
  hf       a file of a Hugging Face *dataset* repo at a pinned revision (hf_hub_download)
Output: <out_dir>/reference.csv and reference.json {"sha256", "source", "rows", "columns"}.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import urllib.request
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from llmbench.config import V1_PROTOCOL, Dataset
from llmbench.errors import UserError
from llmbench.io import write_bytes_atomic

BENCHMARKS = ("arc", "hellaswag", "mmlu", "truthfulqa", "winogrande", "gsm8k")
CORE_COLUMNS = ("model_id", "params", *BENCHMARKS, "average", "average_n",
                "protocol", "protocol_detail", "source", "note")
PERF_COLUMNS = ("prefill_latency_p50_s", "per_token_latency_p50_s", "decode_tps", "memory_mb",
                "energy_tokens_per_kwh", "backend", "dtype")
EXTRA_PREFIX = "extra_"  # unknown input columns are kept under this prefix, never dropped
CSV_NAME, META_NAME = "reference.csv", "reference.json"

# Input column names (case-insensitive) per output column, first match wins. Covers our own
# schema, Open LLM Leaderboard v1 exports and llm-perf-leaderboard perf-df / processed CSVs.
ALIASES: dict[str, tuple[str, ...]] = {
    "model_id": ("model_id", "config.backend.model", "model 🤗", "model", "fullname",
                 "model_name_or_path"),
    "params": ("params", "#params (b)", "params (b)", "num_params"),
    "arc": ("arc", "arc_challenge"), "hellaswag": ("hellaswag",), "mmlu": ("mmlu",),
    "truthfulqa": ("truthfulqa", "truthfulqa_mc2"), "winogrande": ("winogrande",),
    "gsm8k": ("gsm8k",),
    "protocol": ("protocol",), "protocol_detail": ("protocol_detail",),
    "source": ("source",), "note": ("note",),
    "prefill_latency_p50_s": ("prefill_latency_p50_s", "report.prefill.latency.p50", "prefill (s)"),
    "per_token_latency_p50_s": ("per_token_latency_p50_s", "report.per_token.latency.p50",
                                "per token (s)"),
    "decode_tps": ("decode_tps", "report.decode.throughput.value", "decode (tokens/s)"),
    "memory_mb": ("memory_mb", "report.decode.memory.max_allocated", "memory (mb)"),
    "energy_tokens_per_kwh": ("energy_tokens_per_kwh", "report.decode.efficiency.value",
                              "energy (tokens/kwh)"),
    "backend": ("backend", "config.backend.name", "backend 🏭"),
    "dtype": ("dtype", "config.backend.torch_dtype", "precision 📥"),
}
_BILLIONS = {"#params (b)", "params (b)"}  # these hold params in billions
_LONG_KEYS = {"model_id", "benchmark", "value"}  # long format: one row per model x benchmark


# ---------------------------------------------------------------- normalisation (pure)
def _protocol_detail(group: pd.DataFrame) -> str:
    harness = "/".join(dict.fromkeys(str(h) for h in group["harness"].dropna()))
    parts = []
    for _, r in group.iterrows():
        shots = "shots n/s" if pd.isna(r["shots"]) else f"{int(r['shots'])}-shot"
        metric = "" if pd.isna(r["metric"]) else f" {r['metric']}"
        parts.append(f"{r['benchmark']} {shots}{metric}")
    return (f"{harness}: " if harness else "") + "; ".join(parts)


def from_long(long: pd.DataFrame) -> pd.DataFrame:
    """Long table (model_id, benchmark, value, shots, metric, harness, protocol, source, note)
    -> one wide row per (model_id, protocol). Benchmarks outside BENCHMARKS become extra_<name>."""
    long = long.copy()
    for col in ("params", "shots", "metric", "harness", "protocol", "source", "note"):
        if col not in long:
            long[col] = np.nan
    long["protocol"] = long["protocol"].fillna("unspecified")
    rows = []
    for (model, protocol), g in long.groupby(["model_id", "protocol"], sort=False, dropna=False):
        row: dict[str, Any] = {"model_id": model, "protocol": protocol,
                               "params": g["params"].dropna().iloc[0] if g["params"].notna().any()
                               else np.nan,
                               "protocol_detail": _protocol_detail(g)}
        for col in ("source", "note"):
            vals = list(dict.fromkeys(str(v) for v in g[col].dropna()))
            row[col] = "; ".join(vals) if vals else np.nan
        for bench, val in zip(g["benchmark"], g["value"]):
            key = str(bench).strip().lower()
            row[key if key in BENCHMARKS else EXTRA_PREFIX + key] = float(val)
        rows.append(row)
    return pd.DataFrame(rows)


def normalise(raw: pd.DataFrame, protocol: str | None = None, origin: str = "input") -> pd.DataFrame:
    """Any supported input table -> the wide schema (CORE + PERF columns, then extra_*)."""
    if _LONG_KEYS <= set(raw.columns):
        wide = from_long(raw)
    else:
        lower = {str(c).strip().lower(): c for c in raw.columns}
        taken: dict[str, Any] = {}
        for out, names in ALIASES.items():
            hit = next((n for n in names if n in lower and lower[n] not in taken.values()), None)
            if hit is not None:
                taken[out] = lower[hit]
        if "model_id" not in taken:
            raise UserError(f"{origin}: no model id column (expected one of: "
                            f"{', '.join(ALIASES['model_id'])})")
        wide = pd.DataFrame({out: raw[col] for out, col in taken.items()})
        if str(taken.get("params", "")).strip().lower() in _BILLIONS:
            wide["params"] = pd.to_numeric(wide["params"], errors="coerce") * 1e9
        for col in raw.columns:
            if col not in taken.values():
                wide[f"{EXTRA_PREFIX}{col}"] = raw[col]
        if "protocol" not in wide:
            perf = any(c in wide for c in PERF_COLUMNS[:5])
            wide["protocol"] = protocol or ("llm-perf-leaderboard" if perf else "unspecified")
    wide["protocol"] = wide["protocol"].fillna(protocol or "unspecified").astype(str)
    for col in (*CORE_COLUMNS, *PERF_COLUMNS):
        if col not in wide:
            wide[col] = np.nan
    for col in ("params", *BENCHMARKS, *PERF_COLUMNS[:5]):
        wide[col] = pd.to_numeric(wide[col], errors="coerce")
    # The v1 average is only meaningful under the v1 protocol; average_n says how many it covers.
    v1 = wide["protocol"] == V1_PROTOCOL
    scores = wide.loc[:, list(BENCHMARKS)]
    wide["average"] = scores.mean(axis=1).where(v1).round(4)
    wide["average_n"] = scores.notna().sum(axis=1).where(v1 & scores.notna().any(axis=1))
    wide["model_id"] = wide["model_id"].astype(str).str.strip()
    extras = sorted(c for c in wide.columns if c not in CORE_COLUMNS + PERF_COLUMNS)
    return wide[[*CORE_COLUMNS, *PERF_COLUMNS, *extras]].reset_index(drop=True)


def parse_table(blob: bytes, origin: str) -> pd.DataFrame:
    """CSV or parquet bytes (parquet recognised by its PAR1 magic) -> DataFrame."""
    try:
        if blob[:4] == b"PAR1":
            return pd.read_parquet(io.BytesIO(blob))
        return pd.read_csv(io.BytesIO(blob))
    except Exception as exc:  # pandas/pyarrow raise many types; the user needs one line
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{origin}: not a readable CSV or parquet file ({first})") from None


# ---------------------------------------------------------------- sources (I/O)
def sha256_bytes(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def _check_sha(blob: bytes, expected: str | None, where: str) -> None:
    got = sha256_bytes(blob)
    if expected is not None and got != expected:
        raise UserError(f"dataset: sha256 mismatch for {where}: expected {expected}, got {got}; "
                        "nothing written")


def _download(url: str, timeout_s: float) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 (config checks http(s))
            return resp.read()
    except OSError as exc:  # URLError, HTTPError, timeouts and refused connections are OSErrors
        raise UserError(f"dataset.url: cannot download {url}: {exc}") from None


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _hf_bytes(repo: str, rev: str, name: str) -> tuple[bytes, dict]:
    from huggingface_hub import hf_hub_download  # heavy import, only for this source

    where = f"hf://datasets/{repo}@{rev}/{name}"
    try:
        # local_files_only when offline: hf_hub_download would otherwise retry for ~50 s
        path = hf_hub_download(repo_id=repo, filename=name, repo_type="dataset", revision=rev,
                               local_files_only=_offline())
    except Exception as exc:  # hub errors are many classes; the user needs the one line
        if _offline():
            raise UserError(f"dataset.source=hf: {where} is not in the local Hugging Face cache "
                            "and the network is off (HF_HUB_OFFLINE=1); set network: true or "
                            "use dataset.source: bundled") from None
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"dataset.source=hf: cannot fetch {where}: {first}") from None
    return Path(path).read_bytes(), {"kind": "hf", "repo": repo, "revision": rev,
                                     "filename": name, "url": where}


def _source_bytes(ds: Dataset) -> tuple[bytes, dict]:
    """The input table's bytes, checked against the pinned sha256 (config validated the keys)."""
    if ds.source == "url":
        blob = _download(ds.url, ds.timeout_s)
        _check_sha(blob, ds.sha256, ds.url)
        return blob, {"kind": "url", "url": ds.url}
    if ds.source == "hf":
        blob, meta = _hf_bytes(ds.hf_repo, ds.hf_revision, ds.hf_filename)
        _check_sha(blob, ds.sha256, meta["url"])
        return blob, meta
    blob = resources.files("llmbench").joinpath("data/reference_scores.csv").read_bytes()
    return blob, {"kind": "bundled", "file": "llmbench/data/reference_scores.csv"}


def fetch(dataset: Dataset, out_dir: str | os.PathLike) -> dict:
    """Fetch, verify, normalise and write the reference table; returns the written metadata.
    Everything is checked before the first byte is written; a failure leaves out_dir untouched."""
    blob, meta = _source_bytes(dataset)
    meta["input_sha256"] = sha256_bytes(blob)
    origin = meta.get("url") or meta.get("file") or meta["kind"]
    table = normalise(parse_table(blob, origin), dataset.protocol, origin)
    if table.empty:
        raise UserError(f"{origin}: the table has no rows; nothing written")
    csv = table.to_csv(index=False, lineterminator="\n").encode()
    info = {"sha256": sha256_bytes(csv), "source": meta, "rows": int(len(table)),
            "columns": list(table.columns)}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out / CSV_NAME, csv)
    write_bytes_atomic(out / META_NAME, (json.dumps(info, indent=2) + "\n").encode())
    return info


def load_reference(out_dir: str | os.PathLike) -> pd.DataFrame:
    """The fetched table, after checking it still matches the sha256 recorded next to it."""
    out = Path(out_dir)
    try:
        blob = (out / CSV_NAME).read_bytes()
        info = json.loads((out / META_NAME).read_text())
    except FileNotFoundError as exc:
        raise UserError(f"{exc.filename}: not found; run the fetch_dataset stage first") from None
    if sha256_bytes(blob) != info.get("sha256"):
        raise UserError(f"{out / CSV_NAME}: sha256 differs from {out / META_NAME}; "
                        "the file was edited by hand; rerun fetch_dataset")
    return pd.read_csv(io.BytesIO(blob))
