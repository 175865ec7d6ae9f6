"""Shared fixtures. Tests never touch the network: sockets are limited to loopback."""
from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see stages/__init__.py

_LOOPBACK = ("127.", "::1", "localhost")
_real_connect = socket.socket.connect
_real_create = socket.create_connection


def _host(address) -> str:
    return str(address[0]) if isinstance(address, tuple) else str(address)


def _guard(address):
    host = _host(address)
    if socket.AF_UNIX and not isinstance(address, tuple):
        return  # unix sockets (multiprocessing) are local
    if not host.startswith(_LOOPBACK):
        raise OSError(f"network blocked in tests: {host}")


def _connect(self, address):
    _guard(address)
    return _real_connect(self, address)


def _create_connection(address, *args, **kwargs):
    _guard(address)
    return _real_create(address, *args, **kwargs)


socket.socket.connect = _connect
socket.create_connection = _create_connection


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


# -- MLflow stores, healthy and faulty (tests/test_tracking.py, tests/test_scaleout.py) ----------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def mlflow_db(tmp_path_factory) -> Path:
    """An MLflow sqlite store with its tables created (once: ~2-6 s), to copy into a test repo."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-db") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def readonly():
    """make(path): path becomes unwritable, for root too (chattr +i); undone after the test."""
    import shutil
    import stat
    import subprocess

    done: list[tuple[Path, int]] = []

    def make(path: Path) -> Path:
        done.append((path, path.stat().st_mode))
        path.chmod(0o555 if path.is_dir() else 0o444)
        if os.geteuid() == 0:  # root ignores modes: the immutable attribute binds it too
            subprocess.run(["chattr", "+i", str(path)], check=True, capture_output=True)
        return path

    def undo() -> None:
        while done:
            path, mode = done.pop()
            if os.geteuid() == 0 and shutil.which("chattr"):
                subprocess.run(["chattr", "-i", str(path)], capture_output=True)
            path.chmod(stat.S_IMODE(mode))

    make.undo = undo  # type: ignore[attr-defined]
    yield make
    undo()


@pytest.fixture
def silent_server():
    """A TCP server on 127.0.0.1 that accepts connections and never answers: a hung store."""
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(2)
        for conn in held:
            conn.close()
        server.close()


@contextlib.contextmanager
def running_mlflow_server(root: Path, port: int) -> Iterator[str]:
    """A real, lean `mlflow server` on 127.0.0.1:port (sqlite store and proxied artifacts under
    root); yields its url, and stops it (and any child) afterwards."""
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    root.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # else ~11 processes; lean: one, ~0.5 GiB
    log_path = root / "server.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "mlflow"), "server",
             "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
             "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1",
             "--port", str(port), "--workers", "1"],
            cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"mlflow server exited:\n{log_path.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"mlflow server not up:\n{log_path.read_text()[-3000:]}"
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # its own session: the server and any child it forked
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
