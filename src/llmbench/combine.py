"""One model's per-backend result files (profile-<backend>@<model> writes
metrics/profile/<model>.<backend>.json, and so on) as the one result per model the report reads.

Rows and runs keep the backends' order (config.Backends.ids(): transformers first), so the
headline is the same deployment a single sweep over both backends would have picked. A model is
ok when any backend is; else it has the first failed backend's status and reason (the first
skipped one's when none failed)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, TypeVar

from llmbench.results import EvaluateResult, InferResult, ProfileResult, read_result

R = TypeVar("R", ProfileResult, InferResult, EvaluateResult)


def _status(parts: list) -> dict:
    if any(p.status == "ok" for p in parts):
        return {"status": "ok", "reason": None}
    first = next((p for p in parts if p.status == "failed"), parts[0])
    return {"status": first.status, "reason": first.reason}


def merge(parts: list[R]) -> R:
    """The parts (same model, one per backend, in backend order) as one result."""
    if len(parts) == 1:
        return parts[0]
    base = next((p for p in parts if p.status == "ok"), parts[0])
    update = _status(parts)
    if isinstance(base, ProfileResult):
        fp = base.fingerprint.model_copy(update={"llama_cpp": next(
            (p.fingerprint.llama_cpp for p in parts if p.fingerprint.llama_cpp), None)})
        proto = base.protocol.model_copy(update={
            "backends": [b for p in parts for b in p.protocol.backends],
            "notes": list(dict.fromkeys(n for p in parts for n in p.protocol.notes))})
        update |= {"results": [r for p in parts for r in p.results], "fingerprint": fp, "protocol": proto,
                   "headline": next((p.headline for p in parts if p.headline), None)}
    else:
        update |= {"runs": [r for p in parts for r in p.runs]}
    return base.model_copy(update=update)


def per_model(path_of: Callable[[str, str], Path], roster, backends: list[str], kind: type[R]) -> dict[str, R]:
    """{model: merged result} over the roster's files that exist (a removed model's stale file
    must not reappear in the report)."""
    out = {}
    for m in roster:
        parts = [read_result(path_of(m, b), kind) for b in backends if path_of(m, b).exists()]
        if parts:
            out[m] = merge(parts)
    return out
