"""Shared fixtures. Tests never touch the network: sockets are limited to loopback."""
from __future__ import annotations

import os
import socket
from pathlib import Path

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
