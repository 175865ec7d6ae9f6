"""Both backends behind one protocol, and the profile engine sweeping deployments of both.

Real transformers and real llama.cpp on the tiny random Llama of test_gguf.build_tiny (tensor
widths multiples of 256). Random weights: nothing here is accuracy.
"""
from __future__ import annotations

import pytest
import torch
import transformers

from llmbench import backends, profiling
from llmbench.backends import Loaded
from llmbench.backends import llamacpp as L
from llmbench.backends import transformers as T
from llmbench.config import Profile
from llmbench.errors import UserError
from llmbench.models import ModelInfo
from llmbench.results import Deployment
from test_gguf import build_tiny

FAST = {"batch_sizes": [1, 2], "input_lens": [12], "output_len": 4, "warmup": 1, "min_iterations": 2,
        "min_duration_s": 0, "bandwidth_mib": 16, "threads": 1, "dtypes": ["float32"], "attentions": ["sdpa"]}
INFO = ModelInfo(name="tiny", source="local", weights="random", n_params=1, weight_bytes=1, dtype="float32",
                 architecture="LlamaForCausalLM", tokenizer="stand-in")


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    return build_tiny(tmp_path_factory.getbasetemp() / "tiny-llama")


@pytest.fixture(scope="module")
def hf(tiny):
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny["hf"], dtype=torch.float32)
    return T.wrap(model, None, precision="float32")


def test_the_registry_gives_the_transformers_module_and_it_satisfies_the_protocol(hf):
    assert backends.get("transformers") is T and isinstance(hf, Loaded)
    assert hf.supports_batch and hf.vocab_size == 512 and hf.weight_bytes > 0


def test_transformers_generates_exactly_n_out_with_one_callback_per_step(hf):
    calls = []
    out = hf.generate([[1, 5, 9, 30]], 6, on_token=lambda: calls.append(1))
    assert len(out) == 1 and len(out[0]) == 6 and len(calls) == 6


def test_transformers_batch_of_unequal_lengths_equals_one_at_a_time(hf):
    seqs = [[1, 5, 9, 30, 31, 32], [1, 7, 8]]
    batched = hf.generate(seqs, 5)
    assert batched == [hf.generate([s], 5)[0] for s in seqs]  # left padding is masked


def test_transformers_loglikelihood_is_the_models_own(hf):
    ctx, cont = [1, 5, 9, 30], [31, 40]
    with torch.no_grad():
        logp = torch.log_softmax(hf.model(torch.tensor([ctx + cont])).logits[0].double(), -1)
    want = float(logp[3, 31] + logp[4, 40])
    got, greedy = hf.loglikelihood(ctx, cont)
    assert got == pytest.approx(want, abs=1e-9)
    assert greedy == bool(logp[3].argmax() == 31 and logp[4].argmax() == 40)
    best = int(logp[3].argmax())
    assert hf.loglikelihood(ctx, [best])[1] is True


def test_transformers_silent_fallback_is_refused(tiny):
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny["hf"], dtype=torch.float32,
                                                              attn_implementation="eager")
    with pytest.raises(NotImplementedError, match="loaded as float32/eager"):
        T.wrap(model, None, precision="float32", attention="sdpa")


def test_transformers_unknown_precision_is_one_line(tiny):
    with pytest.raises(UserError, match="precision 'Q4_1' is not a torch dtype"):
        T.load(tiny["hf"], precision="Q4_1")


@pytest.fixture(scope="module")
def swept(tiny):
    """One profile over transformers fp32 and llama.cpp F32 + Q4_K_M of the same weights."""
    tok = transformers.AutoTokenizer.from_pretrained(tiny["hf"])
    hf_factory = lambda d, a: transformers.AutoModelForCausalLM.from_pretrained(  # noqa: E731
        tiny["hf"], dtype=getattr(torch, d), attn_implementation=a)

    def targets(grid):
        t = profiling.transformers_targets("tiny", hf_factory, tok)(grid)
        for q in ("F32", "Q4_K_M"):
            t.append(profiling.Target(Deployment(model="tiny", backend="llamacpp", precision=q),
                                      lambda n_ctx, n_seq, q=q: L.load(tiny[q], precision=q, threads=1,
                                                                       n_ctx=n_ctx, n_seq=n_seq)))
        t.append(profiling.Target(Deployment(model="tiny", backend="llamacpp", precision="Q8_0"),
                                  lambda n_ctx, n_seq: L.load(tiny["Q8_0"], n_ctx=10_000, n_seq=1)))
        return t

    cfg = Profile(**FAST).resolved()
    config = transformers.AutoConfig.from_pretrained(tiny["hf"])
    return profiling.run_profile(targets, tok, INFO, ["The quick brown fox jumps over the lazy dog."] * 3,
                                 cfg, kv_config=config)


def test_one_sweep_covers_both_backends_with_real_batches(swept):
    got = [(r.deployment.key, r.batch_size, r.status) for r in swept.results]
    assert got[:6] == [("tiny.transformers.float32.sdpa", 1, "ok"), ("tiny.transformers.float32.sdpa", 2, "ok"),
                       ("tiny.llamacpp.F32", 1, "ok"), ("tiny.llamacpp.F32", 2, "ok"),
                       ("tiny.llamacpp.Q4_K_M", 1, "ok"), ("tiny.llamacpp.Q4_K_M", 2, "ok")]
    assert swept.protocol.backends == ["llamacpp", "transformers"]
    assert swept.fingerprint.llama_cpp.startswith("0.3.36 (")
    for r in swept.results[:6]:
        assert r.iterations >= 2 and r.itl_s.n == r.iterations * 3 and r.decode_tps.p50 > 0


def test_a_context_that_does_not_fit_is_recorded_not_raised(swept):
    bad = [r for r in swept.results if r.deployment.precision == "Q8_0"]
    assert [r.status for r in bad] == ["failed", "failed"]  # both shapes recorded
    assert all("UserError: tiny-Q8_0.gguf: context of 10000 tokens" in r.reason for r in bad)


def test_llamacpp_memory_is_split_and_weights_are_the_gguf_tensor_bytes(swept, tiny):
    rows = {(r.deployment.precision, r.batch_size): r for r in swept.results if r.status == "ok"}
    for q in ("F32", "Q4_K_M"):
        m = rows[q, 1].memory
        assert m.weights_mib == pytest.approx(L.inspect_gguf(tiny[q]).tensor_bytes / 2**20, rel=1e-3)
        assert m.rss_file_peak_mib > 0 and m.rss_anon_peak_mib > 0
        assert m.rss_peak_mib >= m.rss_baseline_mib
        assert m.kv_cache_mib > 0 and rows[q, 1].roofline.achieved_gbps > 0
    # the F32 file is ~7x the Q4_K_M one; the kv cache of F32 runs in f32 (2x f16)
    assert rows["F32", 1].memory.weights_mib > 5 * rows["Q4_K_M", 1].memory.weights_mib
    assert rows["F32", 1].memory.kv_cache_mib == pytest.approx(2 * rows["Q4_K_M", 1].memory.kv_cache_mib)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_batched_scoring_with_a_shared_context_equals_one_request_at_a_time(arch, hf):
    # gemma3: sliding-window layers (window 4 < the 9-token context) in the shared KV cache
    if arch == "gemma3":
        cfg = transformers.Gemma3TextConfig(vocab_size=512, hidden_size=64, intermediate_size=128,
                                            num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                            head_dim=32, sliding_window=4, max_position_embeddings=64)
        torch.manual_seed(0)
        loaded = T.wrap(transformers.Gemma3ForCausalLM(cfg).eval(), None, precision="float32")
    else:
        loaded = hf
    ctx = [1, 5, 9, 30, 31, 7, 8, 9, 10]
    pairs = [(ctx, [40]), (ctx, [41, 42, 43]), (ctx, [44, 45]), ([1, 2], [3, 4]), ([1], [6])]
    many = loaded.loglikelihood_many(pairs)
    for (c, x), (ll, greedy) in zip(pairs, many):
        one, one_greedy = loaded.loglikelihood(c, x)
        assert ll == pytest.approx(one, abs=1e-4) and greedy == one_greedy


def test_a_model_without_a_gguf_keeps_the_fingerprint_of_the_enabled_backends(tiny):
    # gpt-neo has no GGUF: only transformers runs, but the report must still compare it with
    # the models that ran on llama.cpp too (same machine, same builds)
    tok = transformers.AutoTokenizer.from_pretrained(tiny["hf"])
    factory = lambda d, a: transformers.AutoModelForCausalLM.from_pretrained(tiny["hf"], dtype=torch.float32)  # noqa: E731
    cfg = Profile(**{**FAST, "batch_sizes": [1], "bandwidth_mib": 0}).resolved()
    out = profiling.run_profile(profiling.transformers_targets("tiny", factory, tok), tok, INFO, ["a b c d"], cfg,
                                runtimes=["transformers", "llamacpp"])
    assert out.fingerprint.llama_cpp.startswith("0.3.36") and out.protocol.backends == ["transformers"]
    alone = profiling.run_profile(profiling.transformers_targets("tiny", factory, tok), tok, INFO, ["a b c d"], cfg)
    assert alone.fingerprint.llama_cpp is None


def test_a_model_without_sdpa_is_also_measured_with_eager(tmp_path):
    import sys

    from llmbench import models
    from llmbench.config import RandomModel, parse_params

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    from stages.profile import targets_for

    for name, cfg in (("neo", "gpt-neo-125m"), ("gpt2", "tiny-gpt2")):
        models.prepare(name, RandomModel(source="random", config=cfg), tmp_path / name)
    params = parse_params({"roster": ["neo", "gpt2"], "paths": {"models": str(tmp_path)},
                           "models": {"neo": {"source": "random", "config": "gpt-neo-125m"},
                                      "gpt2": {"source": "random", "config": "tiny-gpt2"}},
                           "backends": {"llamacpp": {"enabled": False}}})
    grid = params.profile.resolved()  # cpu-small: sdpa only
    keys = {n: [t.deployment.key for t in targets_for(params, n, "transformers")(grid)] for n in ("neo", "gpt2")}
    assert targets_for(params, "neo", "llamacpp")(grid) == []  # disabled
    assert keys["neo"] == [f"neo.transformers.{d}.{a}" for d in ("float32", "bfloat16") for a in ("sdpa", "eager")]
    assert keys["gpt2"] == [f"gpt2.transformers.{d}.sdpa" for d in ("float32", "bfloat16")]
