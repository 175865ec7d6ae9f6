"""The profile engine: latency, memory and roofline of one model over a dtype x attention x
shape grid. Returns a results.ProfileResult (metrics/profile/<model>.json); the stage writes it.

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

from llmbench import metrics
from llmbench.config import ResolvedProfile
from llmbench.errors import UserError
from llmbench.results import (Deployment, Fingerprint, Headline, ModelFacts, ProfileProtocol, ProfileResult,
                              ProfileRow, Roofline, Stats)
from llmbench.spec import MEMORY, SAMPLED
from llmbench.trackers import (LatencyTracker, MemoryTracker, kv_cache_bytes, streamed_weight_bytes,
                               weight_bytes)

log = logging.getLogger(__name__)
BACKEND = "transformers"


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


def fingerprint(device: str = "cpu") -> Fingerprint:
    """Where the numbers were measured (precision and attention are in each row's Deployment)."""
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
    )


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
    """All prompts' token ids, concatenated (real text, cut later to exact lengths)."""
    ids: list[int] = []
    for text in prompt_texts:
        ids.extend(tokenizer.encode(text, add_special_tokens=False))
    if not ids:
        raise UserError("profile: the prompts produced no tokens (is the prompts file empty?)")
    return ids


def make_input_ids(stream: list[int], batch_size: int, input_len: int, vocab_size: int):
    """(batch, input_len) ids, rows are consecutive windows of the stream (cycled), and whether
    ids were folded modulo vocab_size (a stand-in tokenizer larger than a random model's vocab)."""
    import torch

    need = batch_size * input_len
    reps = -(-need // len(stream))
    ids = torch.tensor((stream * reps)[:need], dtype=torch.long).view(batch_size, input_len)
    folded = bool(ids.max() >= vocab_size)
    return (ids % vocab_size if folded else ids), folded


# ----------------------------------------------------------------------------- engine
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


def _generate(model, ids, n_out: int, pad_id: int, streamer=None):
    import torch

    with torch.inference_mode():
        return model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_out, min_new_tokens=n_out,
            do_sample=False, num_beams=1, pad_token_id=pad_id, use_cache=True, streamer=streamer,
        )


def profile_shape(model, ids, n_out: int, c: ResolvedProfile, mem: MemoryTracker, pad_id: int = 0) -> dict:
    """Warmup, then measured generate() calls until min_iterations and min_duration_s are met.
    Returns {"iterations": n, <spec.SAMPLED metric>: describe_samples dict}."""
    batch, n_in = ids.shape
    lat = LatencyTracker(c.device)
    with mem.track():
        for _ in range(c.warmup):
            _generate(model, ids, n_out, pad_id)
        t0 = time.perf_counter()
        while (len(lat.results) < c.min_iterations or time.perf_counter() - t0 < c.min_duration_s) and (
            c.max_iterations is None or len(lat.results) < c.max_iterations
        ):
            with lat.track(batch, n_in) as timer:
                out = _generate(model, ids, n_out, pad_id, streamer=timer)
            got = out.shape[1] - n_in
            if got != n_out or lat.results[-1].n_out != n_out:
                raise RuntimeError(f"generated {got} tokens ({lat.results[-1].n_out} timed), expected {n_out}")
    return {"iterations": len(lat.results), **lat.stats()}


def _load(model_factory, dtype: str, attn: str, device: str):
    """The model loaded as asked, or an exception saying why not (a silent fallback counts)."""
    model = model_factory(dtype, attn)
    model = model.to(device) if device != "cpu" else model
    loaded_as = (str(model.dtype).removeprefix("torch."), model.config._attn_implementation)
    if loaded_as != (dtype, attn):
        raise NotImplementedError(f"requested {dtype}/{attn}, model loaded as {loaded_as[0]}/{loaded_as[1]}")
    return model


def _sweep_one(model, dep: Deployment, load_s: float, grid: ResolvedProfile, mem, stream, pad_id, bw, notes,
               say) -> list[ProfileRow]:
    """Every (batch, input_len) shape of one loaded model."""
    import torch

    n_out, device = grid.output_len, grid.device
    vocab = model.get_input_embeddings().num_embeddings
    w_bytes, s_bytes = weight_bytes(model), streamed_weight_bytes(model)
    elem = torch.empty((), dtype=model.dtype).element_size()
    rows = []
    for b in grid.batch_sizes:
        for n in sorted(grid.input_lens):
            ids, folded = make_input_ids(stream, b, n, vocab)
            if folded and not any("folded" in x for x in notes):
                notes.append(f"tokenizer ids exceed the model's vocab ({vocab}): folded modulo vocab_size")
            try:
                measured = profile_shape(model, ids.to(device), n_out, grid, mem, pad_id)
            except Exception as exc:  # noqa: BLE001 - recorded, the sweep goes on
                status = "unsupported" if _is_unsupported(exc) else "failed"
                rows.append(_row(dep, b, n, n_out, status, _reason(exc), load_s=load_s))
                say(f"{dep.key} b{b} n{n}: {status}: {_reason(exc)}")
                continue
            memory = mem.result(w_bytes, kv_cache_bytes(model.config, b, n + n_out, elem))
            roof = metrics.roofline(s_bytes, measured["decode_tps"]["p50"], bw) if b == 1 else None
            rows.append(_row(dep, b, n, n_out, load_s=load_s, memory=memory,
                             roofline=Roofline(**roof) if roof else None, **measured))
            say(f"{dep.key} b{b} n{n}: {measured['iterations']} it, "
                f"decode {measured['decode_tps']['p50']:.1f} tok/s")
    return rows


def run_profile(model_factory: Callable[[str, str], object], tokenizer, info, prompt_texts: Sequence[str],
                cfg: ResolvedProfile, progress: Callable[[str], None] | None = None) -> ProfileResult:
    """Profile one model; model_factory(dtype, attn_implementation) returns a loaded model (or raises).
    info: the model's ModelInfo (llmbench.models). cfg: params.profile.resolved()."""
    import torch

    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("params.yaml: profile.device: CUDA is not available here "
                        "(torch.cuda.is_available() is False)")
    threads_before = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    try:
        return _run(model_factory, tokenizer, ModelFacts.of(info), prompt_texts, cfg, progress or log.info)
    finally:
        torch.set_num_threads(threads_before)


def _run(model_factory, tokenizer, facts: ModelFacts, prompt_texts, c: ResolvedProfile, say) -> ProfileResult:
    import torch

    load_before = os.getloadavg()[0]
    grid, capped = c.for_model(facts.n_params)
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
    pad_id = getattr(tokenizer, "pad_token_id", None)
    pad_id = pad_id if pad_id is not None else (getattr(tokenizer, "eos_token_id", None) or 0)
    rows: list[ProfileRow] = []
    with MemoryTracker(device) as mem:
        for dtype in grid.dtypes:
            for attn in grid.attentions:
                dep = Deployment(model=facts.name, backend=BACKEND, precision=dtype, attention=attn)
                mem.baseline()  # RSS before this load
                t0 = time.perf_counter()
                try:
                    model = _load(model_factory, dtype, attn, device)
                except Exception as exc:  # noqa: BLE001 - every failure is recorded, the sweep goes on
                    status = "unsupported" if _is_unsupported(exc) or isinstance(exc, ValueError) else "failed"
                    say(f"{dep.key}: {status}: {_reason(exc)}")
                    rows += [_row(dep, b, n, grid.output_len, status, _reason(exc))
                             for b in grid.batch_sizes for n in sorted(grid.input_lens)]
                    continue
                load_s = time.perf_counter() - t0
                rows += _sweep_one(model, dep, load_s, grid, mem, stream, pad_id, bw, notes, say)
                del model
                gc.collect()
    head = headline(rows, grid)
    first_bad = next((r for r in rows if r.status != "ok"), None)
    return ProfileResult(
        status="ok" if head else "failed",
        reason=None if head else f"no shape ran: {first_bad.reason if first_bad else 'empty grid'}",
        model=facts.name, weights=facts.weights, info=facts, fingerprint=fingerprint(device), copy_gbps=bw,
        results=rows, headline=head,
        protocol=ProfileProtocol(
            **c.model_dump(include={"preset", "warmup", "min_iterations", "min_duration_s", "max_iterations",
                                    "threads", "device", "bandwidth_mib", "large_model_params"}),
            **grid.model_dump(include={"batch_sizes", "input_lens", "output_len", "dtypes", "attentions"}),
            grid_reduced=capped, notes=notes, omp_wait_policy=omp,
            loadavg_1m=[load_before, os.getloadavg()[0]]),
    )


def headline(rows: list[ProfileRow], grid: ResolvedProfile) -> Headline | None:
    """Batch 1 (else smallest), first dtype, first attention, smallest input; if that row is
    not ok, the first ok row of the same shape in sweep order; None when nothing ran."""
    b0, n0 = min(grid.batch_sizes), min(grid.input_lens)
    pick = next((r for r in rows if (r.batch_size, r.input_len) == (b0, n0) and r.status == "ok"), None)
    return None if pick is None else Headline(deployment=pick.deployment, batch_size=b0, input_len=n0)
