"""Trackers on tiny random models built here, and a sampler that must see a known allocation."""

import os
import time

import numpy as np
import pytest
import torch
from transformers import (AutoModelForCausalLM, FalconConfig, Gemma3TextConfig, GPT2Config, GPTNeoConfig,
                          LlamaConfig, LogitsProcessor, LogitsProcessorList)

from llmbench.spec import MEMORY, SAMPLED
from llmbench.trackers import (Latency, LatencyTracker, MemoryTracker, RssSampler, kv_cache_bytes, kv_dims,
                               release_freed_memory,
                               rss_bytes, streamed_weight_bytes, weight_bytes)

MIB = 2**20


@pytest.fixture(autouse=True)
def one_thread():
    # with the other core busy, two OpenMP threads on two cores can run 100x slower
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_gpt2(**kw):
    cfg = GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=500, n_positions=128,
                     bos_token_id=0, eos_token_id=0, **kw)
    return AutoModelForCausalLM.from_config(cfg)


def tiny_llama(**kw):
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=500, bos_token_id=0, eos_token_id=0, **kw)
    return AutoModelForCausalLM.from_config(cfg)


def generate(model, ids, n_out, **kw):
    return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_out,
                          min_new_tokens=n_out, do_sample=False, pad_token_id=0, **kw)


def test_latency_from_values_hand_computed():
    lat = Latency.from_values([0.5, 0.6, 0.8, 1.0], batch_size=2, n_in=10)
    assert (lat.n_out, lat.ttft_s, lat.e2e_s) == (4, 0.5, 1.0)
    assert lat.itl_s == pytest.approx([0.1, 0.2, 0.2])
    assert lat.tpot_s == pytest.approx(0.5 / 3)
    assert lat.decode_tps == pytest.approx(2 * 3 / 0.5)
    assert lat.prefill_tps == pytest.approx(2 * 10 / 0.5)
    with pytest.raises(ValueError):
        Latency.from_values([], 1, 1)


def test_latency_tracker_times_every_token_of_generate():
    model, n_in, n_out = tiny_gpt2(), 12, 6
    ids = torch.randint(0, 500, (2, n_in))
    tracker = LatencyTracker()
    for _ in range(2):
        t0 = time.perf_counter()
        with tracker.track(batch_size=2, n_in=n_in) as timer:
            out = generate(model, ids, n_out, streamer=timer)
        wall = time.perf_counter() - t0
        assert out.shape == (2, n_in + n_out)
        lat = tracker.results[-1]
        assert lat.n_out == n_out and len(lat.itl_s) == n_out - 1
        assert 0 < lat.ttft_s < lat.e2e_s <= wall
        assert lat.ttft_s + sum(lat.itl_s) == pytest.approx(lat.e2e_s)
        assert lat.decode_tps == pytest.approx(2 * (n_out - 1) / (lat.e2e_s - lat.ttft_s))
    stats = tracker.stats()
    assert set(stats) == set(SAMPLED)
    assert stats["ttft_s"]["n"] == 2 and stats["itl_s"]["n"] == 2 * (n_out - 1)


class SlowStep(LogitsProcessor):
    """Sleeps before choosing generated token number `k` (0-based)."""

    def __init__(self, n_in, k, seconds):
        self.at, self.seconds = n_in + k, seconds

    def __call__(self, input_ids, scores):
        if input_ids.shape[1] == self.at:
            time.sleep(self.seconds)
        return scores


def test_token_times_are_taken_inside_generation():
    # A delay in one decode step must show up in that one gap, not spread over all of them.
    model, n_in, n_out = tiny_gpt2(), 8, 6
    ids = torch.randint(0, 500, (1, n_in))
    generate(model, ids, n_out)  # warm
    tracker = LatencyTracker()
    with tracker.track(1, n_in) as timer:
        generate(model, ids, n_out, streamer=timer, logits_processor=LogitsProcessorList([SlowStep(n_in, 3, 0.2)]))
    itl = tracker.results[0].itl_s
    assert itl[2] >= 0.2
    assert max(itl[:2] + itl[3:]) < 0.15


def test_rss_sampler_is_a_separate_process_that_sees_a_short_lived_buffer():
    with RssSampler(interval_s=0.01) as sampler:
        assert sampler._proc.pid != os.getpid() and sampler._proc.poll() is None
        time.sleep(0.05)
        sampler.reset()
        base = rss_bytes()
        buf = np.ones(300 * MIB // 8)  # 300 MiB, every page touched
        time.sleep(0.1)
        del buf
        # earlier tests in the process may have raised glibc's mmap threshold: trim, as the engine does
        release_freed_memory()
        assert rss_bytes() - base < 100 * MIB  # gone before the sampler is asked
        assert sampler.peak() - base >= 0.9 * 300 * MIB
        sampler.reset()
        assert sampler.peak() - base < 100 * MIB  # reset forgets the old peak
    assert sampler._proc is None


def test_memory_tracker_reports_the_buffer_in_mib():
    with MemoryTracker() as mem:
        mem.baseline()
        with mem.track():
            buf = np.ones(300 * MIB // 8)
            time.sleep(0.05)
            del buf
        res = mem.result(weight_bytes=3 * MIB, kv_cache_bytes=MIB)
    assert res.rss_peak_mib - res.rss_baseline_mib >= 0.9 * 300
    assert (res.weights_mib, res.kv_cache_mib, res.cuda_max_allocated_mib) == (3.0, 1.0, None)
    assert res.rss_anon_peak_mib >= 300  # a heap buffer is anonymous memory
    assert set(res.model_dump()) == set(MEMORY) == {"rss_baseline_mib", "rss_peak_mib", "rss_anon_peak_mib",
                                                    "rss_file_peak_mib", "weights_mib", "kv_cache_mib",
                                  "cuda_max_allocated_mib", "cuda_max_reserved_mib"}


@pytest.mark.parametrize("cfg, dims", [
    (GPT2Config(n_layer=12, n_head=12, n_embd=768), (12, 12, 64)),
    (GPTNeoConfig(num_layers=12, num_heads=12, hidden_size=768, attention_types=[[["global", "local"], 6]]),
     (12, 12, 64)),
    (LlamaConfig(hidden_size=2048, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4), (22, 4, 64)),
    (FalconConfig(hidden_size=2048, num_hidden_layers=24, num_attention_heads=32, multi_query=False,
                  new_decoder_architecture=False), (24, 32, 64)),
    (FalconConfig(hidden_size=2048, num_hidden_layers=24, num_attention_heads=32, multi_query=True), (24, 1, 64)),
    (FalconConfig(hidden_size=2048, num_hidden_layers=24, num_attention_heads=32, num_kv_heads=8,
                  new_decoder_architecture=True), (24, 32, 64)),
    (Gemma3TextConfig(hidden_size=640, num_hidden_layers=18, num_attention_heads=4, num_key_value_heads=1,
                      head_dim=256), (18, 1, 256)),
])
def test_kv_dims_per_family(cfg, dims):
    assert kv_dims(cfg) == dims


def test_kv_cache_bytes_hand_computed():
    # GPT-2 small, 32 in + 16 out, batch 1, fp32: 2 * 12 layers * 768 * 48 * 4 bytes
    assert kv_cache_bytes(GPT2Config(), 1, 48, 4) == 2 * 12 * 768 * 48 * 4 == 3_538_944


def tiny_falcon(**kw):
    cfg = FalconConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, vocab_size=500,
                       bos_token_id=0, eos_token_id=0, **kw)
    return AutoModelForCausalLM.from_config(cfg)


def tiny_neo():
    cfg = GPTNeoConfig(num_layers=2, num_heads=4, hidden_size=32, vocab_size=500, max_position_embeddings=64,
                       attention_types=[[["global", "local"], 1]], window_size=4, bos_token_id=0, eos_token_id=0)
    return AutoModelForCausalLM.from_config(cfg)


@pytest.mark.parametrize("make", [
    tiny_gpt2, tiny_llama, tiny_neo, lambda: tiny_falcon(multi_query=True),
    lambda: tiny_falcon(new_decoder_architecture=True, num_kv_heads=2),
])
def test_kv_cache_bytes_matches_the_real_cache(make):
    model = make()
    ids = torch.randint(0, 500, (3, 7))
    with torch.inference_mode():
        cache = model(input_ids=ids, use_cache=True).past_key_values
    real = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    assert kv_cache_bytes(model.config, 3, 7, 4) == real


def test_weight_bytes_tied_and_untied():
    tied = tiny_gpt2()
    assert weight_bytes(tied) == 4 * sum(p.numel() for p in tied.parameters())
    assert streamed_weight_bytes(tied) == weight_bytes(tied)  # the table is read whole as the head
    untied = tiny_llama(tie_word_embeddings=False)
    assert streamed_weight_bytes(untied) == weight_bytes(untied) - 500 * 32 * 4
    fp32 = weight_bytes(untied)
    assert weight_bytes(untied.to(torch.bfloat16)) == fp32 // 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_timing_and_peak_memory():
    model = tiny_gpt2().cuda()
    ids = torch.randint(0, 500, (1, 8), device="cuda")
    tracker = LatencyTracker("cuda")
    with MemoryTracker("cuda") as mem:
        mem.baseline()
        with mem.track(), tracker.track(1, 8) as timer:
            generate(model, ids, 5, streamer=timer)
            extra = torch.ones(256 * MIB // 4, device="cuda")
            del extra
        res = mem.result()
    lat = tracker.results[0]
    assert lat.n_out == 5 and 0 < lat.ttft_s < lat.e2e_s
    assert res.cuda_max_allocated_mib >= 256 and res.cuda_max_reserved_mib >= res.cuda_max_allocated_mib


def test_an_mmapped_file_counts_as_file_backed_not_anonymous(tmp_path):
    # what a GGUF on llama.cpp looks like: weights resident through the page cache, not the heap
    import mmap

    path = tmp_path / "weights.bin"
    with open(path, "wb") as f:
        f.truncate(200 * MIB)
    with MemoryTracker() as mem:
        mem.baseline()
        with mem.track(), open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            total = sum(m[i] for i in range(0, len(m), 4096))  # touch every page
            time.sleep(0.05)
        res = mem.result()
    assert total == 0
    assert res.rss_file_peak_mib >= 0.9 * 200
    assert res.rss_peak_mib - res.rss_baseline_mib >= 0.9 * 200  # the budget's memory includes it
    assert res.rss_anon_peak_mib < res.rss_peak_mib - 0.9 * 200  # no heap copy of the file
