"""The GGUF files of one model (quantize@<model> writes data/gguf/<model>/gguf.json) and the
llamacpp deployments they give.

- gguf-package models run at their shipped type, from the file prepare kept. Other types are made
  from the dequantized weights only with `requantize_shipped: true`, and labelled
  "<type>-from-<shipped type>": re-quantizing a quantized model is not quantizing the original.
- HF weights (hub, local, random) are converted once to F16 with the vendored converter of the
  pinned llama.cpp, then quantized to each listed type. Random weights are materialised first from
  the real config and the seed the transformers backend uses, so both backends run the same model.
- A model the converter cannot handle is `unsupported` with the converter's reason, never a crash.
"""
from __future__ import annotations

import io
import os
import shutil
import tempfile
import time
from pathlib import Path

from llmbench.errors import UserError
from llmbench.results import GgufFile, GgufSet, read_result

FLOAT_TYPES = {"F32": "f32", "F16": "f16", "BF16": "bf16"}  # made by the converter itself
BASE = "F16"  # the converter's output that quantize() starts from
_SPM_PIECES = 512


def default_threads(*choices: int | None) -> int:
    """The first set choice, else every core this process may use."""
    for c in choices:
        if c:
            return c
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def describe_file(path: Path, *, precision: str, type_name: str, origin: str, seconds: float | None = None,
                  root: Path | None = None) -> GgufFile:
    """A GgufFile for a written GGUF: its declared type, tensor bytes and effective bits per weight."""
    from llmbench.backends.llamacpp import inspect_gguf

    info = inspect_gguf(path)
    shown = os.path.relpath(path, root) if root else str(path)
    return GgufFile(status="ok", precision=precision, type_name=type_name, origin=origin, path=shown,
                    file_type=info.file_type, bits_per_weight=round(info.bits_per_weight, 3),
                    tensor_bytes=info.tensor_bytes, file_bytes=path.stat().st_size,
                    tensor_types=info.tensor_types, context_length=info.context_length, seconds=seconds)


def standin_sentencepiece() -> bytes:
    """A small SentencePiece BPE model trained offline on Python stdlib docstrings: a tokenizer
    whose ids fit a Llama vocabulary (the converter pads it to the config's vocab_size). Only for
    random weights, whose text is noise anyway; the profile feeds ids, not text."""
    import argparse
    import collections
    import inspect
    import json
    import pathlib
    import re
    import textwrap
    import typing

    import sentencepiece as spm

    text = "\n".join(inspect.getdoc(m) or "" for m in
                     (collections, json, re, textwrap, argparse, pathlib, typing, inspect))
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([ln for ln in text.splitlines() if ln.strip()]), model_writer=buf,
        vocab_size=_SPM_PIECES, model_type="bpe", byte_fallback=True, character_coverage=1.0,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, minloglevel=2)
    return buf.getvalue()


_LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers")


def _probe(prepared: Path, man: dict, scratch: Path) -> None:
    """Random weights of a 1-layer copy of the config through the converter first: an
    architecture it cannot map fails in seconds, before GBs of weights are made (falcon-rw-1b)."""
    import json

    from llmbench.backends import gguf as G

    config = json.loads((prepared / "config.json").read_text())
    keys = [k for k in _LAYER_KEYS if k in config]
    if not keys:
        return
    small = scratch / "probe"
    small.mkdir()
    for f in prepared.iterdir():
        if f.is_file() and f.name != "config.json":
            shutil.copy(f, small / f.name)
    (small / "config.json").write_text(json.dumps({**config, **{k: 1 for k in keys}}))
    try:
        hf, _ = _hf_source(small, man, scratch / "probe-hf", seed=0)
    except Exception:  # noqa: BLE001 - a config that cannot shrink (gpt-neo's layer list): no probe
        return
    G.convert(hf, scratch / "probe.gguf", "f16")  # Unsupported propagates; the real run is skipped
    shutil.rmtree(scratch / "probe-hf", ignore_errors=True)
    (scratch / "probe.gguf").unlink(missing_ok=True)


PROBE_ABOVE_PARAMS = 300_000_000  # smaller random models convert in seconds: no probe needed


def _worth_probing(prepared: Path) -> bool:
    from llmbench import models

    return models.describe(prepared).n_params > PROBE_ABOVE_PARAMS


def _hf_source(prepared: Path, man: dict, scratch: Path, seed: int,
               save_dtype: str | None = None) -> tuple[Path, str]:
    """(HF folder the converter reads, label of the tokenizer that goes into the GGUF).
    save_dtype "float16": random weights are drawn in fp32 as the transformers backend draws
    them, then saved rounded to fp16, which an F16 GGUF rounds them to anyway."""
    from llmbench import models

    if man["weights"] != "random":
        return prepared, man["tokenizer"]
    model, _, _ = models.load(prepared, dtype="float32", seed=seed)  # the transformers backend's weights
    hf = scratch / "hf"
    if save_dtype == "float16":
        import torch

        model = model.to(torch.float16)
    model.save_pretrained(hf)
    del model
    if str(man["tokenizer"]).startswith("stand-in"):
        # the GPT-2 stand-in's ids (up to 50256) do not fit e.g. TinyLlama's 32000: a small SPM does
        (hf / "tokenizer.model").write_bytes(standin_sentencepiece())
        return hf, (f"stand-in SentencePiece ({_SPM_PIECES} pieces trained on Python docstrings, "
                    "padded to the config's vocab_size)")
    for f in prepared.iterdir():
        if f.name.startswith(("tokenizer", "vocab", "merges", "special_tokens")):
            shutil.copy(f, hf / f.name)
    return hf, man["tokenizer"]


def build_set(name: str, prepared: Path, out_dir: Path, *, quantizations: tuple[str, ...],
              requantize_shipped: bool, seed: int, threads: int | None = None,
              enabled: bool = True, root: Path | None = None) -> GgufSet:
    """Write out_dir/<precision>.gguf for each type and out_dir/gguf.json; returns the set.

    Unknown type -> UserError before anything is written. Disk full or a corrupt source ->
    UserError, out_dir untouched (built in a temporary folder, renamed when complete)."""
    from llmbench import models
    from llmbench.backends import gguf as G

    prepared, out_dir = Path(prepared), Path(out_dir)
    root = Path(root or Path.cwd())
    man = models.manifest(prepared)
    known = G.quant_types()
    bad = [t for t in quantizations if t not in known and t not in FLOAT_TYPES]
    if bad:
        raise UserError(f"models.{name}: backends.llamacpp.quantizations: unknown GGUF type "
                        f"'{bad[0]}' (known: {', '.join(sorted(known))})")
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    files: list[GgufFile] = []
    shipped = man.get("gguf")
    tokenizer = man["tokenizer"]
    try:
        shipped_type = None
        if shipped:
            f = describe_file(prepared / shipped, precision="?", type_name="?", origin="shipped", root=root)
            shipped_type = f.file_type
            files.append(f.model_copy(update={"precision": shipped_type, "type_name": shipped_type}))
        todo = list(quantizations) if enabled and (not shipped or requantize_shipped) else []
        if todo:
            made, tokenizer = _convert_all(prepared, man, tmp, out_dir, todo, shipped_type, seed,
                                           default_threads(threads), root)
            files += made
        result = GgufSet(status=_set_status(files), reason=_set_reason(files, enabled, shipped, todo),
                         model=name, weights=man["weights"], converter=G.CONVERTER_VERSION,
                         tokenizer=tokenizer, files=files)
        (tmp / "gguf.json").write_text(result.model_dump_json(indent=2) + "\n")
        shutil.rmtree(out_dir, ignore_errors=True)
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def _convert_all(prepared, man, tmp, out_dir, todo, shipped_type, seed, threads, root
                 ) -> tuple[list[GgufFile], str]:
    """Convert once to F16, then make every type; (files, tokenizer inside them)."""
    from llmbench.backends import gguf as G

    origin = "requantized" if shipped_type else "converted"
    label = (lambda t: f"{t}-from-{shipped_type}") if shipped_type else (lambda t: t)
    files = []
    with tempfile.TemporaryDirectory(prefix=".convert-", dir=tmp.parent) as scratch:
        t0 = time.perf_counter()
        base = Path(scratch) / f"{BASE}.gguf"
        tok = man["tokenizer"]
        try:
            if man["weights"] == "random" and _worth_probing(prepared):
                _probe(prepared, man, Path(scratch))
            # F16 weights are all a BASE-derived type reads: half the bytes to write and convert
            wide = any(t in ("F32", "BF16") for t in todo)
            hf, tok = _hf_source(prepared, man, Path(scratch), seed, save_dtype=None if wide else "float16")
            G.convert(hf, base, FLOAT_TYPES[BASE])
        except G.Unsupported as exc:
            return [GgufFile(status="unsupported", reason=exc.reason, precision=label(t), type_name=t,
                             origin=origin) for t in todo], tok
        base_s = time.perf_counter() - t0
        for t in todo:
            t1 = time.perf_counter()
            dst = tmp / f"{label(t)}.gguf"
            if t == BASE:
                shutil.copyfile(base, dst)
            elif t in FLOAT_TYPES:
                G.convert(hf, dst, FLOAT_TYPES[t])
            else:
                G.quantize(base, dst, t, threads=threads)
            f = describe_file(dst, precision=label(t), type_name=t, origin=origin,
                              seconds=round(base_s + time.perf_counter() - t1, 2), root=root)
            # the path the file will have once the folder is renamed into place
            files.append(f.model_copy(update={"path": os.path.relpath(out_dir / dst.name, root)}))
    return files, tok


def _set_status(files: list[GgufFile]) -> str:
    if any(f.status == "ok" for f in files):
        return "ok"
    return "unsupported" if any(f.status == "unsupported" for f in files) else "skipped"


def _set_reason(files, enabled, shipped, todo) -> str | None:
    if any(f.status == "ok" for f in files):
        return None
    if files:
        return next(f.reason for f in files if f.reason)
    if not enabled:
        return "backends.llamacpp.enabled is false"
    return "backends.llamacpp.quantizations is empty"


def read_set(path: str | Path) -> GgufSet:
    return read_result(path, GgufSet)


def unavailable(params, name: str, backend: str) -> tuple[str, str] | None:
    """(status, reason) when `backend` has nothing to run for the model, else None: disabled,
    or no usable GGUF (the converter's `unsupported` and its reason, from gguf.json)."""
    if not params.backends.enabled(backend):
        return "skipped", f"backends.{backend}.enabled is false"
    if backend == "llamacpp":
        gs = read_set(params.paths.gguf_json(name))
        if not gs.usable():
            return ("unsupported" if gs.status == "unsupported" else "skipped",
                    gs.reason or "gguf.json lists no usable GGUF file")
    return None


def deployments(params, name: str, backend: str, hf_precision: str, n_ctx: int, n_seq: int = 1):
    """[(Deployment, load() -> backends.Loaded)] of one model on one backend for infer/evaluate:
    transformers at hf_precision (the model's default attention), llamacpp at every usable GGUF.
    n_ctx: tokens per sequence a llama.cpp context needs (capped by the model's training context)."""
    from llmbench.results import Deployment

    prepared = params.paths.prepared(name)
    out = []
    if backend == "transformers" and params.backends.transformers.enabled:
        def hf_load():
            from llmbench.backends import transformers as hf

            return hf.load(prepared, precision=hf_precision, seed=params.prompts.seed)
        out.append((Deployment(model=name, backend="transformers", precision=hf_precision), hf_load))
    cpp = params.backends.llamacpp
    if backend == "llamacpp" and cpp.enabled:
        threads = default_threads(cpp.threads, params.profile.threads)
        for f in read_set(params.paths.gguf_json(name)).usable():
            def cpp_load(f=f):
                from llmbench.backends import llamacpp

                return llamacpp.load(Path(f.path), precision=f.precision, threads=threads,
                                     n_ctx=min(n_ctx, f.context_length or n_ctx), n_seq=n_seq,
                                     flash_attn=cpp.flash_attn, n_gpu_layers=cpp.n_gpu_layers)
            out.append((Deployment(model=name, backend="llamacpp", precision=f.precision), cpp_load))
    return out
