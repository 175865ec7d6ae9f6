"""GGUF conversion (vendored llama.cpp converter) and quantization on a tiny random Llama.

Real converter, real llama.cpp. The model's tensor widths (256, 512) are multiples of 256 so
K-quants do not fall back to other types. Weights are random: nothing here is accuracy.
"""
from __future__ import annotations

import functools
import inspect
import io
import resource
import signal
from contextlib import contextmanager
from pathlib import Path

import pytest

from llmbench.backends import gguf as G
from llmbench.backends import llamacpp as L
from llmbench.errors import UserError

VOCAB = 512


def _spm_model() -> bytes:
    """A 512-piece SentencePiece BPE tokenizer trained offline on stdlib docstrings."""
    import argparse
    import collections
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
        vocab_size=VOCAB, model_type="bpe", byte_fallback=True, character_coverage=1.0,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, minloglevel=2)
    return buf.getvalue()


@functools.lru_cache(maxsize=None)
def build_tiny(root: Path) -> dict[str, Path]:
    """HF folder + F32/F16/Q8_0/Q4_K_M GGUFs of one tiny random Llama (built once per session)."""
    import torch
    import transformers

    hf = root / "hf"
    hf.mkdir(parents=True, exist_ok=True)
    (hf / "tokenizer.model").write_bytes(_spm_model())
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
        bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(hf)
    files = {"hf": hf}
    for t in ("f32", "f16"):
        files[t.upper()] = G.convert(hf, root / f"tiny-{t.upper()}.gguf", t)
    for q in ("Q8_0", "Q4_K_M"):
        files[q] = G.quantize(files["F16"], root / f"tiny-{q}.gguf", q, threads=2)
    return files


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict[str, Path]:
    return build_tiny(tmp_path_factory.getbasetemp() / "tiny-llama")


@contextmanager
def file_size_limit(n_bytes: int):
    """A 'full disk' for this process and its children: writes past n_bytes fail (EFBIG/SIGXFSZ)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # in-process writes fail instead of dying
    resource.setrlimit(resource.RLIMIT_FSIZE, (n_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.parametrize("name, bpw", [("F32", 32.0), ("F16", 16.0)])
def test_convert_writes_the_requested_float_type(tiny, name, bpw):
    info = L.inspect_gguf(tiny[name])
    assert info.file_type == name
    assert info.architecture == "llama"
    assert info.bits_per_weight == pytest.approx(bpw, abs=0.05)  # norms stay F32 in an F16 file


@pytest.mark.parametrize("name, weight_types, lo, hi", [
    ("Q8_0", {"Q8_0"}, 8.4, 8.6),
    # Q4_K_M keeps a few tensors (output, attn_v, ffn_down) at Q6_K: 4.5..6.56 bits, ~4.95 here
    ("Q4_K_M", {"Q4_K", "Q6_K"}, 4.5, 5.5),
])
def test_quantize_gives_the_type_without_fallback(tiny, name, weight_types, lo, hi):
    info = L.inspect_gguf(tiny[name])
    assert info.file_type == name
    matrices = {t for t in info.tensor_types if t != "F32"}  # 1-D norms are always F32
    assert matrices == weight_types, info.tensor_types  # q5_0/q8_0 here would mean a K-quant fallback
    assert lo < info.bits_per_weight < hi
    assert info.tensor_bytes < L.inspect_gguf(tiny["F16"]).tensor_bytes


@pytest.mark.parametrize("name", ["Q8_0", "Q4_K_M"])
def test_quantized_model_generates_exactly_n_out(tiny, name):
    calls = []
    with L.load(tiny[name], threads=2, n_ctx=48) as m:
        out = m.generate([[1, 40, 41, 42, 43]], 40, on_token=lambda: calls.append(1))
    assert len(out) == 1 and len(out[0]) == 40 and len(calls) == 40
    assert all(0 <= t < VOCAB for t in out[0])


def test_unknown_quantization_type_is_one_line_and_writes_nothing(tiny, tmp_path):
    with pytest.raises(UserError) as e:
        G.quantize(tiny["F16"], tmp_path / "x.gguf", "Q4_K_X")
    msg = str(e.value)
    assert "'Q4_K_X'" in msg and "Q4_K_M" in msg and "Q8_0" in msg and "\n" not in msg
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("damage", ["truncated", "junk"])
def test_quantize_rejects_a_damaged_source(tiny, tmp_path, damage):
    src = tmp_path / f"{damage}.gguf"
    data = tiny["F16"].read_bytes()
    src.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"not a gguf" * 1000)
    with pytest.raises(UserError) as e:
        G.quantize(src, tmp_path / "out.gguf", "Q8_0")
    assert src.name in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out.gguf").exists()


def test_unsupported_architecture_is_typed_with_the_converters_reason(tmp_path):
    import torch
    import transformers

    cfg = transformers.GPTNeoConfig(vocab_size=VOCAB, hidden_size=256, num_layers=2, num_heads=4,
                                    attention_types=[[["global", "local"], 1]], window_size=16,
                                    max_position_embeddings=64)
    torch.manual_seed(0)
    transformers.GPTNeoForCausalLM(cfg).save_pretrained(tmp_path / "neo")
    with pytest.raises(G.Unsupported) as e:
        G.convert(tmp_path / "neo", tmp_path / "neo.gguf")
    assert "GPTNeoForCausalLM" in e.value.reason and "\n" not in e.value.reason
    assert not (tmp_path / "neo.gguf").exists() and _leftovers(tmp_path) == []


def test_convert_on_a_full_disk_leaves_nothing(tiny, tmp_path):
    out = tmp_path / "full.gguf"
    with file_size_limit(1 << 20), pytest.raises(UserError) as e:  # the F32 file is ~6 MB
        G.convert(tiny["hf"], out, "f32")
    assert "hf" in str(e.value) and "\n" not in str(e.value)
    assert not out.exists() and _leftovers(tmp_path) == []


def test_quantize_on_a_full_disk_leaves_nothing_and_keeps_the_old_file(tiny, tmp_path):
    out = tmp_path / "q.gguf"
    out.write_bytes(b"previous")
    with file_size_limit(200_000), pytest.raises(UserError):  # Q8_0 of this model is ~1.7 MB
        G.quantize(tiny["F16"], out, "Q8_0", threads=2)
    assert out.read_bytes() == b"previous" and _leftovers(tmp_path) == []


def test_convert_rejects_a_folder_without_config(tmp_path):
    with pytest.raises(UserError, match="no config.json"):
        G.convert(tmp_path, tmp_path / "x.gguf")


def _seed_folder(tmp_path: Path, name: str, **shrink) -> Path:
    """A seed-roster config made tiny (random weights) with the GPT-2 tokenizer it ships with."""
    import torch
    import transformers

    from llmbench import models

    cfg = transformers.AutoConfig.for_model(**{**models.bundled_config(name), **shrink})
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path / name)
    models.gpt2_tokenizer().save_pretrained(tmp_path / name)
    return tmp_path / name


def test_gpt2_family_converts_although_transformers_5_drops_n_ctx(tmp_path):
    hf = _seed_folder(tmp_path, "distilgpt2", n_embd=256, n_layer=2, n_head=4)
    assert "n_ctx" not in (hf / "config.json").read_text()  # why convert() patches a view of it
    out = G.convert(hf, tmp_path / "gpt2.gguf", "f16")
    assert L.inspect_gguf(out).architecture == "gpt2"
    assert "n_ctx" not in (hf / "config.json").read_text()  # the source folder is left as it was
    with L.load(out, threads=2, n_ctx=24) as m:
        assert m.vocab_size == 50257 and len(m.generate([[50256, 464, 3139]], 8)[0]) == 8


def test_falcon_rw_is_unsupported_with_the_converters_reason(tmp_path):
    # falcon-rw-1b: sequential attention with post-attention LayerNorm + ALiBi; llama.cpp's
    # falcon graph is the parallel-attention (7b/40b) one, so the converter cannot map its tensors
    hf = _seed_folder(tmp_path, "falcon-rw-1b", hidden_size=256, num_hidden_layers=2,
                      num_attention_heads=4)
    with pytest.raises(G.Unsupported) as e:
        G.convert(hf, tmp_path / "falcon.gguf")
    assert "post_attention_layernorm" in e.value.reason
    assert not (tmp_path / "falcon.gguf").exists()
