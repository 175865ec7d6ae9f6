"""evaluate-<backend>@<model>: live accuracy with lm-evaluation-harness on the model's
deployments on one backend (transformers at evaluate.dtype, llamacpp at each GGUF), one scorer
for all (evaluate.make_lm); random weights are skipped."""
import time

from llmbench.cli import run_stage
from llmbench.config import Params
from llmbench.evaluate import evaluate_model, ok_run, prompt_format, record
from llmbench.io import manifest, write_jsonl_atomic
from llmbench.logs import log_event
from llmbench.results import EvaluateRun, write_result
from llmbench.tracking import stage_run

# tokens per sequence a llama.cpp scoring context holds (capped by the model's own); a longer
# request is cut from the left, as lm-eval's HF model does at its max length
SCORING_CTX = 2048


def main(params: Params, name: str, backend: str) -> None:
    from llmbench.backends import catalog
    from llmbench.errors import UserError

    cfg = params.evaluate
    prepared = params.paths.prepared(name)
    metrics_path = params.paths.evaluate_json(name, backend)
    samples_path = params.paths.evaluate_jsonl(name, backend)
    weights = manifest(prepared)["weights"]
    with stage_run(f"evaluate-{backend}", name, params, logged_params=cfg.model_dump(mode="json"),
                   weights=weights) as run:
        runs, samples = [], []
        if weights == "random":
            result = record(name, weights, [], "random weights: accuracy is chance by construction")
        elif skip := catalog.unavailable(params, name, backend):
            result = record(name, weights, [], skip[1]).model_copy(update={"status": skip[0]})
        else:
            from llmbench.models import load_tokenizer  # torch: not for a skipped model

            tok, chat = load_tokenizer(prepared), params.models[name].chat
            fmt = prompt_format(tok, chat)
            for dep, load in catalog.deployments(params, name, backend, cfg.dtype, SCORING_CTX):
                t0 = time.perf_counter()
                try:
                    loaded = load()
                    tasks, recs = evaluate_model(loaded, tok, tasks=list(cfg.tasks), limit=cfg.limit,
                                                 num_fewshot=cfg.num_fewshot, batch_size=cfg.batch_size,
                                                 include_path=cfg.include_path, chat=chat)
                    loaded.close()
                except UserError:
                    raise  # a bad task name or dataset: the same on every deployment, one line
                except Exception as exc:  # noqa: BLE001 - recorded, the other deployments still run
                    reason = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"[:300]
                    runs.append(EvaluateRun(deployment=dep, status="failed", reason=reason, prompt_format=fmt))
                    log_event("evaluate failed", deployment=dep.key, reason=reason)
                    continue
                runs.append(ok_run(dep, tasks, fmt, round(time.perf_counter() - t0, 2)))
                samples += [{"deployment": dep.key, **s} for s in recs]
                run.log_metrics({f"{dep.key}.{t}.{k}": v for t, s in tasks.items()
                                 for k, v in s.model_dump().items() if k.startswith("acc")})
            result = record(name, weights, runs, None if runs else "no deployment enabled")
        write_jsonl_atomic(samples_path, samples)
        write_result(metrics_path, result)
        run.log_artifact(metrics_path)
        run.log_artifact(samples_path)
        log_event("evaluate done", status=result.status, runs=len(result.runs))


if __name__ == "__main__":
    run_stage("evaluate", main, per_backend=True)
