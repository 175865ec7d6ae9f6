"""Batched greedy generation over the prompts on any backend, with per-request ttft/e2e from
step timestamps (the backend's on_token callback, the profile engine's clock)."""
from __future__ import annotations

from tqdm import tqdm

from llmbench.io import sha256_text
from llmbench.metrics import describe_samples
from llmbench.trackers import TokenTimer


def encode(tok, prompt: dict, chat: bool) -> list[int]:
    """Token ids of one prompt: through the chat template for chat variants when the model has
    one (the template writes its own BOS), else plain text with the tokenizer's special tokens
    (Gemma, for one, degenerates without its BOS)."""
    if chat and prompt["variant"] == "chat" and getattr(tok, "chat_template", None):
        text = tok.apply_chat_template([{"role": "user", "content": prompt["text"]}],
                                       tokenize=False, add_generation_prompt=True)
        return tok(text, add_special_tokens=False).input_ids
    return tok(prompt["text"]).input_ids


def generate(loaded, tok, prompts: list[dict], *, batch_size: int, max_new_tokens: int,
             chat: bool = True, progress: bool = True, device: str = "cpu") -> list[dict]:
    """Greedy generation in batches on any backend (backends.Loaded; prompts grouped by length so
    a batch wastes little on padding). The backend generates exactly max_new_tokens; a request's
    output ends at its first EOS (which counts), as an early-stopping server would return it.
    Returns one record per prompt, in the input order."""
    if not hasattr(loaded, "generate") or not hasattr(loaded, "supports_batch"):
        from llmbench.backends import transformers as hf  # a bare torch model

        loaded = hf.wrap(loaded, tok)
    ids = [encode(tok, p, chat) for p in prompts]
    lengths = [len(x) for x in ids]
    order = sorted(range(len(prompts)), key=lambda i: lengths[i])
    eos = {tok.eos_token_id, tok.pad_token_id} - {None}
    step = batch_size if loaded.supports_batch else 1
    out: dict[int, dict] = {}
    bar = tqdm(total=len(prompts), desc="infer", unit="prompt", disable=not progress)
    for start in range(0, len(order), step):
        idx = order[start:start + step]
        timer = TokenTimer(device)  # per-step timestamps, seconds since start()
        timer.start()
        gen = loaded.generate([ids[i] for i in idx], max_new_tokens, on_token=timer.tick)
        stamps = timer.token_times()
        for row, i in enumerate(idx):
            gen_ids = gen[row]
            n_out = next((k + 1 for k, t in enumerate(gen_ids) if t in eos), len(gen_ids))  # eos counts
            text = tok.decode(gen_ids[:n_out], skip_special_tokens=True)
            out[i] = {"prompt_id": prompts[i]["id"], "output": text, "n_in": lengths[i], "n_out": n_out,
                      "batch": len(idx), "ttft_s": stamps[0],
                      "e2e_s": stamps[min(n_out, len(stamps)) - 1],
                      "sha256": sha256_text(text)}
        bar.update(len(idx))
    bar.close()
    return [out[i] for i in range(len(prompts))]


def throughput_summary(records: list[dict], wall_s: float) -> dict:
    """The InferRun numbers of one deployment: totals, gen_tps over the wall time, per-request
    ttft_s / e2e_s distributions (seconds), and a hash of the outputs in prompt order."""
    n_out = sum(r["n_out"] for r in records)
    return {"n_prompts": len(records), "generated_tokens": n_out, "wall_s": wall_s,
            "outputs_sha256": sha256_text("\n".join(r["sha256"] for r in records)),
            "gen_tps": n_out / wall_s if wall_s > 0 else None,
            "ttft_s": describe_samples(r["ttft_s"] for r in records),
            "e2e_s": describe_samples(r["e2e_s"] for r in records)}
