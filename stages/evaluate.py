"""evaluate@<model>: live accuracy with lm-evaluation-harness; random weights are skipped."""
from pathlib import Path

from llmbench.cli import run_stage
from llmbench.config import Params
from llmbench.evaluate import evaluate_model, ok_record, skipped_record
from llmbench.io import write_json_atomic, write_jsonl_atomic
from llmbench.logs import log_event
from llmbench.models import load, manifest
from llmbench.tracking import stage_run


def main(params: Params, name: str) -> None:
    cfg = params.evaluate
    prepared = Path(params.paths.models) / name
    metrics_path = Path(params.paths.metrics) / "evaluate" / f"{name}.json"
    samples_path = Path(params.paths.outputs) / "evaluate" / f"{name}.jsonl"
    weights = manifest(prepared)["weights"]
    with stage_run("evaluate", name, params, logged_params=cfg.model_dump(mode="json"),
                   weights=weights) as run:
        if weights == "random":
            record = skipped_record(name, weights, "random weights: accuracy is chance by construction")
            samples = []
        else:
            model, tok, _ = load(prepared, dtype=cfg.dtype)  # one load; lm-eval wraps it
            summary, samples = evaluate_model(model, tok, tasks=list(cfg.tasks), limit=cfg.limit,
                                              num_fewshot=cfg.num_fewshot, batch_size=cfg.batch_size,
                                              include_path=cfg.include_path)
            record = ok_record(name, weights, summary)
            run.log_metrics({"tasks": {t: {k: v for k, v in m.items() if k.startswith("acc")}
                                       for t, m in record["tasks"].items()}})
        write_jsonl_atomic(samples_path, samples)
        write_json_atomic(metrics_path, record)
        run.log_artifact(metrics_path)
        run.log_artifact(samples_path)
        log_event("evaluate done", status=record["status"])


if __name__ == "__main__":
    run_stage("evaluate", main, per_model=True)
