"""evaluate@<model>: live accuracy with lm-evaluation-harness; random weights are skipped."""
from llmbench.cli import run_stage
from llmbench.config import Params
from llmbench.evaluate import evaluate_model, ok_record, skipped_record
from llmbench.io import write_jsonl_atomic
from llmbench.logs import log_event
from llmbench.models import load, manifest
from llmbench.results import Deployment, write_result
from llmbench.tracking import stage_run


def main(params: Params, name: str) -> None:
    cfg = params.evaluate
    prepared = params.paths.prepared(name)
    metrics_path, samples_path = params.paths.evaluate_json(name), params.paths.evaluate_jsonl(name)
    weights = manifest(prepared)["weights"]
    # attention: the model's default implementation (not chosen here)
    dep = Deployment(model=name, backend="transformers", precision=cfg.dtype)
    with stage_run("evaluate", name, params, logged_params=cfg.model_dump(mode="json"),
                   weights=weights) as run:
        if weights == "random":
            record = skipped_record(dep, weights, "random weights: accuracy is chance by construction")
            samples = []
        else:
            model, tok, _ = load(prepared, dtype=cfg.dtype)  # one load; lm-eval wraps it
            tasks, samples = evaluate_model(model, tok, tasks=list(cfg.tasks), limit=cfg.limit,
                                            num_fewshot=cfg.num_fewshot, batch_size=cfg.batch_size,
                                            include_path=cfg.include_path)
            record = ok_record(dep, weights, tasks)
            run.log_metrics({f"{dep.key}.{t}.{k}": v for t, s in tasks.items()
                             for k, v in s.model_dump().items() if k.startswith("acc")})
        write_jsonl_atomic(samples_path, samples)
        write_result(metrics_path, record)
        run.log_artifact(metrics_path)
        run.log_artifact(samples_path)
        log_event("evaluate done", status=record.status)


if __name__ == "__main__":
    run_stage("evaluate", main, per_model=True)
