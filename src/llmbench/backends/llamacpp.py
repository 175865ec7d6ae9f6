"""llama.cpp backend (llama-cpp-python 0.3.36): a GGUF file, greedy generation, full-logit scoring.

Runs on the low-level API (model + context + batch) rather than `Llama`, because `Llama`
fixes one sequence per context (no real batch), keeps a prefix cache across calls (a second
identical prompt would skip prefill and fake the TTFT) and copies logits it never needs.
Context size is what the caller's shape needs (n_ctx per sequence x n_seq), never the
model's training context (Gemma-3 would allocate a 32k-token KV cache).
"""
from __future__ import annotations

import os

# OpenMP threads spin-wait by default; under any other load decode drops from 60-80 to 6-10 tok/s
# (DESIGN.md section 7). Must be set before llama_cpp (and its libgomp) is loaded.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import ctypes  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import llama_cpp  # noqa: E402
import numpy as np  # noqa: E402
from llama_cpp import _internals  # noqa: E402  # pinned version; the public Llama lacks n_seq_max
from llama_cpp._logger import set_verbose  # noqa: E402

from llmbench.errors import UserError  # noqa: E402

NAME = "llamacpp"
_MAX_BATCH_TOKENS = 512  # tokens per llama_decode call; longer inputs are split
_backend_ready = False


def _init_backend() -> None:
    global _backend_ready
    if not _backend_ready:
        set_verbose(False)  # llama.cpp's own log lines stay out of the stage output (errors still print)
        llama_cpp.llama_backend_init()
        _backend_ready = True


def system_info() -> dict[str, str]:
    """Build identity for the env stage: a different build or CPU flags must not reuse timings."""
    _init_backend()
    return {"llama_cpp_python": llama_cpp.__version__,
            "system_info": llama_cpp.llama_print_system_info().decode().strip()}


# ---------------------------------------------------------------- GGUF inspection (prepare/report)
@dataclass(frozen=True)
class GgufInfo:
    path: str
    architecture: str
    file_type: str  # the name llama.cpp gives the file's type: F32, F16, Q8_0, Q4_K_M, ...
    tensor_bytes: int
    n_elements: int
    tensor_types: dict[str, int]  # ggml type of each tensor -> count (shows K-quant fallbacks)
    context_length: int | None

    @property
    def bits_per_weight(self) -> float:
        """Effective bits per weight over all tensors: what the file really costs, whatever its name."""
        return self.tensor_bytes * 8 / self.n_elements


def inspect_gguf(path: str | Path) -> GgufInfo:
    """Type name, tensor bytes and effective BPW of a GGUF (its header only: gguf_header)."""
    import gguf  # the registry's gguf-py, a dependency of the pipeline, not of llama_cpp

    from llmbench.backends import gguf_header

    path = Path(path)
    if not path.is_file():
        raise UserError(f"GGUF file not found: {path}")
    try:
        meta, tensors = gguf_header.read(path)
        kinds = [gguf.GGMLQuantizationType(t.ggml_type) for t in tensors]
    except Exception as e:  # noqa: BLE001  # ValueError/struct.error/... on junk
        raise UserError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from None
    sizes = []
    for t, kind in zip(tensors, kinds):
        block, type_size = gguf.GGML_QUANT_SIZES[kind]
        sizes.append(t.n_elements // block * type_size)
    end = max((t.data_offset + n for t, n in zip(tensors, sizes)), default=0)
    if not tensors or end > path.stat().st_size:
        raise UserError(f"{path}: GGUF is truncated or has no tensors "
                        f"({path.stat().st_size} bytes, tensor data needs {end})")
    ftype = meta.get("general.file_type")
    try:
        type_name = gguf.LlamaFileType(ftype).name.removeprefix("MOSTLY_").removeprefix("ALL_")
    except ValueError:
        type_name = f"unknown({ftype})"
    arch = str(meta.get("general.architecture") or "unknown")
    counts: dict[str, int] = {}
    for kind in kinds:
        counts[kind.name] = counts.get(kind.name, 0) + 1
    ctx = meta.get(f"{arch}.context_length")
    return GgufInfo(path=str(path), architecture=arch, file_type=type_name, tensor_bytes=int(sum(sizes)),
                    n_elements=int(sum(t.n_elements for t in tensors)),
                    tensor_types=dict(sorted(counts.items())),
                    context_length=int(ctx) if ctx is not None else None)


# ---------------------------------------------------------------- loading
def load(path: str | Path, *, precision: str | None = None, threads: int | None = None,
         n_ctx: int, n_seq: int = 1, flash_attn: bool | None = None,
         n_gpu_layers: int | None = None) -> LlamaLoaded:
    """Load a GGUF for sequences of up to n_ctx tokens (n_in + n_out), up to n_seq at once.

    flash_attn None = llama.cpp's own default (auto); an F32 file always runs without it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"GGUF file not found: {path}")
    if n_ctx < 2 or n_seq < 1:
        raise UserError(f"{path.name}: n_ctx must be >= 2 and n_seq >= 1 (got {n_ctx}, {n_seq})")
    _init_backend()
    mparams = llama_cpp.llama_model_default_params()
    if n_gpu_layers is not None:  # only a GPU build (CMAKE_ARGS=-DGGML_CUDA=on) has layers to offload
        mparams.n_gpu_layers = -1 if n_gpu_layers < 0 else n_gpu_layers
    try:
        model = _internals.LlamaModel(path_model=str(path), params=mparams, verbose=False)
    except ValueError:
        raise UserError(f"{path}: llama.cpp could not load this GGUF (corrupt, truncated, "
                        "or an architecture this llama.cpp does not know)") from None
    n_train = llama_cpp.llama_model_n_ctx_train(model.model)
    if n_ctx > n_train:
        model.close()
        raise UserError(f"{path.name}: context of {n_ctx} tokens (n_in + n_out) does not fit the "
                        f"model's training context of {n_train}")
    threads = threads or os.cpu_count() or 1
    cparams = llama_cpp.llama_context_default_params()
    cparams.n_ctx = n_ctx * n_seq
    cparams.n_batch = cparams.n_ubatch = min(cparams.n_ctx, _MAX_BATCH_TOKENS)
    cparams.n_seq_max = n_seq
    cparams.kv_unified = True  # one KV pool shared by the sequences: n_ctx * n_seq cells in all
    cparams.n_threads = cparams.n_threads_batch = threads
    cparams.no_perf = True
    if flash_attn is not None:
        cparams.flash_attn_type = (llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn
                                   else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED)
    if (precision or "").upper() == "F32":
        # f32 weights are chosen for exactness (the transformers agreement check); an f16 KV cache
        # or flash attention (f16 internally on CPU) adds up to ~1e-3 of error per request
        cparams.type_k = cparams.type_v = llama_cpp.GGML_TYPE_F32
        cparams.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
    try:
        ctx = _internals.LlamaContext(model=model, params=cparams, verbose=False)
    except ValueError:
        model.close()
        raise UserError(f"{path.name}: llama.cpp could not create a context of {n_ctx} x {n_seq} "
                        "tokens (out of memory?)") from None
    return LlamaLoaded(path, model, ctx, precision=precision, n_ctx=n_ctx, n_seq=n_seq,
                       threads=threads)


class LlamaLoaded:
    """A loaded GGUF. Not thread-safe; one call at a time."""

    backend = NAME
    supports_batch = True  # several sequences in one llama_batch per step (seq_id per token)

    def __init__(self, path: Path, model, ctx, *, precision: str | None, n_ctx: int, n_seq: int,
                 threads: int) -> None:
        self.path, self._model, self._ctx = path, model, ctx
        self.n_ctx, self.n_seq, self.threads = n_ctx, n_seq, threads
        self.weight_bytes = int(llama_cpp.llama_model_size(model.model))  # tensor bytes
        self.n_params = int(llama_cpp.llama_model_n_params(model.model))
        self.vocab_size = int(llama_cpp.llama_vocab_n_tokens(model.vocab))
        self.precision = precision or _file_type_name(model)
        self.streamed_bytes = self.weight_bytes  # what one batch-1 decode step reads (engine roofline)
        self.kv_elem_bytes = 4 if (precision or "").upper() == "F32" else 2  # f16 KV cache by default
        self._batch = _internals.LlamaBatch(n_tokens=min(n_ctx * n_seq, _MAX_BATCH_TOKENS),
                                            embd=0, n_seq_max=n_seq, verbose=False)
        # tokens held in sequence 0's KV cache by loglikelihood; None: unknown (after generate)
        self._kv: list[int] | None = []

    # -------------------------------------------------------------- text helpers (infer stage)
    def tokenize(self, text: str, add_bos: bool = True) -> list[int]:
        return self._model.tokenize(text.encode(), add_bos, False)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self._model.detokenize(list(ids)).decode("utf-8", errors="replace")

    @property
    def eos_id(self) -> int:
        return int(self._model.token_eos())

    # -------------------------------------------------------------- core
    def _decode(self, items: list[tuple[int, int, int, bool]],
                on_logits: Callable[[int, np.ndarray], None]) -> None:
        """Decode (token, pos, seq, want_logits) items in chunks; on_logits(item index, logits row).

        The logits row is a view into llama.cpp's buffer, valid only inside the callback."""
        b = self._batch.batch
        for start in range(0, len(items), _MAX_BATCH_TOKENS):
            chunk = items[start:start + _MAX_BATCH_TOKENS]
            for j, (tok, pos, seq, want) in enumerate(chunk):
                b.token[j], b.pos[j], b.n_seq_id[j], b.logits[j] = tok, pos, 1, want
                b.seq_id[j][0] = seq
            b.n_tokens = len(chunk)
            rc = llama_cpp.llama_decode(self._ctx.ctx, b)
            if rc != 0:
                raise RuntimeError(f"{self.path.name}: llama_decode returned {rc}")
            for j, (_, _, _, want) in enumerate(chunk):
                if want:
                    ptr = llama_cpp.llama_get_logits_ith(self._ctx.ctx, j)
                    on_logits(start + j, np.ctypeslib.as_array(ptr, shape=(self.vocab_size,)))

    def _clear(self) -> None:
        self._ctx.kv_cache_clear()
        self._kv = []

    def generate(self, ids: list[list[int]], n_out: int,
                 on_token: Callable[[], None] | None = None) -> list[list[int]]:
        """Greedy, exactly n_out new tokens per sequence (EOS ignored), all sequences stepped
        together in one batch; on_token() once per step, right after that step's tokens exist."""
        if not ids or len(ids) > self.n_seq:
            raise UserError(f"{self.path.name}: batch of {len(ids)} sequences, loaded for "
                            f"1..{self.n_seq} (n_seq)")
        if n_out < 1:
            raise UserError(f"{self.path.name}: n_out must be >= 1 (got {n_out})")
        for seq in ids:
            if not seq or len(seq) + n_out > self.n_ctx:
                raise UserError(f"{self.path.name}: {len(seq)} input + {n_out} output tokens do not "
                                f"fit the loaded context of {self.n_ctx} per sequence")
        self._clear()
        out: list[list[int]] = [[] for _ in ids]
        nxt = [0] * len(ids)
        owner: list[int] = []  # item index -> sequence, for the items that want logits

        def pick(i: int, logits: np.ndarray) -> None:
            nxt[owner[i]] = int(logits.argmax())

        items = []
        for s, seq in enumerate(ids):  # prefill: every prompt in one batch, logits at its last token
            for p, tok in enumerate(seq):
                last = p == len(seq) - 1
                items.append((tok, p, s, last))
                owner.append(s)
        self._decode(items, pick)
        for step in range(n_out):
            for s in range(len(ids)):
                out[s].append(nxt[s])
            if on_token is not None:
                on_token()
            if step == n_out - 1:
                break  # the last token is never fed back: n_out decode steps would be one too many
            items = [(nxt[s], len(ids[s]) + step, s, True) for s in range(len(ids))]
            owner = list(range(len(ids)))
            self._decode(items, pick)
        self._kv = None  # the cache now holds generated text, not a scoring prefix
        return out

    def loglikelihood(self, context_ids: list[int],
                      continuation_ids: list[int]) -> tuple[float, bool]:
        """log P(continuation | context) summed over tokens, and whether it is the greedy choice.

        Full logits at each continuation position, log-softmax in float64. A context longer than
        n_ctx is cut from the left (as lm-eval's HF model does). The KV cache of the longest common
        prefix with the previous request is kept: multiple-choice items share their context."""
        if not context_ids or not continuation_ids:
            raise UserError(f"{self.path.name}: loglikelihood needs a non-empty context and "
                            "continuation (prepend BOS to an empty context)")
        if len(continuation_ids) >= self.n_ctx:
            raise UserError(f"{self.path.name}: continuation of {len(continuation_ids)} tokens does "
                            f"not fit the loaded context of {self.n_ctx}")
        full = (list(context_ids) + list(continuation_ids))[-self.n_ctx:]
        n_cont = len(continuation_ids)
        first = len(full) - n_cont - 1  # position whose logits predict the first continuation token
        if self._kv is None:
            self._clear()
        keep = 0
        for a, b in zip(self._kv, full[:first]):
            if a != b:
                break
            keep += 1
        if keep < len(self._kv):
            self._ctx.kv_cache_seq_rm(0, keep, -1)
        feed = full[keep:-1]  # the last token's logits are not needed
        items = [(tok, keep + i, 0, keep + i >= first) for i, tok in enumerate(feed)]
        total, greedy = 0.0, True
        targets = full[first + 1:]
        seen = 0

        def score(_: int, logits: np.ndarray) -> None:
            nonlocal total, greedy, seen
            row = logits.astype(np.float64)
            top = row.max()
            lse = top + np.log(np.exp(row - top).sum())
            target = targets[seen]
            total += float(row[target] - lse)
            greedy = greedy and int(row.argmax()) == target
            seen += 1

        self._kv = None  # unknown until this decode succeeds
        self._decode(items, score)
        self._kv = full[:-1]
        return total, greedy

    def close(self) -> None:
        for part in (self._batch, self._ctx, self._model):
            part.close()

    def __enter__(self) -> LlamaLoaded:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _file_type_name(model) -> str:
    buf = ctypes.create_string_buffer(256)
    llama_cpp.llama_model_meta_val_str(model.model, b"general.file_type", buf, len(buf))
    try:
        import gguf
        return gguf.LlamaFileType(int(buf.value or b"-1")).name.removeprefix("MOSTLY_").removeprefix("ALL_")
    except (ValueError, ImportError):
        return "unknown"
