"""Latency and memory trackers (optimum-benchmark style: result dataclass + `track()`).

torch is imported lazily so that the RSS sampler child process, which imports this module,
starts in a fraction of a second and stays small.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import psutil

from llmbench import metrics
from llmbench.spec import SAMPLED


# ----------------------------------------------------------------------------- latency
@dataclass(frozen=True)
class Latency:
    """One generate() call. Times in seconds from the call; see metrics.py for definitions."""

    batch_size: int
    n_in: int
    n_out: int
    ttft_s: float
    e2e_s: float
    itl_s: list[float] = field(default_factory=list)
    tpot_s: float | None = None
    decode_tps: float | None = None
    prefill_tps: float | None = None

    @classmethod
    def from_values(cls, token_times: list[float], batch_size: int, n_in: int) -> Latency:
        """token_times: seconds from the call to each generated token (one per decode step)."""
        if not token_times:
            raise ValueError("Latency.from_values: no generated token was observed")
        ttft, e2e, n_out = token_times[0], token_times[-1], len(token_times)
        return cls(
            batch_size=batch_size, n_in=n_in, n_out=n_out, ttft_s=ttft, e2e_s=e2e,
            itl_s=metrics.gaps(token_times),
            tpot_s=metrics.tpot(e2e, ttft, n_out),
            decode_tps=metrics.decode_tps(batch_size, n_out, e2e, ttft),
            prefill_tps=metrics.prefill_tps(batch_size, n_in, ttft),
        )


class TokenTimer:
    """A generate() streamer that timestamps every generated token as it is produced.

    transformers calls put() once with the prompt, then once per decode step with the new
    tokens (already copied to the host, so the device has finished that step). On CUDA a
    timing event is also recorded per step and read after a final synchronize.
    """

    def __init__(self, device: str = "cpu"):
        self.cuda = device.startswith("cuda")
        self._prompt_seen = False
        self._times: list[float] = []
        self._events: list = []
        self._start = 0.0
        self._start_event = None

    def start(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            self._start_event = torch.cuda.Event(enable_timing=True)
            self._start_event.record()
        self._start = time.perf_counter()

    def put(self, value) -> None:
        if not self._prompt_seen:  # the first put() carries the prompt ids
            self._prompt_seen = True
            return
        self.tick()

    def tick(self) -> None:
        """One generation step's tokens exist now (a backend's on_token callback)."""
        now = time.perf_counter()
        self._times.append(now - self._start)
        if self.cuda:
            import torch

            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self._events.append(ev)

    def end(self) -> None:
        pass

    def token_times(self) -> list[float]:
        if self.cuda and self._events:
            import torch

            torch.cuda.synchronize()
            return [self._start_event.elapsed_time(ev) / 1e3 for ev in self._events]
        return list(self._times)


class LatencyTracker:
    """Collects one Latency per tracked generate() call.

        tracker = LatencyTracker()
        with tracker.track(batch_size=1, n_in=32) as timer:
            model.generate(**inputs, streamer=timer, ...)
    """

    def __init__(self, device: str = "cpu"):
        self.device = device
        self.results: list[Latency] = []

    @contextmanager
    def track(self, batch_size: int, n_in: int):
        timer = TokenTimer(self.device)
        timer.start()
        yield timer
        self.results.append(Latency.from_values(timer.token_times(), batch_size, n_in))

    def stats(self) -> dict:
        """metrics.describe_samples per spec.SAMPLED metric over the tracked calls; itl_s pools
        every gap of every call; None values (a 1-token output has no tpot) are left out."""
        res = self.results
        out = {}
        for k in SAMPLED:
            if k == "itl_s":
                out[k] = metrics.describe_samples(g for r in res for g in r.itl_s)
            else:
                out[k] = metrics.describe_samples(getattr(r, k) for r in res if getattr(r, k) is not None)
        return out


# ----------------------------------------------------------------------------- memory
def memory_from_bytes(rss_baseline_bytes=None, rss_peak_bytes=None, weight_bytes=None, kv_cache_bytes=None,
                      cuda_max_allocated_bytes=None, cuda_max_reserved_bytes=None,
                      rss_anon_peak_bytes=None, rss_file_peak_bytes=None):
    """results.Memory (MiB, 2**20 bytes) from byte counts; None stays None."""
    from llmbench.results import Memory  # lazy: the sampler child imports this module

    def m(x):
        return None if x is None else metrics.mib(x)

    return Memory(rss_baseline_mib=m(rss_baseline_bytes), rss_peak_mib=m(rss_peak_bytes),
                  rss_anon_peak_mib=m(rss_anon_peak_bytes), rss_file_peak_mib=m(rss_file_peak_bytes),
                  weights_mib=m(weight_bytes), kv_cache_mib=m(kv_cache_bytes),
                  cuda_max_allocated_mib=m(cuda_max_allocated_bytes),
                  cuda_max_reserved_mib=m(cuda_max_reserved_bytes))


def rss_parts(pid: int | None = None) -> tuple[int, int | None, int | None]:
    """(resident total, anonymous, file-backed) bytes. Linux splits RSS in /proc/<pid>/status
    (RssAnon, RssFile, RssShmem): mmapped weights (a GGUF) are file-backed, a heap copy of the
    weights (transformers) is anonymous. Elsewhere only the total is known (None, None)."""
    try:
        with open(f"/proc/{pid or os.getpid()}/status", "rb") as f:
            parts = {k: int(v.split()[0]) * 1024 for k, _, v in
                     (ln.partition(b":") for ln in f) if k in (b"RssAnon", b"RssFile", b"RssShmem")}
        anon, file = parts[b"RssAnon"], parts[b"RssFile"]
        return anon + file + parts.get(b"RssShmem", 0), anon, file
    except FileNotFoundError:
        raise psutil.NoSuchProcess(pid or os.getpid()) from None
    except (OSError, KeyError):
        return psutil.Process(pid or os.getpid()).memory_info().rss, None, None


def _sampler_main() -> None:
    """Child process: sample RSS of argv pid every interval; answer 'r' (reset) and 'p' (peaks:
    'total anon file', anon/file -1 where the OS does not split RSS)."""
    pid, interval = int(sys.argv[1]), float(sys.argv[2])
    fd = sys.stdin.fileno()
    peak = [0, -1, -1]  # total, anonymous, file-backed; each its own peak over time

    def sample() -> int:
        try:
            total, anon, file = rss_parts(pid)
        except psutil.NoSuchProcess:
            sys.exit(0)
        peak[0] = max(peak[0], total)
        if anon is not None:
            peak[1], peak[2] = max(peak[1], anon), max(peak[2], file)
        return total

    def reply(text: str) -> None:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    sample()
    reply("ready")
    buf = b""
    while True:
        sample()
        if not select.select([fd], [], [], interval)[0]:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:  # parent closed the pipe or died
            return
        buf += chunk
        while b"\n" in buf:
            cmd, buf = buf.split(b"\n", 1)
            if cmd == b"r":
                peak[:] = [0, -1, -1]
                sample()
                reply("ok")
            elif cmd == b"p":
                sample()
                reply(" ".join(map(str, peak)))
            elif cmd == b"q":
                return


class RssSampler:
    """Peak RSS of a process, sampled by a separate process (every ~10 ms by default).

    A separate process keeps sampling while the measured process holds the GIL in long
    native calls, and its own allocations do not count in the measured RSS.
    """

    def __init__(self, pid: int | None = None, interval_s: float = 0.01):
        self.pid = os.getpid() if pid is None else pid
        self.interval_s = interval_s
        self._proc: subprocess.Popen | None = None

    def start(self) -> RssSampler:
        pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [pkg_parent, os.environ.get("PYTHONPATH")])))
        self._proc = subprocess.Popen(
            [sys.executable, "-c", "from llmbench.trackers import _sampler_main; _sampler_main()",
             str(self.pid), str(self.interval_s)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
        )
        if self._proc.stdout.readline().strip() != "ready":
            self.stop()
            raise RuntimeError("RSS sampler process failed to start")
        return self

    def _ask(self, cmd: str) -> str:
        if self._proc is None:
            raise RuntimeError("RssSampler not started")
        self._proc.stdin.write(cmd + "\n")
        self._proc.stdin.flush()
        line = self._proc.stdout.readline().strip()
        if not line:
            raise RuntimeError("RSS sampler process died")
        return line

    def reset(self) -> None:
        """Forget the peak so far; the next peak() covers only what follows."""
        self._ask("r")

    def peak(self) -> int:
        """Peak RSS in bytes since start or the last reset."""
        return self.peaks()[0]

    def peaks(self) -> tuple[int, int | None, int | None]:
        """Peak (total, anonymous, file-backed) RSS in bytes since start or the last reset; the
        parts are None where the OS does not split RSS. Each is its own peak over time, so
        anon + file may exceed total by what moved between the two kinds."""
        total, anon, file = (int(x) for x in self._ask("p").split())
        return total, (None if anon < 0 else anon), (None if file < 0 else file)

    def stop(self) -> None:
        if self._proc is None:
            return
        try:
            self._proc.stdin.write("q\n")
            self._proc.stdin.close()
        except (BrokenPipeError, ValueError):
            pass
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc.stdout.close()
        self._proc = None

    def __enter__(self) -> RssSampler:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def rss_bytes(pid: int | None = None) -> int:
    return psutil.Process(pid or os.getpid()).memory_info().rss


def release_freed_memory() -> None:
    """gc, then glibc's malloc_trim: freed small/medium blocks otherwise stay in RSS."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        pass


class MemoryTracker:
    """Peak RSS (separate sampler process) and, on CUDA, torch's peak allocator counters.

        with MemoryTracker() as mem:
            baseline = mem.baseline()          # before loading the model
            model = load()
            with mem.track():
                model.generate(...)
            result = mem.result(weight_bytes=..., kv_cache_bytes=...)
    """

    def __init__(self, device: str = "cpu", interval_s: float = 0.01):
        self.device = device
        self.sampler = RssSampler(interval_s=interval_s)
        self.baseline_bytes: int | None = None
        self.peak_bytes: int | None = None
        self.part_peaks: tuple[int | None, int | None] = (None, None)  # anonymous, file-backed
        self.cuda_peaks: tuple[int, int] | None = None

    def __enter__(self) -> MemoryTracker:
        self.sampler.start()
        return self

    def __exit__(self, *exc) -> None:
        self.sampler.stop()

    def baseline(self) -> int:
        """RSS now, after returning freed memory to the OS (else a previous model's freed
        heap would still count, and each later baseline would creep up)."""
        release_freed_memory()
        self.baseline_bytes = rss_bytes()
        return self.baseline_bytes

    @contextmanager
    def track(self):
        cuda = self.device.startswith("cuda")
        if cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.sampler.reset()
        yield self
        if cuda:
            torch.cuda.synchronize()
            self.cuda_peaks = (torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved())
        # a last sample in-process catches a peak that is still live at exit
        total, anon, file = self.sampler.peaks()
        now, now_anon, now_file = rss_parts()
        self.peak_bytes = max(total, now)
        self.part_peaks = (None if anon is None else max(anon, now_anon or 0),
                           None if file is None else max(file, now_file or 0))

    def result(self, weight_bytes: int | None = None, kv_cache_bytes: int | None = None):
        """results.Memory of the last track()."""
        alloc, reserved = self.cuda_peaks or (None, None)
        return memory_from_bytes(self.baseline_bytes, self.peak_bytes, weight_bytes, kv_cache_bytes, alloc, reserved,
                                 *self.part_peaks)


# ----------------------------------------------------------------------------- sizes
def kv_dims(config) -> tuple[int, int, int]:
    """(layers, kv_heads, head_dim) from a transformers config: llama/mistral/gemma
    (num_key_value_heads, head_dim), GPT-2 (n_layer, n_head, n_embd), gpt-neo (num_layers,
    num_heads), falcon (multi_query / new_decoder_architecture), as transformers allocates the cache."""
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()

    def first(*names):
        for n in names:
            v = getattr(config, n, None)
            if v is not None:
                return v
        raise ValueError(f"{type(config).__name__}: none of {names} in the config")

    layers = first("num_hidden_layers", "n_layer", "num_layers")
    heads = first("num_attention_heads", "n_head", "num_heads")
    hidden = first("hidden_size", "n_embd", "d_model")
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    if getattr(config, "model_type", "") == "falcon":
        # transformers' Falcon caches K/V broadcast to all heads in the new (40B) architecture
        new_arch = getattr(config, "new_decoder_architecture", False)
        kv_heads = heads if new_arch else (config.num_kv_heads if not config.multi_query else 1)
    else:
        kv_heads = getattr(config, "num_key_value_heads", None) or getattr(config, "n_head_kv", None) or heads
    return int(layers), int(kv_heads), int(head_dim)


def kv_cache_bytes(config, batch_size: int, seq_len: int, bytes_per_elem: int) -> int:
    """K and V for every layer: 2 * layers * kv_heads * head_dim * seq_len * batch * bytes."""
    layers, kv_heads, head_dim = kv_dims(config)
    return 2 * layers * kv_heads * head_dim * seq_len * batch_size * bytes_per_elem


def weight_bytes(model) -> int:
    """Bytes of the parameters (shared/tied tensors counted once)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def streamed_weight_bytes(model) -> int:
    """Bytes one batch-1 decode step must read: all parameters except an input embedding
    table that is not tied to the output head (a lookup reads only one row of it)."""
    total = weight_bytes(model)
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    if emb is None or (head is not None and head.weight.data_ptr() == emb.weight.data_ptr()):
        return total
    return total - emb.weight.numel() * emb.weight.element_size()
