"""infer@<model>: batched greedy generation over the prompts; random weights are skipped."""
import time
from pathlib import Path

import torch

from llmbench.cli import run_stage
from llmbench.config import Params
from llmbench.infer import generate, summarize
from llmbench.io import read_jsonl, write_json_atomic, write_jsonl_atomic
from llmbench.logs import log_event
from llmbench.models import load, manifest
from llmbench.tracking import stage_run


def main(params: Params, name: str) -> None:
    cfg = params.infer
    prepared = Path(params.paths.models) / name
    outputs = Path(params.paths.outputs) / "infer" / f"{name}.jsonl"
    metrics_path = Path(params.paths.metrics) / "infer" / f"{name}.json"
    weights = manifest(prepared)["weights"]
    record = {"model": name, "weights": weights, "batch_size": cfg.batch_size,
              "max_new_tokens": cfg.max_new_tokens, "dtype": cfg.dtype}
    with stage_run("infer", name, params, logged_params=cfg.model_dump(mode="json"),
                   weights=weights) as run:
        if weights == "random":
            # text from random weights is noise; these models are profiled, not run on prompts
            record.update(status="skipped", reason="random weights: outputs would be noise; profiled only")
            write_jsonl_atomic(outputs, [])
        else:
            if cfg.threads:
                torch.set_num_threads(cfg.threads)
            prompts = read_jsonl(Path(params.paths.prompts))
            model, tok, info = load(prepared, dtype=cfg.dtype)
            t0 = time.perf_counter()
            results = generate(model, tok, prompts, batch_size=cfg.batch_size,
                               max_new_tokens=cfg.max_new_tokens, chat=params.models[name].chat)
            record.update(status="ok", reason=None, **summarize(results, time.perf_counter() - t0))
            write_jsonl_atomic(outputs, results)
            run.log_metrics({k: v for k, v in record.items() if isinstance(v, (int, float))})
            run.log_artifact(outputs)
        write_json_atomic(metrics_path, record)
        log_event("infer done", status=record["status"], gen_tps=record.get("gen_tps"))
        run.log_artifact(metrics_path)


if __name__ == "__main__":
    run_stage("infer", main, per_model=True)
