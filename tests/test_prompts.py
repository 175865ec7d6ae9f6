from llmbench.models import gpt2_tokenizer
from llmbench.prompts import generate

TOK = gpt2_tokenizer()


def count(text: str) -> int:
    return len(TOK(text).input_ids)


def test_same_seed_same_bytes():
    import json
    a = generate(7, 12, [16, 48, 96], ["plain", "chat"], count)
    b = generate(7, 12, [16, 48, 96], ["plain", "chat"], count)
    assert json.dumps(a) == json.dumps(b)
    assert json.dumps(a) != json.dumps(generate(8, 12, [16, 48, 96], ["plain", "chat"], count))


def test_buckets_and_variants():
    rows = generate(1, 24, [16, 48, 96], ["plain", "chat"], count)
    assert {r["bucket"] for r in rows} == {16, 48, 96}
    assert {r["variant"] for r in rows} == {"plain", "chat"}
    assert len({r["id"] for r in rows}) == 24
    for r in rows:
        assert r["n_tokens"] == count(r["text"])
        # at or just under the target: within 25% (a single sentence can't always be cut finer)
        assert 0.75 * r["bucket"] <= r["n_tokens"] <= r["bucket"], r
