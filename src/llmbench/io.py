"""Atomic writes (temp file + rename: a crash never leaves a half-written output) and hashing."""
from __future__ import annotations

import glob
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterable

from llmbench.errors import UserError


FILE_MODE = 0o644
MANIFEST = "llmbench_model.json"  # what prepare@<model> wrote into the prepared folder


def manifest(prepared: str | Path) -> dict:
    """A prepared model's manifest (weights kind, tokenizer, source), read without torch: a
    skipping stage (random weights) never pays for importing it."""
    path = Path(prepared) / MANIFEST
    if not path.exists():
        raise UserError(f"{path}: missing; run `dvc repro` so the prepare stage writes it")
    return json.loads(path.read_text())


def _atomic(path: Path, write, binary: bool = False) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        stale.unlink(missing_ok=True)  # left by a writer killed mid-write (kill -9, OOM)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        text = {} if binary else {"encoding": "utf-8", "newline": "\n"}
        with os.fdopen(fd, "wb" if binary else "w", **text) as fh:
            write(fh)
        # mkstemp makes 0600; outputs are read by teammates and CI artifact steps
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    return _atomic(path, lambda fh: fh.write(data), binary=True)


def write_jsonl_atomic(path: Path, rows: Iterable[dict]) -> Path:
    def write(fh):
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return _atomic(path, write)


def read_jsonl(path: Path) -> list[dict]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UserError(f"{path}: not found (has its stage run? try `dvc repro`)") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 at byte {exc.start}; rerun its stage") from None
    rows = []
    for n, line in enumerate(lines, 1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}:{n}: not valid JSON ({exc.msg}); rerun its stage") from None
            if not isinstance(row, dict):
                raise UserError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    return rows


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
