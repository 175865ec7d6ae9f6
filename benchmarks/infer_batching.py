"""Does batching pay? Generated tok/s of the infer stage's loop at batch 8 vs one prompt at a
time, same model, same prompts, same process, interleaved rounds. Goal: >= 3x at batch 8.

    .venv/bin/python benchmarks/infer_batching.py [--prepared data/models/smollm2] [--rounds 2]
(needs `dvc repro prepare@smollm2 generate-prompts` first)
"""
import argparse
import time
from pathlib import Path

import numpy as np

from llmbench.infer import generate
from llmbench.io import read_jsonl
from llmbench.models import load


def tok_per_s(model, tok, prompts, batch_size: int, max_new_tokens: int) -> float:
    t0 = time.perf_counter()
    out = generate(model, tok, prompts, batch_size=batch_size, max_new_tokens=max_new_tokens,
                   progress=False)
    return sum(r["n_out"] for r in out) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prepared", default="data/models/smollm2")
    ap.add_argument("--prompts", default="data/prompts/prompts.jsonl")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])  # infer.dtype
    args = ap.parse_args()
    model, tok, info = load(Path(args.prepared), dtype=args.dtype)
    prompts = read_jsonl(Path(args.prompts))
    generate(model, tok, prompts[:2], batch_size=2, max_new_tokens=4, progress=False)  # warm up
    one, batched = [], []
    for _ in range(args.rounds):  # interleaved, so drift on a shared machine hits both sides
        one.append(tok_per_s(model, tok, prompts, 1, args.max_new_tokens))
        batched.append(tok_per_s(model, tok, prompts, args.batch, args.max_new_tokens))
    print(f"model {info.name} ({info.weights}, {info.n_params:,} params, {args.dtype}), {len(prompts)} prompts, "
          f"max_new_tokens {args.max_new_tokens}, {args.rounds} rounds")
    print(f"one prompt at a time : {np.median(one):8.1f} generated tok/s  {np.round(one, 1).tolist()}")
    print(f"batch {args.batch:<14d} : {np.median(batched):8.1f} generated tok/s  {np.round(batched, 1).tolist()}")
    print(f"ratio batch/one      : {np.median(batched) / np.median(one):8.2f}x  (goal >= 3x)")


if __name__ == "__main__":
    main()
