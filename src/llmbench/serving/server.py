"""A managed llama-cpp-python server (`python -m llama_cpp.server`) on 127.0.0.1 for one GGUF.

Why this server and not llama.cpp's C++ `llama-server`: it is already built into the venv (no
second build), and with `--interrupt_requests False` it serves one request at a time to the end,
so concurrency shows up honestly as queueing in TTFT (by default it would cut a running stream
short with a normal-looking finish when another request waits).

Always stopped: a context manager with try/finally, SIGTERM turned into SystemExit while it runs
(so finally blocks run; Ctrl-C already raises KeyboardInterrupt), its own process group (the whole
group is killed), and PR_SET_PDEATHSIG so the kernel kills it if the parent dies without cleanup.
"""
from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

import httpx

from llmbench.errors import UserError

_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def n_ctx_for(max_prompt_tokens: int, max_tokens: int, margin: int = 64) -> int:
    """Context sized to the shape (one sequence at a time), rounded up to 256."""
    need = max_prompt_tokens + max_tokens + margin
    return -(-need // 256) * 256


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass  # not Linux: the process group and the finally blocks still stop it


def _tail(path: Path, n: int = 15) -> str:
    try:
        with open(path, errors="replace") as fh:
            return "".join(deque(fh, maxlen=n)).rstrip()
    except OSError:
        return "(no log)"


class ManagedServer:
    """`with ManagedServer(gguf, n_threads=2, n_ctx=512, alias="smollm2.llamacpp.Q4_1",
    log_path=...) as srv: srv.base_url` -> "http://127.0.0.1:<port>/v1"."""

    def __init__(self, gguf: Path | str, *, n_threads: int, n_ctx: int, alias: str,
                 log_path: Path | str, ready_timeout_s: float = 120.0,
                 extra_args: list[str] | None = None, drop_env: list[str] | None = None) -> None:
        self.gguf, self.log_path = Path(gguf), Path(log_path)
        if not self.gguf.is_file():
            raise UserError(f"managed server: GGUF file not found: {self.gguf}")
        self.n_threads, self.n_ctx, self.alias = n_threads, n_ctx, alias
        self.ready_timeout_s, self.extra_args = ready_timeout_s, list(extra_args or [])
        self.drop_env = set(drop_env or [])  # e.g. the endpoint's key variable: the server needs none
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None
        self._old_term = None

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise RuntimeError("server not started")
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "llama_cpp.server", "--model", str(self.gguf),
                "--model_alias", self.alias, "--host", "127.0.0.1", "--port", str(self.port),
                "--n_threads", str(self.n_threads), "--n_threads_batch", str(self.n_threads),
                "--n_ctx", str(self.n_ctx), "--interrupt_requests", "False",
                *self.extra_args]

    def describe(self) -> str:
        from importlib.metadata import version
        return (f"llama-cpp-python {version('llama_cpp_python')} server, one request at a time "
                f"(--interrupt_requests False), n_threads {self.n_threads}, n_ctx {self.n_ctx}")

    def start(self) -> "ManagedServer":
        self.port = free_port()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**{k: v for k, v in os.environ.items() if k not in self.drop_env},
               "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": str(self.n_threads)}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True, preexec_fn=_die_with_parent)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        url = f"{self.base_url}/models"
        with httpx.Client(timeout=2.0) as client:
            while True:
                rc = self.proc.poll()
                if rc is not None:
                    raise UserError(f"managed server for {self.alias} exited with code {rc} before "
                                    f"it was ready; log {self.log_path}, last lines:\n"
                                    f"{_tail(self.log_path)}")
                try:
                    if client.get(url).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass  # not listening yet
                if time.monotonic() > deadline:
                    raise UserError(f"managed server for {self.alias} not ready within "
                                    f"{self.ready_timeout_s:g} s (GET {url}); log {self.log_path}, "
                                    f"last lines:\n{_tail(self.log_path)}")
                time.sleep(0.2)

    def stop(self, grace_s: float = 5.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(proc.pid, sig)  # the whole group: uvicorn may fork workers
            except ProcessLookupError:
                return
            try:
                proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def _on_sigterm(self, signum, frame):  # turn SIGTERM into an exception so finally blocks run
        raise SystemExit(128 + signum)

    def __enter__(self) -> "ManagedServer":
        if threading.current_thread() is threading.main_thread():
            self._old_term = signal.signal(signal.SIGTERM, self._on_sigterm)
        try:
            return self.start()
        except BaseException:
            self._restore()
            raise

    def _restore(self) -> None:
        if self._old_term is not None:
            signal.signal(signal.SIGTERM, self._old_term)
            self._old_term = None

    def __exit__(self, *exc) -> None:
        try:
            self.stop()
        finally:
            self._restore()
