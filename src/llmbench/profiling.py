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


def fingerprint(device: str = "cpu", dtype: str | None = None, attention: str | None = None) -> dict:
    """Where the numbers were measured. dtype/attention are added when given (per result)."""
    import psutil
    import torch
    import transformers

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    fp = {
        "cpu": _cpu_name(), "cores": cores, "torch_threads": torch.get_num_threads(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 2), "os": platform.platform(),
        "python": platform.python_version(), "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu",
    }
    if dtype is not None:
        fp["dtype"] = dtype
    if attention is not None:
        fp["attention"] = attention
    return fp


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


def _empty_result(dtype, attention, batch, n_in, n_out, status, reason) -> dict:
    empty = metrics.summarize([])
    return {
        "dtype": dtype, "attention": attention, "batch_size": batch, "input_len": n_in,
        "output_len": n_out, "status": status, "reason": reason, "iterations": 0,
        **{k: dict(empty) for k in ("ttft_s", "tpot_s", "itl_s", "e2e_s", "decode_tps", "prefill_tps")},
        "memory": {k: None for k in ("rss_baseline_mib", "rss_peak_mib", "weights_mib", "kv_cache_mib",
                                     "cuda_max_allocated_mib", "cuda_max_reserved_mib")},
        "roofline": None,
    }


def _generate(model, ids, n_out: int, pad_id: int, streamer=None):
    import torch

    with torch.inference_mode():
        return model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_out, min_new_tokens=n_out,
            do_sample=False, num_beams=1, pad_token_id=pad_id, use_cache=True, streamer=streamer,
        )


def profile_shape(model, ids, n_out: int, c: dict, mem: MemoryTracker, pad_id: int = 0) -> dict:
    """Warmup, then measured generate() calls until min_iterations and min_duration_s are met."""
    batch, n_in = ids.shape
    lat = LatencyTracker(c["device"])
    with mem.track():
        for _ in range(c["warmup"]):
            _generate(model, ids, n_out, pad_id)
        t0 = time.perf_counter()
        while (len(lat.results) < c["min_iterations"] or time.perf_counter() - t0 < c["min_duration_s"]) and (
            c["max_iterations"] is None or len(lat.results) < c["max_iterations"]
        ):
            with lat.track(batch, n_in) as timer:
                out = _generate(model, ids, n_out, pad_id, streamer=timer)
            got = out.shape[1] - n_in
            if got != n_out or lat.results[-1].n_out != n_out:
                raise RuntimeError(f"generated {got} tokens ({lat.results[-1].n_out} timed), expected {n_out}")
    return {"iterations": len(lat.results), **lat.stats()}


def _grid_for(c: dict, params: int | None) -> tuple[dict, bool]:
    big = c["large_model_params"] is not None and params is not None and params > c["large_model_params"]
    return ({**c, **(c["large_model_overrides"] or {})} if big else c), big


def _load(model_factory, dtype: str, attn: str, device: str):
    """The model loaded as asked, or an exception saying why not (a silent fallback counts)."""
    model = model_factory(dtype, attn)
    model = model.to(device) if device != "cpu" else model
    loaded_as = (str(model.dtype).removeprefix("torch."), model.config._attn_implementation)
    if loaded_as != (dtype, attn):
        raise NotImplementedError(f"requested {dtype}/{attn}, model loaded as {loaded_as[0]}/{loaded_as[1]}")
    return model


def _sweep_one(model, dtype, attn, grid, c, mem, stream, pad_id, bw, notes, say) -> list[dict]:
    """Every (batch, input_len) shape of one loaded model."""
    import torch

    n_out = grid["output_len"]
    vocab = model.get_input_embeddings().num_embeddings
    w_bytes, s_bytes = weight_bytes(model), streamed_weight_bytes(model)
    elem = torch.empty((), dtype=model.dtype).element_size()
    results = []
    for b in grid["batch_sizes"]:
        for n in sorted(grid["input_lens"]):
            ids, folded = make_input_ids(stream, b, n, vocab)
            if folded and not any("folded" in x for x in notes):
                notes.append(f"tokenizer ids exceed the model's vocab ({vocab}): folded modulo vocab_size")
            res = _empty_result(dtype, attn, b, n, n_out, "ok", None)
            results.append(res)
            try:
                res.update(profile_shape(model, ids.to(c["device"]), n_out, c, mem, pad_id))
            except Exception as exc:  # noqa: BLE001 - recorded, the sweep goes on
                res.update(status="unsupported" if _is_unsupported(exc) else "error", reason=_reason(exc))
                say(f"{dtype}/{attn} b{b} n{n}: {res['status']}: {res['reason']}")
                continue
            res["memory"] = mem.result(w_bytes, kv_cache_bytes(model.config, b, n + n_out, elem)).to_dict()
            if b == 1:
                res["roofline"] = metrics.roofline(s_bytes, res["decode_tps"]["p50"], bw)
            say(f"{dtype}/{attn} b{b} n{n}: {res['iterations']} it, decode {res['decode_tps']['p50']:.1f} tok/s")
    return results


def run_profile(model_factory: Callable[[str, str], object], tokenizer, info, prompt_texts: Sequence[str],
                cfg: Mapping | None = None, progress: Callable[[str], None] | None = None) -> dict:
    """Profile one model; model_factory(dtype, attn_implementation) returns a loaded model (or raises).

    Returns the metrics/profile/<model>.json dict, plus "protocol" (resolved cfg, grid, notes,
    load average before/after: on a shared machine it says how busy the other cores were).
    """
    import torch

    c = resolve_cfg(cfg)
    threads_before = torch.get_num_threads()
    if c["threads"] is not None:
        torch.set_num_threads(c["threads"])
    try:
        return _run(model_factory, tokenizer, _as_dict(info), prompt_texts, c, progress or log.info)
    finally:
        torch.set_num_threads(threads_before)


def _run(model_factory, tokenizer, info_d: dict, prompt_texts, c: dict, say) -> dict:
    import torch

    load_before = os.getloadavg()[0]
    grid, capped = _grid_for(c, info_d.get("params"))
    device = c["device"]
    notes = []
    omp = os.environ.get("OMP_WAIT_POLICY")
    if torch.get_num_threads() > 1 and device == "cpu" and (omp or "").lower() != "passive":
        notes.append("OMP_WAIT_POLICY is not PASSIVE: with other load on the cores, >1 torch thread "
                     "can run 10-100x slower (spinning OpenMP threads)")
    if capped:
        notes.append(f"params {info_d.get('params')} > large_model_params {c['large_model_params']}: "
                     f"grid reduced by {c['large_model_overrides']}")
    bw = measure_copy_bandwidth(c["bandwidth_mib"], device=device) if c["bandwidth_mib"] else None
    stream = token_stream(tokenizer, prompt_texts)
    pad_id = getattr(tokenizer, "pad_token_id", None)
    pad_id = pad_id if pad_id is not None else (getattr(tokenizer, "eos_token_id", None) or 0)
    results, load_times = [], {}
    with MemoryTracker(device) as mem:
        for dtype in grid["dtypes"]:
            for attn in grid["attentions"]:
                mem.baseline()  # RSS before this load
                t0 = time.perf_counter()
                try:
                    model = _load(model_factory, dtype, attn, device)
                except Exception as exc:  # noqa: BLE001 - every failure is recorded, the sweep goes on
                    status = "unsupported" if _is_unsupported(exc) or isinstance(exc, ValueError) else "error"
                    say(f"{dtype}/{attn}: {status}: {_reason(exc)}")
                    results += [_empty_result(dtype, attn, b, n, grid["output_len"], status, _reason(exc))
                                for b in grid["batch_sizes"] for n in sorted(grid["input_lens"])]
                    continue
                load_times[(dtype, attn)] = time.perf_counter() - t0
                results += _sweep_one(model, dtype, attn, grid, c, mem, stream, pad_id, bw, notes, say)
                del model
                gc.collect()
    head = headline(results, grid)
    load_s = load_times.get((head["dtype"], head["attention"])) if head else None
    if head:
        head["load_s"] = load_s
    return {
        "model": info_d.get("name"), "weights": info_d.get("weights"), "info": info_d,
        "fingerprint": fingerprint(device), "preset": c["preset"], "load_s": load_s,
        "bandwidth": {"copy_gbps": bw}, "results": results, "headline": head,
        "protocol": {**c, "grid": {k: grid[k] for k in GRID_KEYS}, "notes": notes,
                     "omp_wait_policy": omp, "loadavg_1m": [load_before, os.getloadavg()[0]]},
    }


def headline(results: list[dict], grid: Mapping) -> dict | None:
    """Batch 1 (else smallest), first dtype, first attention, smallest input; if that result is
    not ok, the first ok result of the same shape in sweep order; None when nothing ran."""
    b0, n0 = min(grid["batch_sizes"]), min(grid["input_lens"])
    same_shape = [r for r in results if r["batch_size"] == b0 and r["input_len"] == n0]
    pick = next((r for r in same_shape if r["status"] == "ok"), None)
    if pick is None:
        return None
    p50 = {k: pick[k]["p50"] for k in ("ttft_s", "tpot_s", "e2e_s", "decode_tps", "prefill_tps")}
    return {
        "dtype": pick["dtype"], "attention": pick["attention"], "batch_size": b0, "input_len": n0,
        "output_len": pick["output_len"], "ttft_p50_s": p50["ttft_s"], "tpot_p50_s": p50["tpot_s"],
        "e2e_p50_s": p50["e2e_s"], "decode_tps_p50": p50["decode_tps"], "prefill_tps_p50": p50["prefill_tps"],
        "rss_peak_mib": pick["memory"]["rss_peak_mib"], "weights_mib": pick["memory"]["weights_mib"], "load_s": None,
    }
