"""The profile engine: latency, memory and roofline of one model's deployments (backend x
precision x attention, llmbench.backends) over a shape grid. Backend-agnostic: it calls only the
backends.Loaded protocol, so one clock (TokenTimer via on_token) and one RSS sampler measure every
runtime. Returns a results.ProfileResult (metrics/profile/<model>.<backend>.json); the stage writes it.

Protocol (optimum-benchmark's): warmup runs, then measured runs until BOTH min_iterations and
min_duration_s are met; fixed generation length (greedy, min_new_tokens = max_new_tokens, so
EOS cannot end a run early).
"""

from __future__ import annotations

import gc
import logging
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from llmbench import metrics
from llmbench.backends import Loaded
from llmbench.config import ResolvedProfile
from llmbench.errors import UserError
from llmbench.results import (Deployment, Fingerprint, Headline, ModelFacts, ProfileProtocol, ProfileResult,
                              ProfileRow, Roofline, Stats)
from llmbench.spec import MEMORY, SAMPLED
from llmbench.trackers import LatencyTracker, MemoryTracker, kv_cache_bytes

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- environment
def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def fingerprint(device: str = "cpu", backends: Sequence[str] = ()) -> Fingerprint:
    """Where the numbers were measured (precision and attention are in each row's Deployment).
    With llamacpp among backends, its version and build flags are part of it: another build
    (or CPU flags) must not compare as the same environment."""
    import psutil
    import torch
    import transformers

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return Fingerprint(
        cpu=_cpu_name(), cores=cores, torch_threads=torch.get_num_threads(),
        ram_gib=round(psutil.virtual_memory().total / 2**30, 2), os=platform.platform(),
        python=platform.python_version(), torch=torch.__version__,
        transformers=transformers.__version__,
        device=torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu",
        llama_cpp=_llama_cpp_build() if "llamacpp" in backends else None,
    )


def _llama_cpp_build() -> str:
    from llmbench.backends import llamacpp

    info = llamacpp.system_info()
    return f"{info['llama_cpp_python']} ({info['system_info']})"


def measure_copy_bandwidth(size_mib: int = 256, repeats: int = 5, device: str = "cpu") -> float:
    """Best-of-N GB/s of a large tensor copy, counting read + write (2 x size per copy)."""
    import torch

    n = size_mib * 2**20
    src = torch.ones(n, dtype=torch.uint8, device=device)
    dst = torch.zeros_like(src)  # touched, so page faults are not timed
    best = float("inf")
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        dst.copy_(src)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return metrics.bandwidth_gbps(2 * n, best)


# ----------------------------------------------------------------------------- inputs
def token_stream(tokenizer, prompt_texts: Sequence[str]) -> list[int]:
    """All prompts' token ids, concatenated (real text, cut later to exact lengths). One
    tokenizer (the prepared folder's) for every backend, so every deployment gets the same ids."""
    ids: list[int] = []
    for text in prompt_texts:
        ids.extend(tokenizer.encode(text, add_special_tokens=False))
    if not ids:
        raise UserError("profile: the prompts produced no tokens (is the prompts file empty?)")
    return ids


def make_input_ids(stream: list[int], batch_size: int, input_len: int, vocab_size: int
                   ) -> tuple[list[list[int]], bool]:
    """batch_size rows of input_len ids, consecutive windows of the stream (cycled), and whether
    ids were folded modulo vocab_size (a stand-in tokenizer larger than a random model's vocab)."""
    need = batch_size * input_len
    flat = (stream * -(-need // len(stream)))[:need]
    folded = max(flat) >= vocab_size
    flat = [i % vocab_size for i in flat] if folded else flat
    return [flat[r * input_len:(r + 1) * input_len] for r in range(batch_size)], folded


# ----------------------------------------------------------------------------- engine
@dataclass(frozen=True)
class Target:
    """One deployment to sweep and how to load it: load(n_ctx, n_seq) -> backends.Loaded, sized
    for the largest shape (n_ctx per sequence = n_in + n_out, n_seq = batch). Raises when the
    deployment cannot run (recorded, the sweep goes on)."""

    deployment: Deployment
    load: Callable[[int, int], Loaded]


def transformers_targets(model: str, factory: Callable[[str, str], object], tokenizer=None
                         ) -> Callable[[ResolvedProfile], list[Target]]:
    """Targets for every dtype x attention of a grid; factory(dtype, attention) -> torch model."""
    from llmbench.backends import transformers as hf

    def build(grid: ResolvedProfile) -> list[Target]:
        return [Target(Deployment(model=model, backend=hf.NAME, precision=d, attention=a),
                       lambda n_ctx, n_seq, d=d, a=a: hf.wrap(factory(d, a), tokenizer, precision=d, attention=a))
                for d in grid.dtypes for a in grid.attentions]

    return build


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:300]


def _is_unsupported(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, ImportError | NotImplementedError) or "not implemented" in text or "not supported" in text


def _row(dep: Deployment, batch: int, n_in: int, n_out: int, status: str = "ok", reason: str | None = None,
         **measured) -> ProfileRow:
    """A row; what was not measured is empty (n = 0 stats, None memory)."""
    empty = Stats(**metrics.describe_samples([]))
    fields = {"iterations": 0, **{k: empty for k in SAMPLED}, "memory": {k: None for k in MEMORY},
              "roofline": None, "load_s": None, **measured}
    return ProfileRow(deployment=dep, batch_size=batch, input_len=n_in, output_len=n_out, status=status,
                      reason=reason, **fields)


def profile_shape(loaded: Loaded, ids: list[list[int]], n_out: int, c: ResolvedProfile,
                  mem: MemoryTracker) -> dict:
    """Warmup, then measured generate() calls until min_iterations and min_duration_s are met.
    Returns {"iterations": n, <spec.SAMPLED metric>: describe_samples dict}."""
    batch, n_in = len(ids), len(ids[0])
    lat = LatencyTracker(c.device)
    with mem.track():
        for _ in range(c.warmup):
            loaded.generate(ids, n_out)
        t0 = time.perf_counter()
        while (len(lat.results) < c.min_iterations or time.perf_counter() - t0 < c.min_duration_s) and (
            c.max_iterations is None or len(lat.results) < c.max_iterations
        ):
            with lat.track(batch, n_in) as timer:
                out = loaded.generate(ids, n_out, on_token=timer.tick)
            got = {len(o) for o in out}
            if got != {n_out} or lat.results[-1].n_out != n_out:
                raise RuntimeError(f"generated {sorted(got)} tokens ({lat.results[-1].n_out} timed), "
                                   f"expected {n_out}")
    return {"iterations": len(lat.results), **lat.stats()}


def _sweep_one(loaded: Loaded, dep: Deployment, load_s: float, grid: ResolvedProfile, mem, stream, bw, notes,
               say, kv_config) -> list[ProfileRow]:
    """Every (batch, input_len) shape of one loaded deployment."""
    n_out = grid.output_len
    vocab = loaded.vocab_size
    elem = getattr(loaded, "kv_elem_bytes", None)
    kv_config = kv_config if kv_config is not None else getattr(loaded, "config", None)
    streamed = getattr(loaded, "streamed_bytes", loaded.weight_bytes)
    rows = []
    for b in grid.batch_sizes:
        for n in sorted(grid.input_lens):
            if b > 1 and not loaded.supports_batch:
                rows.append(_row(dep, b, n, n_out, "unsupported", f"backend {dep.backend} has no real "
                                 "batch (a loop of single sequences is not a batch)", load_s=load_s))
                continue
            ids, folded = make_input_ids(stream, b, n, vocab)
            if folded and not any("folded" in x for x in notes):
                notes.append(f"tokenizer ids exceed the model's vocab ({vocab}): folded modulo vocab_size")
            try:
                measured = profile_shape(loaded, ids, n_out, grid, mem)
            except Exception as exc:  # noqa: BLE001 - recorded, the sweep goes on
                status = "unsupported" if _is_unsupported(exc) else "failed"
                rows.append(_row(dep, b, n, n_out, status, _reason(exc), load_s=load_s))
                say(f"{dep.key} b{b} n{n}: {status}: {_reason(exc)}")
                continue
            kv = kv_cache_bytes(kv_config, b, n + n_out, elem) if kv_config is not None and elem else None
            memory = mem.result(loaded.weight_bytes, kv)
            roof = metrics.roofline(streamed, measured["decode_tps"]["p50"], bw) if b == 1 else None
            rows.append(_row(dep, b, n, n_out, load_s=load_s, memory=memory,
                             roofline=Roofline(**roof) if roof else None, **measured))
            say(f"{dep.key} b{b} n{n}: {measured['iterations']} it, "
                f"decode {measured['decode_tps']['p50']:.1f} tok/s")
    return rows


def run_profile(targets: Callable[[ResolvedProfile], Sequence[Target]], tokenizer, info,
                prompt_texts: Sequence[str], cfg: ResolvedProfile, progress: Callable[[str], None] | None = None,
                kv_config=None, runtimes: Sequence[str] | None = None) -> ProfileResult:
    """Profile one model over targets(grid): the deployments to sweep for the model's grid (its
    dtypes/attentions for transformers, its GGUF types for llamacpp). info: the model's
    ModelInfo (llmbench.models). cfg: params.profile.resolved(). tokenizer: the prepared
    folder's (the same ids for every backend). kv_config: the HF config, for KV-cache sizes.
    runtimes: the enabled backends, for the fingerprint (default: the targets'): a model without a
    GGUF must keep the fingerprint of the models that have one, or the report refuses to compare."""
    import torch

    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("params.yaml: profile.device: CUDA is not available here "
                        "(torch.cuda.is_available() is False)")
    threads_before = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    try:
        return _run(targets, tokenizer, ModelFacts.of(info), prompt_texts, cfg, progress or log.info, kv_config,
                    runtimes)
    finally:
        torch.set_num_threads(threads_before)


def _run(targets_for, tokenizer, facts: ModelFacts, prompt_texts, c: ResolvedProfile, say, kv_config,
         runtimes) -> ProfileResult:
    import torch

    load_before = os.getloadavg()[0]
    grid, capped = c.for_model(facts.n_params)
    targets = list(targets_for(grid))
    device = c.device
    notes = []
    omp = os.environ.get("OMP_WAIT_POLICY")
    if torch.get_num_threads() > 1 and device == "cpu" and (omp or "").lower() != "passive":
        notes.append("OMP_WAIT_POLICY is not PASSIVE: with other load on the cores, >1 torch thread "
                     "can run 10-100x slower (spinning OpenMP threads)")
    if capped:
        notes.append(f"n_params {facts.n_params} > large_model_params {c.large_model_params}: grid reduced by "
                     f"{c.large_model_overrides.model_dump(exclude_none=True)}")
    bw = measure_copy_bandwidth(c.bandwidth_mib, device=device) if c.bandwidth_mib else None
    stream = token_stream(tokenizer, prompt_texts)
    n_ctx, n_seq = max(grid.input_lens) + grid.output_len, max(grid.batch_sizes)
    rows: list[ProfileRow] = []
    with MemoryTracker(device) as mem:
        for target in targets:
            dep = target.deployment
            mem.baseline()  # RSS before this load
            t0 = time.perf_counter()
            try:
                loaded = target.load(n_ctx, n_seq)
            except Exception as exc:  # noqa: BLE001 - every failure is recorded, the sweep goes on
                status = "unsupported" if _is_unsupported(exc) or isinstance(exc, ValueError) else "failed"
                say(f"{dep.key}: {status}: {_reason(exc)}")
                rows += [_row(dep, b, n, grid.output_len, status, _reason(exc))
                         for b in grid.batch_sizes for n in sorted(grid.input_lens)]
                continue
            load_s = time.perf_counter() - t0
            try:
                rows += _sweep_one(loaded, dep, load_s, grid, mem, stream, bw, notes, say, kv_config)
            finally:
                loaded.close()
                del loaded
                gc.collect()
    head = headline(rows, grid)
    first_bad = next((r for r in rows if r.status != "ok"), None)
    return ProfileResult(
        status="ok" if head else "failed",
        reason=None if head else f"no shape ran: {first_bad.reason if first_bad else 'empty grid'}",
        model=facts.name, weights=facts.weights, info=facts,
        fingerprint=fingerprint(device, runtimes if runtimes is not None else
                                {t.deployment.backend for t in targets}), copy_gbps=bw,
        results=rows, headline=head,
        protocol=ProfileProtocol(
            preset=c.preset,
            **c.model_dump(include={"warmup", "min_iterations", "min_duration_s", "max_iterations",
                                    "threads", "device", "bandwidth_mib", "large_model_params"}),
            **grid.model_dump(include={"batch_sizes", "input_lens", "output_len", "dtypes", "attentions"}),
            backends=sorted({t.deployment.backend for t in targets}),
            grid_reduced=capped, notes=notes, omp_wait_policy=omp,
            loadavg_1m=[load_before, os.getloadavg()[0]]),
    )


def headline(rows: list[ProfileRow], grid: ResolvedProfile) -> Headline | None:
    """Batch 1 (else smallest), first dtype, first attention, smallest input; if that row is
    not ok, the first ok row of the same shape in sweep order; None when nothing ran."""
    b0, n0 = min(grid.batch_sizes), min(grid.input_lens)
    pick = next((r for r in rows if (r.batch_size, r.input_len) == (b0, n0) and r.status == "ok"), None)
    return None if pick is None else Headline(deployment=pick.deployment, batch_size=b0, input_len=n0)
