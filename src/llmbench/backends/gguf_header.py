"""The metadata and tensor table of a GGUF file, read without its vocabulary.

gguf-py's GGUFReader builds a numpy view of every array element: 3.5 s for a 50k-token vocab,
16 s for Gemma-3's 262k, and quantize@ reads each file more than once. This reads the same
header (GGUF v2/v3 layout, as gguf-py's reader) but skips arrays it is not asked for, in
milliseconds; tests/test_llamacpp.py checks it against GGUFReader on real files."""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

# GGUF value type -> struct format of one scalar (8 STRING and 9 ARRAY are variable-sized)
_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: tuple[int, ...]
    ggml_type: int
    data_offset: int  # from the start of the file

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


class _Cursor:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, fmt: str):
        (value,) = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = self.take("Q")
        raw = self.data[self.pos:self.pos + n]
        if len(raw) != n:
            raise ValueError("string runs past the end of the file")
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def value(self, vtype: int, keep: bool):
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            etype, count = self.take("I"), self.take("Q")
            if etype in _SCALAR and not keep:  # fixed-size elements: jump over them
                self.pos += count * struct.calcsize(_SCALAR[etype])
                return None
            items = [self.value(etype, keep) for _ in range(count)]
            return items if keep else None
        if vtype not in _SCALAR:
            raise ValueError(f"unknown GGUF value type {vtype}")
        return self.take(_SCALAR[vtype])


def read(path: str | Path) -> tuple[dict[str, object], list[Tensor]]:
    """(scalar and string metadata, tensors); arrays (the vocabulary) are skipped. Raises
    ValueError or struct.error on a file that is not GGUF or ends inside its header."""
    import mmap

    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
        cur = _Cursor(data)
        if cur.take("4s") != b"GGUF":
            raise ValueError("no GGUF magic")
        version = cur.take("I")
        if version not in (2, 3):
            raise ValueError(f"GGUF version {version} (known: 2, 3)")
        n_tensors, n_kv = cur.take("Q"), cur.take("Q")
        meta: dict[str, object] = {}
        for _ in range(n_kv):
            key, vtype = cur.string(), cur.take("I")
            value = cur.value(vtype, keep=False)
            if vtype != _ARRAY:
                meta[key] = value
        infos = []
        for _ in range(n_tensors):
            name, n_dims = cur.string(), cur.take("I")
            shape = tuple(cur.take("Q") for _ in range(n_dims))
            infos.append((name, shape, cur.take("I"), cur.take("Q")))
        align = int(meta.get("general.alignment", 32))
        start = (cur.pos + align - 1) // align * align
        return meta, [Tensor(n, s, t, start + off) for n, s, t, off in infos]
