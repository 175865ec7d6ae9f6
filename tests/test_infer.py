"""The infer loop: batched greedy generation equals one-at-a-time, records are complete."""
import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config

from llmbench.infer import encode, generate, throughput_summary
from llmbench.results import Deployment, InferResult, InferRun
from llmbench.models import gpt2_tokenizer

PROMPTS = [{"id": f"p{i}", "variant": "plain", "text": t} for i, t in enumerate(
    ["Hello world", "The quick brown fox jumps over the lazy dog", "A", "Tell me about tides and the moon"])]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(GPT2Config(n_layer=2, n_head=2, n_embd=16, vocab_size=50257)).eval()
    tok = gpt2_tokenizer()
    tok.padding_side = "left"
    tok.pad_token = tok.eos_token
    return model, tok


def test_batched_equals_one_at_a_time(tiny):
    model, tok = tiny
    one = generate(model, tok, PROMPTS, batch_size=1, max_new_tokens=6, progress=False)
    batched = generate(model, tok, PROMPTS, batch_size=4, max_new_tokens=6, progress=False)
    assert [r["prompt_id"] for r in batched] == ["p0", "p1", "p2", "p3"]  # input order kept
    assert [r["output"] for r in batched] == [r["output"] for r in one]  # left padding is masked
    for r in batched:
        assert r["n_in"] == len(tok(PROMPTS[int(r["prompt_id"][1:])]["text"]).input_ids)
        assert 1 <= r["n_out"] <= 6 and 0 < r["ttft_s"] <= r["e2e_s"]
    s = throughput_summary(batched, wall_s=2.0)
    assert s["generated_tokens"] == sum(r["n_out"] for r in batched)
    assert s["gen_tps"] == pytest.approx(s["generated_tokens"] / 2.0)
    assert s["ttft_s"]["values"] == [r["ttft_s"] for r in batched] and s["e2e_s"]["n"] == 4
    dep = Deployment(model="m", precision="float32")
    res = InferResult(model="m", weights="pretrained", batch_size=4, max_new_tokens=6, status="ok",
                      runs=[InferRun(deployment=dep, status="ok", **s)])  # the file's shape
    assert res.run(dep).ttft_s.p50 > 0
    assert s["outputs_sha256"] == throughput_summary(one, 1.0)["outputs_sha256"]  # same outputs, same hash


def test_chat_variant_uses_the_template():
    tok = gpt2_tokenizer()
    tok.chat_template = "{% for m in messages %}<|user|>{{ m['content'] }}{% endfor %}<|bot|>"
    chat = encode(tok, {"variant": "chat", "text": "Hi"}, chat=True)
    assert tok.decode(chat) == "<|user|>Hi<|bot|>"
    assert encode(tok, {"variant": "plain", "text": "Hi"}, chat=True) == tok("Hi").input_ids
    assert encode(tok, {"variant": "chat", "text": "Hi"}, chat=False) == tok("Hi").input_ids
