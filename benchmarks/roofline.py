"""How close does batch-1 decode come to the memory-bandwidth roof? For SmolLM2-135M
(pretrained) and a TinyLlama-1.1B-shape random model (hidden 2048, intermediate 5632, 22 layers,
32 heads, 4 kv heads, vocab 32000), fp32 and bf16: achieved GB/s = weight bytes streamed per
step x decode tok/s, next to the measured copy bandwidth (read + write).

    .venv/bin/python benchmarks/roofline.py [--threads N] [--models smollm2,tinyllama]
"""

from __future__ import annotations

import os

# before torch loads libgomp: spinning OpenMP threads on a shared 2-core box run 10-100x slower
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import time

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from llmbench import models, profiling
from profile_overhead import smollm2_dir  # benchmarks/ is sys.path[0] when run as a script

TINYLLAMA = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                 num_key_value_heads=4, vocab_size=32000, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
TEXTS = ["Explain, step by step, how a bicycle converts the rider's effort into forward motion."]


def smollm2():
    path = smollm2_dir()
    info = models.describe(path)
    return (lambda d, a: models.load(path, dtype=d, attn_implementation=a)[0]), models.load_tokenizer(path), info


def tinyllama():
    config = LlamaConfig(**TINYLLAMA)

    def factory(dtype, attn):
        torch.manual_seed(0)
        return AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype), attn_implementation=attn)

    info = {"name": "tinyllama-1.1b-shape", "source": "random", "weights": "random", "params": 1_100_048_384}
    return factory, models.gpt2_tokenizer(), info  # a stand-in tokenizer: ids are folded into the vocab


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, all cores)")
    ap.add_argument("--models", default="smollm2,tinyllama")
    ap.add_argument("--output-len", type=int, default=16)
    a = ap.parse_args()
    cfg = {"batch_sizes": [1], "attentions": ["sdpa"], "dtypes": ["float32", "bfloat16"], "threads": a.threads,
           "output_len": a.output_len, "large_model_params": None}
    rows = []
    for name in a.models.split(","):
        factory, tok, info = {"smollm2": smollm2, "tinyllama": tinyllama}[name]()
        t0 = time.perf_counter()
        out = profiling.run_profile(factory, tok, info, TEXTS, cfg)  # measures copy bandwidth first
        bw = out["bandwidth"]["copy_gbps"]
        print(f"{name}: {time.perf_counter() - t0:.0f} s; copy bandwidth {bw:.1f} GB/s (256 MiB, best of 5, "
              f"read+write); loadavg {out['protocol']['loadavg_1m']}")
        for r in out["results"]:
            if r["status"] != "ok":
                rows.append(f"{name:10s} {r['dtype']:9s} {r['status']}: {r['reason']}")
                continue
            roof, tps = r["roofline"], r["decode_tps"]["p50"]
            rows.append(f"{name:10s} {r['dtype']:9s} weights {r['memory']['weights_mib'] * 2**20 / 1e9:5.2f} GB  "
                        f"decode {tps:6.2f} tok/s (cv {r['decode_tps']['cv']:.3f}, it {r['iterations']})  "
                        f"achieved {roof['achieved_gbps']:6.2f} GB/s / copy {bw:5.1f} GB/s = ratio {roof['ratio']:.3f}")
    print(f"torch threads {a.threads or torch.get_num_threads()}, OMP_WAIT_POLICY {os.environ['OMP_WAIT_POLICY']}")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
