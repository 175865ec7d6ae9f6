"""transformers backend: a prepared HF folder (llmbench.models) at a torch dtype and attention.

The same protocol as llamacpp (backends.Loaded): greedy generate of exactly n_out tokens with a
callback per step, a real batch (one forward per step for all sequences), and log-likelihood
scoring from full logits in float64.
"""
from __future__ import annotations

from pathlib import Path

import torch

from llmbench.errors import UserError
from llmbench.trackers import streamed_weight_bytes, weight_bytes

NAME = "transformers"


def system_info() -> dict[str, str]:
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__}


def load(path: str | Path, *, precision: str = "float32", threads: int | None = None,
         n_ctx: int | None = None, n_seq: int = 1, attention: str | None = None,
         device: str = "cpu", seed: int = 0) -> HFLoaded:
    """Load a prepared folder. n_ctx/n_seq are accepted for the protocol (transformers sizes its
    cache per call). threads: torch's intra-op threads (process-wide), None = unchanged.
    A load that silently falls back (another dtype or attention) raises NotImplementedError."""
    from llmbench import models

    if precision not in models.DTYPES:
        raise UserError(f"backend transformers: precision '{precision}' is not a torch dtype "
                        f"(known: {', '.join(models.DTYPES)})")
    if threads is not None:
        torch.set_num_threads(threads)
    model, tok, _ = models.load(Path(path), dtype=precision, attn_implementation=attention, seed=seed)
    if device != "cpu":
        model = model.to(device)
    return wrap(model, tok, precision=precision, attention=attention)


def wrap(model, tokenizer, *, precision: str | None = None, attention: str | None = None) -> HFLoaded:
    """An already-built model behind the protocol; checks it is what was asked for."""
    loaded_as = (str(model.dtype).removeprefix("torch."), model.config._attn_implementation)
    want = (precision or loaded_as[0], attention or loaded_as[1])
    if loaded_as != want:
        raise NotImplementedError(f"requested {want[0]}/{want[1]}, model loaded as "
                                  f"{loaded_as[0]}/{loaded_as[1]}")
    return HFLoaded(model, tokenizer, precision=loaded_as[0], attention=loaded_as[1])


class _Steps:
    """A generate() streamer that calls on_token once per decode step (the first put() is the prompt)."""

    def __init__(self, on_token) -> None:
        self.on_token, self.prompt_seen = on_token, False

    def put(self, value) -> None:
        if self.prompt_seen:
            self.on_token()
        self.prompt_seen = True

    def end(self) -> None:
        pass


class HFLoaded:
    backend = NAME
    supports_batch = True  # one forward per step for all sequences (left-padded)

    def __init__(self, model, tokenizer, *, precision: str, attention: str) -> None:
        model.eval()
        self.model, self.tokenizer = model, tokenizer
        self.precision, self.attention = precision, attention
        self.device = model.device
        self.weight_bytes = weight_bytes(model)
        self.streamed_bytes = streamed_weight_bytes(model)  # what one batch-1 decode step reads
        self.kv_elem_bytes = torch.empty((), dtype=model.dtype).element_size()
        self.vocab_size = model.get_input_embeddings().num_embeddings
        self.config = model.config
        pad = getattr(tokenizer, "pad_token_id", None) if tokenizer is not None else None
        eos = getattr(tokenizer, "eos_token_id", None) if tokenizer is not None else None
        self.pad_id = pad if pad is not None else (eos if eos is not None else 0)
        # KV-cached positions are capped by the model's position table where it has one
        self.n_ctx = getattr(model.config, "max_position_embeddings", None) or getattr(
            model.config, "n_positions", None)

    def generate(self, ids: list[list[int]], n_out: int, on_token=None) -> list[list[int]]:
        """Greedy, exactly n_out new tokens per sequence (EOS ignored); sequences of different
        lengths are left-padded and masked; on_token() once per step, after its tokens exist."""
        if not ids or n_out < 1:
            raise UserError(f"backend transformers: generate needs >= 1 sequence and n_out >= 1 "
                            f"(got {len(ids)}, {n_out})")
        width = max(len(x) for x in ids)
        if self.n_ctx and width + n_out > self.n_ctx:
            raise UserError(f"backend transformers: {width} input + {n_out} output tokens do not fit "
                            f"the model's {self.n_ctx} positions")
        inp = torch.tensor([[self.pad_id] * (width - len(x)) + list(x) for x in ids], dtype=torch.long)
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], dtype=torch.long)
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=inp.to(self.device), attention_mask=mask.to(self.device), max_new_tokens=n_out,
                min_new_tokens=n_out, do_sample=False, num_beams=1, pad_token_id=self.pad_id,
                use_cache=True, streamer=None if on_token is None else _Steps(on_token))
        return out[:, width:].tolist()

    def loglikelihood(self, context_ids: list[int], continuation_ids: list[int]) -> tuple[float, bool]:
        """log P(continuation | context) from full logits in float64, and whether every
        continuation token is the greedy one. A too long context is cut from the left."""
        if not context_ids or not continuation_ids:
            raise UserError("backend transformers: loglikelihood needs a non-empty context and "
                            "continuation (prepend BOS to an empty context)")
        full = list(context_ids) + list(continuation_ids)
        if self.n_ctx:
            full = full[-(self.n_ctx + 1):]  # the last token is only a target
        n = len(continuation_ids)
        with torch.inference_mode():
            logits = self.model(torch.tensor([full[:-1]], device=self.device)).logits[0, -n:]
        logp = torch.log_softmax(logits.double(), -1)
        target = torch.tensor(full[-n:], device=logp.device)
        total = float(logp.gather(1, target[:, None]).sum())
        return total, bool((logp.argmax(-1) == target).all())

    def loglikelihood_many(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """loglikelihood of several (context, continuation) pairs. Pairs that share a context (the
        choices of a multiple-choice item) run the context once and the continuations as one
        batch on its KV cache; the rest go through one right-padded forward."""
        out: list[tuple[float, bool] | None] = [None] * len(pairs)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, (c, x) in enumerate(pairs):
            fits = not self.n_ctx or len(c) + len(x) <= self.n_ctx
            groups.setdefault(tuple(c) if fits and len(c) > 1 else (-1 - i,), []).append(i)
        rest = []
        for ctx, idx in groups.items():
            if len(idx) == 1:
                rest += idx
                continue
            for i, ans in zip(idx, self._shared_context(list(ctx), [pairs[i][1] for i in idx])):
                out[i] = ans
        for i, ans in zip(rest, self._padded([pairs[i] for i in rest]) if rest else []):
            out[i] = ans
        return out  # type: ignore[return-value]

    def _shared_context(self, ctx: list[int], conts: list[list[int]]) -> list[tuple[float, bool]]:
        width = max(len(x) for x in conts)
        # the last context token goes with the continuations: its logits predict their first token;
        # padding at the end cannot reach earlier positions (causal), so no mask is needed
        inp = torch.tensor([[ctx[-1]] + x + [self.pad_id] * (width - len(x)) for x in conts], device=self.device)
        with torch.inference_mode():
            cache = self.model(torch.tensor([ctx[:-1]], device=self.device), use_cache=True).cache
            cache.batch_repeat_interleave(len(conts))
            logits = self.model(inp, cache=cache, use_cache=True).logits
        out = []
        for row, x in enumerate(conts):
            logp = torch.log_softmax(logits[row, :len(x)].double(), -1)
            target = torch.tensor(x, device=logp.device)
            out.append((float(logp.gather(1, target[:, None]).sum()), bool((logp.argmax(-1) == target).all())))
        return out

    def _padded(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        fulls = [(list(c) + list(x))[-(self.n_ctx + 1):] if self.n_ctx else list(c) + list(x) for c, x in pairs]
        width = max(len(f) for f in fulls) - 1
        inp = torch.tensor([f[:-1] + [self.pad_id] * (width - len(f) + 1) for f in fulls], device=self.device)
        mask = torch.tensor([[1] * (len(f) - 1) + [0] * (width - len(f) + 1) for f in fulls], device=self.device)
        with torch.inference_mode():
            logits = self.model(input_ids=inp, attention_mask=mask).logits
        out = []
        for row, (f, (_, cont)) in enumerate(zip(fulls, pairs)):
            n, end = len(cont), len(f) - 1
            logp = torch.log_softmax(logits[row, end - n:end].double(), -1)
            target = torch.tensor(f[-n:], device=logp.device)
            out.append((float(logp.gather(1, target[:, None]).sum()), bool((logp.argmax(-1) == target).all())))
        return out

    def close(self) -> None:
        self.model = None

    def __enter__(self) -> HFLoaded:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def supports_sdpa(prepared: Path) -> bool:
    """Whether transformers implements sdpa attention for this architecture (a class property,
    checked without loading weights); the sdpa row is still recorded as unsupported."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(prepared)
    cls = AutoModelForCausalLM._model_mapping.get(type(config), None)
    return bool(getattr(cls, "_supports_sdpa", True))
