"""GGUF sets (quantize@<model>) and scoring through lm-eval on both backends.

Real converter, real llama.cpp, real lm-eval on tiny random models (widths multiples of 256 so
K-quants do not fall back). Random weights: the agreement here is numerical, not accuracy.
"""
from __future__ import annotations

import json
import shutil

import pytest
import torch
import transformers

from llmbench.backends import catalog
from llmbench.backends import llamacpp as L
from llmbench.backends import transformers as T
from llmbench.errors import UserError
from llmbench.evaluate import SMOKE_TASK, evaluate_model
from llmbench.models import MANIFEST
from llmbench.results import GgufSet, read_result
from test_gguf import VOCAB, build_tiny


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    return build_tiny(tmp_path_factory.getbasetemp() / "tiny-llama")


def _prepared(tmp_path, hf, **manifest):
    """A prepared folder (llmbench.models layout) around the tiny HF weights."""
    out = tmp_path / "prepared"
    shutil.copytree(hf, out)
    man = {"name": "tiny", "source": "local", "weights": "pretrained", "tokenizer": "local:test",
           "spec": {}, "gguf": None, **manifest}
    (out / MANIFEST).write_text(json.dumps(man))
    return out


def test_hf_weights_convert_once_and_quantize_to_each_type(tiny, tmp_path):
    prepared = _prepared(tmp_path, tiny["hf"])
    out = tmp_path / "gguf" / "tiny"
    s = catalog.build_set("tiny", prepared, out, quantizations=("Q8_0", "Q4_K_M"), requantize_shipped=False,
                          seed=0, threads=2, root=tmp_path)
    assert s.status == "ok" and [(f.precision, f.origin, f.file_type) for f in s.files] == [
        ("Q8_0", "converted", "Q8_0"), ("Q4_K_M", "converted", "Q4_K_M")]
    q8, q4 = s.files
    assert 8.4 < q8.bits_per_weight < 8.6 and 4.5 < q4.bits_per_weight < 5.5  # no K-quant fallback
    assert q4.tensor_types.keys() == {"F32", "Q4_K", "Q6_K"} and q4.context_length == 256
    assert sorted(p.name for p in out.iterdir()) == ["Q4_K_M.gguf", "Q8_0.gguf", "gguf.json"]  # no F16 left
    assert read_result(out / "gguf.json", GgufSet) == s and s.usable() == s.files
    with L.load(tmp_path / q4.path, n_ctx=16) as m:  # paths are relative to the root
        assert len(m.generate([[1, 5, 6]], 5)[0]) == 5


def test_unknown_type_is_one_line_naming_model_and_type_and_writes_nothing(tiny, tmp_path):
    prepared = _prepared(tmp_path, tiny["hf"])
    with pytest.raises(UserError) as e:
        catalog.build_set("tiny", prepared, tmp_path / "gguf" / "tiny", quantizations=("Q8_0", "Q4_K_X"),
                          requantize_shipped=False, seed=0)
    msg = str(e.value)
    assert msg.startswith("models.tiny: backends.llamacpp.quantizations: unknown GGUF type 'Q4_K_X'")
    assert "\n" not in msg and not (tmp_path / "gguf").exists()


def test_a_shipped_gguf_is_not_requantized_unless_asked_and_then_labelled(tiny, tmp_path):
    prepared = _prepared(tmp_path, tiny["hf"], gguf="shipped.gguf")
    shutil.copy(tiny["Q4_K_M"], prepared / "shipped.gguf")
    s = catalog.build_set("tiny", prepared, tmp_path / "a", quantizations=("Q8_0",), requantize_shipped=False,
                          seed=0, root=tmp_path)
    assert [(f.precision, f.origin) for f in s.files] == [("Q4_K_M", "shipped")]
    assert s.files[0].path == "prepared/shipped.gguf"
    s = catalog.build_set("tiny", prepared, tmp_path / "b", quantizations=("Q8_0",), requantize_shipped=True,
                          seed=0, threads=2, root=tmp_path)
    assert [(f.precision, f.origin) for f in s.files] == [("Q4_K_M", "shipped"), ("Q8_0-from-Q4_K_M", "requantized")]


def test_an_architecture_the_converter_lacks_is_unsupported_with_its_reason(tmp_path):
    cfg = transformers.GPTNeoConfig(vocab_size=VOCAB, hidden_size=256, num_layers=1, num_heads=4,
                                    attention_types=[[["global"], 1]], max_position_embeddings=64)
    torch.manual_seed(0)
    transformers.GPTNeoForCausalLM(cfg).save_pretrained(tmp_path / "neo")
    prepared = _prepared(tmp_path, tmp_path / "neo")
    s = catalog.build_set("neo", prepared, tmp_path / "out", quantizations=("Q8_0", "Q4_K_M"),
                          requantize_shipped=False, seed=0)
    assert s.status == "unsupported" and "GPTNeoForCausalLM" in s.reason and s.usable() == []
    assert [(f.precision, f.status) for f in s.files] == [("Q8_0", "unsupported"), ("Q4_K_M", "unsupported")]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["gguf.json"]


def test_random_llama_with_a_standin_tokenizer_converts(tmp_path):
    # TinyLlama's case: random weights from the config and seed, a GPT-2 stand-in tokenizer whose
    # ids would not fit; the GGUF gets a small SentencePiece padded to the vocab instead
    from llmbench import models

    prepared = tmp_path / "prepared"
    cfg = transformers.LlamaConfig(vocab_size=1024, hidden_size=256, intermediate_size=512, num_hidden_layers=1,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    cfg.save_pretrained(prepared)
    models.gpt2_tokenizer().save_pretrained(prepared)
    (prepared / MANIFEST).write_text(json.dumps({"name": "tl", "source": "random", "weights": "random",
                                                 "tokenizer": "stand-in (gpt2 BPE)", "spec": {}}))
    s = catalog.build_set("tl", prepared, tmp_path / "out", quantizations=("Q4_K_M",), requantize_shipped=False,
                          seed=7, threads=2, root=tmp_path)
    assert s.status == "ok" and s.tokenizer.startswith("stand-in SentencePiece")
    with L.load(tmp_path / s.files[0].path, n_ctx=16) as m:
        assert m.vocab_size == 1024 and len(m.generate([[1, 900, 1000]], 4)[0]) == 4
    # the GGUF holds the transformers backend's weights for that seed: F16 logits agree closely
    s16 = catalog.build_set("tl", prepared, tmp_path / "f16", quantizations=("F32",), requantize_shipped=False,
                            seed=7, root=tmp_path)
    hf = T.load(prepared, precision="float32", seed=7)
    with L.load(tmp_path / s16.files[0].path, precision="F32", n_ctx=16) as m:
        assert m.generate([[1, 900, 1000, 5]], 6) == hf.generate([[1, 900, 1000, 5]], 6)


def test_lm_eval_scores_agree_between_transformers_fp32_and_an_f32_gguf(tiny):
    tok = transformers.AutoTokenizer.from_pretrained(tiny["hf"])
    hf = T.load(_prepared_once(tiny), precision="float32")
    _, ref = evaluate_model(hf, tok, tasks=[SMOKE_TASK], limit=6, num_fewshot=0, batch_size=4)
    with L.load(tiny["F32"], precision="F32", n_ctx=256) as cpp:
        _, got = evaluate_model(cpp, tok, tasks=[SMOKE_TASK], limit=6, num_fewshot=0, batch_size=4)
    assert [r["doc_id"] for r in got] == [r["doc_id"] for r in ref]
    for a, b in zip(got, ref):  # every request (4 choices per item) within 1e-3
        assert a["loglikelihoods"] == pytest.approx(b["loglikelihoods"], abs=1e-3)
        assert a["chosen"] == b["chosen"]


def _prepared_once(tiny):
    out = tiny["hf"].parent / "prepared-for-lm"
    if not out.exists():
        shutil.copytree(tiny["hf"], out)
        (out / MANIFEST).write_text(json.dumps({"name": "tiny", "source": "local", "weights": "pretrained",
                                                "tokenizer": "local", "spec": {}}))
    return out
