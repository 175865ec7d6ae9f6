"""Noise-aware benchmark regression gate: head vs base on raw per-iteration samples.

For each (model, config, metric) it bootstraps a confidence interval (BCa, scipy.stats.bootstrap)
of the ratio of medians head/base and calls a regression only when the WHOLE interval lies beyond
the threshold, so run-to-run noise does not fail PRs. Profiles are ProfileResult files
(llmbench.results; params.yaml paths.profile). Threshold and confidence default to params.yaml
`gate:`; the flags override them.

    python -m llmbench.gate compare --base BASE/metrics/profile [--head metrics/profile]
    python -m llmbench.gate ab --base-dir ../base --head-dir . --cmd "dvc repro -f -s profile-llamacpp@m" \
        --rounds 5

Exit codes: 0 no regression, 1 regression, 2 bad input (one-line error).
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import ValidationError
from scipy import stats

from llmbench import spec
from llmbench.config import Gate, Paths, one_line, load_params
from llmbench.errors import UserError
from llmbench.results import ProfileResult, read_result

# metric -> True when a higher value is worse (times); decode throughput: lower is worse.
METRICS: dict[str, bool] = {m: not spec.METRICS[m].higher_is_better for m in spec.GATED}
SLOWER, FASTER, SAME = "slower", "faster", "no change (within noise)"
FEW = "too few samples"
DEFAULTS = Gate()  # the schema's defaults, for callers without a params file

Config = tuple[str, int, int, int]  # (deployment key, batch_size, input_len, output_len)
Samples = dict[str, dict[Config, dict[str, list[float]]]]  # model -> config -> metric -> values


@dataclass(frozen=True)
class Row:
    model: str
    config: Config
    metric: str
    n_base: int
    n_head: int
    base_p50: float
    head_p50: float
    ratio: float  # median(head) / median(base)
    ci_low: float
    ci_high: float
    verdict: str


# ---------------------------------------------------------------- loading


def load_profile(path: Path) -> dict[Config, dict[str, list[float]]]:
    """Raw samples of the status-ok rows of one profile file."""
    out: dict[Config, dict[str, list[float]]] = {}
    for i, row in enumerate(read_result(path, ProfileResult).results):
        if row.status != "ok":
            continue
        config = (row.deployment.key, row.batch_size, row.input_len, row.output_len)
        if config in out:
            raise UserError(f"{path}: results.{i}: duplicate config {format_config(config)}")
        out[config] = {m: list(getattr(row, m).values) for m in METRICS}
    return out


def load_files(files: list[Path]) -> Samples:
    """Samples by model: <model>.<backend>.json files (one per profile-<backend>@<model> stage)
    pool into their model; configs carry the deployment key, so they never collide."""
    out: Samples = {}
    for f in files:
        pool(out, {f.name.split(".")[0]: load_profile(f)})  # model names have no dots (config)
    return out


def load_dir(directory: Path) -> Samples:
    """Every profile file in a profile directory, by model."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"{directory}: profile directory not found")
    files = sorted(directory.glob("*.json"))
    if not files:
        raise UserError(f"{directory}: no <model>.<backend>.json profile files")
    return load_files(files)


def pool(into: Samples, more: Samples) -> Samples:
    """Append `more`'s samples to `into` (A/B rounds of the same side)."""
    for model, configs in more.items():
        for config, metrics in configs.items():
            dest = into.setdefault(model, {}).setdefault(config, {m: [] for m in METRICS})
            for m, values in metrics.items():
                dest[m].extend(values)
    return into


# ---------------------------------------------------------------- statistics


def _ratio_of_medians(head: np.ndarray, base: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.median(head, axis=axis) / np.median(base, axis=axis)


def bootstrap_ratio(
    base: np.ndarray, head: np.ndarray, *, n_boot: int, confidence: float, seed: int
) -> tuple[float, float, float]:
    """Ratio of medians head/base and its BCa bootstrap CI (each side resampled on its own)."""
    kwargs = dict(n_resamples=n_boot, confidence_level=confidence, vectorized=True,
                  paired=False, rng=np.random.default_rng(seed))
    with warnings.catch_warnings():
        # BCa's jackknife degenerates when a side's values are all equal (a NaN interval)
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        ci = stats.bootstrap((head, base), _ratio_of_medians, method="BCa", **kwargs).confidence_interval
        if not (math.isfinite(ci.low) and math.isfinite(ci.high)):
            kwargs["rng"] = np.random.default_rng(seed)
            ci = stats.bootstrap((head, base), _ratio_of_medians, method="percentile",
                                 **kwargs).confidence_interval
    return float(np.median(head) / np.median(base)), float(ci.low), float(ci.high)


def verdict(low: float, high: float, *, higher_is_worse: bool, threshold: float) -> str:
    """Slower/faster only when the whole CI is beyond the threshold (symmetric in log-ratio)."""
    up, down = 1.0 + threshold, 1.0 / (1.0 + threshold)
    worse = low > up if higher_is_worse else high < down
    better = high < down if higher_is_worse else low > up
    return SLOWER if worse else FASTER if better else SAME


def _clean(values: list[float]) -> np.ndarray:
    # Times and rates are positive; drop NaN/inf/0 (e.g. a decode rate of a 1-token output).
    a = np.asarray(values, dtype=float)
    return a[np.isfinite(a) & (a > 0)]


def compare(
    base: Samples,
    head: Samples,
    *,
    threshold: float = DEFAULTS.threshold,
    confidence: float = DEFAULTS.confidence,
    n_boot: int = 2000,
    seed: int = 0,
    min_samples: int = 5,
) -> tuple[list[Row], list[str]]:
    """Rows for every config present on both sides, and notes on what could not be compared.
    threshold and confidence are checked by the Gate schema (see settings())."""
    rows: list[Row] = []
    notes: list[str] = []
    for model in sorted(set(base) | set(head)):
        if model not in head or model not in base:
            side = "head" if model not in head else "base"
            notes.append(f"`{model}`: no profile in {side}; not compared")
            continue
        b_cfg, h_cfg = base[model], head[model]
        # in the profile's own order (dicts keep it)
        notes += [f"`{model}` {format_config(c)}: ok in base only; not compared"
                  for c in b_cfg if c not in h_cfg]
        notes += [f"`{model}` {format_config(c)}: new in head; not compared"
                  for c in h_cfg if c not in b_cfg]
        for config in (c for c in b_cfg if c in h_cfg):
            for metric, higher_is_worse in METRICS.items():
                b, h = _clean(b_cfg[config][metric]), _clean(h_cfg[config][metric])
                p50b, p50h = (float(np.median(a)) if a.size else math.nan for a in (b, h))
                # A bootstrap of 1 sample is a point, not an interval: need >= 2 per side.
                if min(b.size, h.size) < max(min_samples, 2):
                    nan = math.nan
                    rows.append(Row(model, config, metric, b.size, h.size, p50b, p50h, nan, nan,
                                    nan, f"{FEW} (< {max(min_samples, 2)})"))
                    continue
                ratio, low, high = bootstrap_ratio(b, h, n_boot=n_boot, confidence=confidence,
                                                   seed=seed)
                v = verdict(low, high, higher_is_worse=higher_is_worse, threshold=threshold)
                rows.append(Row(model, config, metric, b.size, h.size, p50b, p50h, ratio, low,
                                high, v))
    return rows, notes


# ---------------------------------------------------------------- report


def format_config(config: Config) -> str:
    key, batch, n_in, n_out = config
    return f"{key} · b{batch} · {n_in}→{n_out}"


def _fmt_value(metric: str, v: float) -> str:
    if not math.isfinite(v):
        return "–"
    m = spec.METRICS[metric]
    return f"{m.shown(v):.3g} {m.display_unit}"


def render_markdown(rows: list[Row], notes: list[str], *, threshold: float, confidence: float,
                    n_boot: int) -> str:
    n_slow = sum(r.verdict == SLOWER for r in rows)
    head = (f"❌ {n_slow} regression{'s' if n_slow != 1 else ''}" if n_slow
            else "✅ no regression")
    lines = [
        f"### Benchmark gate: {head}",
        "",
        f"head/base = ratio of the medians over iterations; CI = {confidence:.0%} BCa bootstrap "
        f"({n_boot} resamples). A metric fails only when its whole CI is more than "
        f"{threshold:.0%} slower (times up, decode_tps down).",
    ]
    for model in sorted({r.model for r in rows}):
        lines += ["", f"#### `{model}`", "",
                  f"| config | metric | n base/head | base p50 | head p50 | head/base | "
                  f"{confidence:.0%} CI | verdict |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in (r for r in rows if r.model == model):
            ci = f"[{r.ci_low:.3f}, {r.ci_high:.3f}]" if math.isfinite(r.ci_low) else "–"
            ratio = f"{r.ratio:.3f}" if math.isfinite(r.ratio) else "–"
            shown = f"**{r.verdict}**" if r.verdict == SLOWER else r.verdict
            lines.append(f"| {format_config(r.config)} | {r.metric} | {r.n_base}/{r.n_head} | "
                         f"{_fmt_value(r.metric, r.base_p50)} | {_fmt_value(r.metric, r.head_p50)} | "
                         f"{ratio} | {ci} | {shown} |")
    if not rows:
        lines += ["", "No config was profiled ok on both sides: nothing compared."]
    if notes:
        lines += ["", "Not compared:", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- A/B mode


def run_ab(base_dir: Path, head_dir: Path, cmd: str, rounds: int,
           profile_subdir: str) -> tuple[Samples, Samples]:
    """Run `cmd` in base and head checkouts interleaved ABAB on this machine; pool samples."""
    if rounds < 1:
        raise UserError(f"--rounds: must be >= 1, got {rounds}")
    for d in (base_dir, head_dir):
        if not Path(d).is_dir():
            raise UserError(f"{d}: checkout directory not found")
    pools: dict[str, Samples] = {"base": {}, "head": {}}
    for r in range(1, rounds + 1):
        for side, d in (("base", Path(base_dir)), ("head", Path(head_dir))):
            print(f"[gate ab] round {r}/{rounds} {side}: {cmd}  (in {d})", file=sys.stderr,
                  flush=True)
            started = time.time()
            rc = subprocess.run(cmd, shell=True, cwd=d).returncode
            if rc:
                raise UserError(f"--cmd exited {rc} in {d}: {cmd}")
            prof = d / profile_subdir
            # Only files this run wrote: a stale profile must not be pooled (1 s slack for
            # coarse file-system clocks).
            fresh = sorted(f for f in prof.glob("*.json") if f.stat().st_mtime >= started - 1.0) \
                if prof.is_dir() else []
            if not fresh:
                raise UserError(f"{prof}: --cmd wrote no <model>.json profile files")
            pool(pools[side], load_files(fresh))
    return pools["base"], pools["head"]


# ---------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m llmbench.gate", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    cmp_ = sub.add_parser("compare", help="compare two directories of <model>.json profiles")
    cmp_.add_argument("--base", required=True, type=Path, help="base profile directory")
    cmp_.add_argument("--head", type=Path, help="head profile directory (default: paths.profile)")
    ab = sub.add_parser("ab", help="run a profiling command in two checkouts, ABAB, then compare")
    ab.add_argument("--base-dir", required=True, type=Path, help="base checkout")
    ab.add_argument("--head-dir", required=True, type=Path, help="head checkout")
    ab.add_argument("--cmd", required=True,
                    help="shell command that re-measures (e.g. 'dvc repro -f -s profile-llamacpp@M')")
    ab.add_argument("--rounds", type=int, default=3, help="ABAB rounds (default 3)")
    ab.add_argument("--profile-subdir",
                    help="where --cmd writes <model>.json, relative to each checkout "
                         "(default: paths.profile)")
    for s in (cmp_, ab):
        s.add_argument("--params", type=Path,
                       help="params file for the defaults (default: params.yaml when present, "
                            "else the schema's defaults)")
        s.add_argument("--threshold", type=float,
                       help="relative slowdown that fails (default: params gate.threshold)")
        s.add_argument("--confidence", type=float,
                       help="CI level (default: params gate.confidence)")
        s.add_argument("--bootstrap", type=int, default=2000, help="resamples (default 2000)")
        s.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
        s.add_argument("--min-samples", type=int, default=5,
                       help="fewer samples per side: not judged (default 5)")
        s.add_argument("--out", type=Path, default=Path("gate.md"),
                       help="markdown report file (default gate.md)")
    return p


def settings(args: argparse.Namespace) -> tuple[Gate, Paths]:
    """params.yaml `gate:` (and `paths:`) with the given flags on top, checked by the schema."""
    if args.params is not None or Path("params.yaml").exists():
        params = load_params(args.params or "params.yaml")
        cfg, paths = params.gate, params.paths
    else:  # e.g. run outside a checkout: the same defaults a fresh params.yaml has
        cfg, paths = Gate(), Paths()
    flags = {k: v for k, v in (("threshold", args.threshold), ("confidence", args.confidence))
             if v is not None}
    try:
        return Gate.model_validate({**cfg.model_dump(), **flags}), paths
    except ValidationError as exc:
        raise UserError(f"--{one_line(exc.errors()[0])}") from None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg, paths = settings(args)
        if args.bootstrap < 100:
            raise UserError(f"--bootstrap: must be >= 100, got {args.bootstrap}")
        if args.command == "compare":
            base, head = load_dir(args.base), load_dir(args.head or paths.profile)
        else:
            base, head = run_ab(args.base_dir, args.head_dir, args.cmd, args.rounds,
                                args.profile_subdir or paths.profile)
        rows, notes = compare(base, head, threshold=cfg.threshold, confidence=cfg.confidence,
                              n_boot=args.bootstrap, seed=args.seed, min_samples=args.min_samples)
        report = render_markdown(rows, notes, threshold=cfg.threshold,
                                 confidence=cfg.confidence, n_boot=args.bootstrap)
        try:
            args.out.write_text(report)
        except OSError as e:
            raise UserError(f"{args.out}: cannot write report ({e.strerror})") from e
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    sys.stdout.write(report)
    return 1 if any(r.verdict == SLOWER for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
