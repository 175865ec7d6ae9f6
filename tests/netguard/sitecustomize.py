"""Put this folder on PYTHONPATH and every Python process (dvc, each stage) refuses sockets to
anything but loopback: an environment-level guard that reaches subprocesses, unlike a pytest
plugin. Connecting elsewhere raises at once, as a machine with no network would."""
import socket

_LOOPBACK = ("127.", "::1", "localhost")
_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex
_real_create = socket.create_connection


def _check(address):
    if not isinstance(address, tuple):
        return  # unix sockets are local
    host = str(address[0])
    if not host.startswith(_LOOPBACK):
        raise OSError(101, f"network blocked (llmbench netguard): {host}")


def _connect(self, address):
    _check(address)
    return _real_connect(self, address)


def _connect_ex(self, address):
    _check(address)
    return _real_connect_ex(self, address)


def _create_connection(address, *args, **kwargs):
    _check(address)
    return _real_create(address, *args, **kwargs)


socket.socket.connect = _connect
socket.socket.connect_ex = _connect_ex
socket.create_connection = _create_connection
