"""The llamacpp backend on a tiny random Llama GGUF made in a fixture (see test_gguf.build_tiny).

Real llama.cpp throughout. References come from transformers fp32 on the same HF weights the F32
GGUF was converted from: same numbers, so greedy tokens must match and log-likelihoods agree
within 1e-3. Random weights: agreement figures here are not accuracy.
"""
from __future__ import annotations

import random
import time

import pytest
import torch
import transformers

from llmbench import backends
from llmbench.backends import llamacpp as L
from llmbench.errors import UserError
from test_gguf import VOCAB, build_tiny


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    return build_tiny(tmp_path_factory.getbasetemp() / "tiny-llama")


@pytest.fixture(scope="module")
def hf(tiny):
    return transformers.AutoModelForCausalLM.from_pretrained(tiny["hf"], dtype=torch.float32).eval()


def _hf_logprobs(hf, ids):
    with torch.no_grad():
        return torch.log_softmax(hf(torch.tensor([ids])).logits[0].double(), -1)


# ---------------------------------------------------------------- registry
def test_registry_names_unknown_backends():
    with pytest.raises(UserError) as e:
        backends.get("onnx")
    assert str(e.value) == "unknown backend 'onnx' (known: llamacpp, transformers)"


def test_registry_names_a_backend_that_is_not_installed(monkeypatch):
    monkeypatch.setitem(backends._MODULES, "fakert", "llmbench.backends.fakert")
    monkeypatch.setitem(backends._REQUIRES, "fakert", ("no_such_runtime_pkg", "pip install fakert"))
    with pytest.raises(UserError) as e:
        backends.get("fakert")
    assert "'fakert'" in str(e.value) and "pip install fakert" in str(e.value)


def test_registry_loads_llamacpp_and_its_build_identity():
    mod = backends.get("llamacpp")
    assert mod is L and mod.NAME == "llamacpp"
    info = L.system_info()
    assert info["llama_cpp_python"] == "0.3.36" and "CPU :" in info["system_info"]


# ---------------------------------------------------------------- generation
def test_generate_gives_n_out_tokens_one_callback_each_and_transformers_greedy(tiny, hf):
    prompt, n_out = [1, 17, 99, 300, 45, 7], 24
    stamps = []
    with L.load(tiny["F32"], precision="F32", threads=2, n_ctx=len(prompt) + n_out) as m:
        assert isinstance(m, backends.Loaded) and m.vocab_size == VOCAB
        assert m.weight_bytes == L.inspect_gguf(tiny["F32"]).tensor_bytes
        out = m.generate([prompt], n_out, on_token=lambda: stamps.append(time.perf_counter()))
        again = m.generate([prompt], n_out)  # a second call starts from a clean KV cache
    ref = hf.generate(torch.tensor([prompt]), max_new_tokens=n_out, min_new_tokens=n_out,
                      do_sample=False)[0, len(prompt):].tolist()
    assert len(out[0]) == n_out and len(stamps) == n_out
    assert stamps == sorted(stamps)
    assert out[0] == ref and again == out


def test_batch_is_real_and_matches_single_sequences(tiny):
    prompts = [[1, 5, 6, 7], [1, 200, 201, 202, 203, 204, 205], [1, 9]]
    with L.load(tiny["F32"], precision="F32", threads=2, n_ctx=20, n_seq=3) as m:
        assert m.supports_batch
        steps = []
        batched = m.generate(prompts, 12, on_token=lambda: steps.append(1))
        single = [m.generate([p], 12)[0] for p in prompts]
    assert len(steps) == 12  # one callback per step for the whole batch
    assert batched == single


# ---------------------------------------------------------------- scoring
def test_loglikelihood_agrees_with_transformers_fp32_within_1e3(tiny, hf):
    rng = random.Random(0)
    requests = []
    for _ in range(4):  # multiple-choice shape: one context, several continuations (KV reuse)
        ctx = [1] + [rng.randrange(3, VOCAB) for _ in range(rng.randrange(4, 40))]
        for _ in range(3):
            requests.append((ctx, [rng.randrange(3, VOCAB) for _ in range(rng.randrange(1, 6))]))
    # and a continuation that is the greedy one, so is_greedy is tested both ways
    ctx = requests[0][0]
    requests.append((ctx, [int(_hf_logprobs(hf, ctx)[-1].argmax())]))
    with L.load(tiny["F32"], precision="F32", threads=2, n_ctx=64) as m:
        m.generate([[1, 2, 3]], 5)  # scoring after generation must not see its KV cache
        got = [m.loglikelihood(c, k) for c, k in requests]
    for (c, k), (lp, greedy) in zip(requests, got):
        ref = _hf_logprobs(hf, c + k)
        rows = ref[len(c) - 1: len(c) - 1 + len(k)]
        assert lp == pytest.approx(sum(rows[i, t].item() for i, t in enumerate(k)), abs=1e-3)
        assert greedy == all(int(rows[i].argmax()) == t for i, t in enumerate(k))
    assert got[-1][1] is True


def test_loglikelihood_cuts_a_long_context_from_the_left(tiny, hf):
    ctx, cont = [1] + list(range(10, 60)), [70, 71]
    with L.load(tiny["F32"], precision="F32", threads=2, n_ctx=16) as m:
        lp, _ = m.loglikelihood(ctx, cont)
    kept = (ctx + cont)[-16:]
    ref = _hf_logprobs(hf, kept)
    assert lp == pytest.approx(ref[13, 70].item() + ref[14, 71].item(), abs=1e-3)


# ---------------------------------------------------------------- bad input
def _one_line_error(fn, *needles):
    with pytest.raises(UserError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg and all(n in msg for n in needles), msg


@pytest.mark.parametrize("damage", ["truncated", "junk"])
def test_damaged_gguf_is_a_one_line_error_naming_the_file(tiny, tmp_path, damage):
    bad = tmp_path / f"{damage}-model.gguf"
    data = tiny["Q8_0"].read_bytes()
    bad.write_bytes(data[: len(data) * 2 // 3] if damage == "truncated" else b"\x00GGUF" * 4096)
    _one_line_error(lambda: L.load(bad, n_ctx=32), bad.name)
    _one_line_error(lambda: L.inspect_gguf(bad), bad.name)


def test_context_beyond_training_length_is_a_one_line_error(tiny):
    _one_line_error(lambda: L.load(tiny["Q8_0"], n_ctx=4096), "tiny-Q8_0.gguf", "4096", "256")


def test_shape_beyond_the_loaded_context_is_a_one_line_error(tiny):
    with L.load(tiny["Q8_0"], threads=2, n_ctx=16) as m:
        _one_line_error(lambda: m.generate([[1] * 10], 8), "tiny-Q8_0.gguf", "16")
        _one_line_error(lambda: m.generate([[1, 2], [1, 2]], 4), "n_seq")
        assert len(m.generate([[1] * 10], 6)[0]) == 6  # exactly fits: 10 + 6 = 16


def test_missing_file_is_a_one_line_error(tmp_path):
    _one_line_error(lambda: L.load(tmp_path / "nope.gguf", n_ctx=8), "nope.gguf")


def test_header_reader_agrees_with_gguf_py(tiny, tmp_path):
    import gguf

    from llmbench.backends import gguf_header

    for key in ("F32", "Q8_0"):
        meta, tensors = gguf_header.read(tiny[key])
        ref = gguf.GGUFReader(tiny[key])
        assert [(t.name, t.ggml_type, t.data_offset, t.n_elements) for t in tensors] == [
            (r.name, int(r.tensor_type), int(r.data_offset), int(r.n_elements)) for r in ref.tensors]
        assert meta["general.architecture"] == "llama"
        assert meta["general.file_type"] == ref.fields["general.file_type"].parts[-1].tolist()[0]
        info = L.inspect_gguf(tiny[key])
        assert info.tensor_bytes == sum(int(r.n_bytes) for r in ref.tensors)
        assert info.file_type == key
    # a header cut inside its tensor table is an error, not a short table
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny["Q8_0"].read_bytes()[:2000])
    with pytest.raises(Exception):
        gguf_header.read(cut)
