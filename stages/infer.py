"""infer@<model>: batched greedy generation over the prompts; random weights are skipped."""
import time

import torch

from llmbench.cli import run_stage
from llmbench.config import Params
from llmbench.infer import generate, throughput_summary
from llmbench.io import read_jsonl, write_jsonl_atomic
from llmbench.logs import log_event
from llmbench.models import load, manifest
from llmbench.results import Deployment, InferResult, write_result
from llmbench.tracking import stage_run


def main(params: Params, name: str) -> None:
    cfg = params.infer
    prepared = params.paths.prepared(name)
    outputs, metrics_path = params.paths.infer_jsonl(name), params.paths.infer_json(name)
    weights = manifest(prepared)["weights"]
    # attention: the model's default implementation (not chosen here)
    fixed = {"model": name, "weights": weights, "batch_size": cfg.batch_size,
             "max_new_tokens": cfg.max_new_tokens,
             "deployment": Deployment(model=name, backend="transformers", precision=cfg.dtype)}
    with stage_run("infer", name, params, logged_params=cfg.model_dump(mode="json"),
                   weights=weights) as run:
        if weights == "random":
            # text from random weights is noise; these models are profiled, not run on prompts
            result = InferResult(**fixed, status="skipped",
                                 reason="random weights: outputs would be noise; profiled only")
            write_jsonl_atomic(outputs, [])
        else:
            if cfg.threads:
                torch.set_num_threads(cfg.threads)
            prompts = read_jsonl(params.paths.prompts)
            model, tok, _ = load(prepared, dtype=cfg.dtype)
            t0 = time.perf_counter()
            records = generate(model, tok, prompts, batch_size=cfg.batch_size,
                               max_new_tokens=cfg.max_new_tokens, chat=params.models[name].chat)
            result = InferResult(**fixed, status="ok",
                                 **throughput_summary(records, time.perf_counter() - t0))
            write_jsonl_atomic(outputs, records)
            key = result.deployment.key  # MLflow names derive from the deployment key
            run.log_metrics({f"{key}.gen_tps": result.gen_tps, f"{key}.ttft_s_p50": result.ttft_s.p50,
                             f"{key}.e2e_s_p50": result.e2e_s.p50})
            run.log_artifact(outputs)
        write_result(metrics_path, result)
        log_event("infer done", status=result.status, gen_tps=result.gen_tps)
        run.log_artifact(metrics_path)


if __name__ == "__main__":
    run_stage("infer", main, per_model=True)
