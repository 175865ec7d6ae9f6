"""Backends: one runtime per module, behind one small protocol.

The profile engine, infer and evaluate see only `Backend` / `Loaded`; which runtime runs is a
deployment axis (`Deployment.backend`). A third runtime is one new module plus one line in
`_MODULES` (and `_REQUIRES` if it needs an optional package).

Modules are imported lazily: importing this package never imports torch or llama_cpp.
"""
from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Protocol, runtime_checkable

from llmbench.errors import UserError

# backend id (no dots: it appears in DVC params keys and `dvc exp show` columns) -> module
_MODULES: dict[str, str] = {
    "transformers": "llmbench.backends.transformers",
    "llamacpp": "llmbench.backends.llamacpp",
}
# backend id -> (import name of the optional runtime, how to install it)
_REQUIRES: dict[str, tuple[str, str]] = {
    "llamacpp": ("llama_cpp", "pip install llama-cpp-python==0.3.36 (builds from source, ~6 min)"),
}

OnToken = Callable[[], None]


@runtime_checkable
class Loaded(Protocol):
    """A model loaded by a backend at one precision, ready to generate and score."""

    backend: str
    precision: str
    supports_batch: bool  # True only for a real multi-sequence batch, never a Python loop
    weight_bytes: int  # bytes of the weights as stored (GGUF: tensor bytes)
    vocab_size: int

    def generate(self, ids: list[list[int]], n_out: int,
                 on_token: OnToken | None = None) -> list[list[int]]:
        """Greedy; exactly n_out new tokens per sequence (EOS ignored); on_token once per step."""
        ...

    def loglikelihood(self, context_ids: list[int],
                      continuation_ids: list[int]) -> tuple[float, bool]:
        """(sum of log P(continuation | context), whether greedy decoding yields the continuation)."""
        ...

    def close(self) -> None: ...


class Backend(Protocol):
    """What a backend module offers (module-level functions)."""

    NAME: str

    def load(self, path: Path, *, precision: str, threads: int | None, n_ctx: int,
             n_seq: int = 1) -> Loaded: ...

    def system_info(self) -> dict[str, str]: ...


def known() -> list[str]:
    return sorted(_MODULES)


def get(name: str) -> Backend:
    """The backend module for `name`; unknown or not installed -> one-line UserError."""
    if name not in _MODULES:
        raise UserError(f"unknown backend '{name}' (known: {', '.join(known())})")
    if name in _REQUIRES:
        package, how = _REQUIRES[name]
        if importlib.util.find_spec(package) is None:
            raise UserError(f"backend '{name}' needs the Python package '{package}', "
                            f"which is not installed: {how}")
    module: ModuleType = importlib.import_module(_MODULES[name])
    return module  # type: ignore[return-value]  # a module satisfies the Protocol structurally
