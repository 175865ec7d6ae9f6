"""infer-<backend>@<model>: batched greedy generation over the prompts on the model's
deployments on one backend (transformers at infer.dtype, llamacpp at each GGUF); random weights
are skipped."""
import time

from llmbench.cli import run_stage
from llmbench.config import Params
from llmbench.infer import encode, generate, throughput_summary
from llmbench.io import manifest, read_jsonl, write_jsonl_atomic
from llmbench.logs import log_event
from llmbench.results import InferResult, InferRun, write_result
from llmbench.tracking import stage_run


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def main(params: Params, name: str, backend: str) -> None:
    from llmbench.backends import catalog

    cfg = params.infer
    prepared = params.paths.prepared(name)
    outputs, metrics_path = params.paths.infer_jsonl(name, backend), params.paths.infer_json(name, backend)
    weights = manifest(prepared)["weights"]
    fixed = {"model": name, "weights": weights, "batch_size": cfg.batch_size, "max_new_tokens": cfg.max_new_tokens}
    with stage_run(f"infer-{backend}", name, params, logged_params=cfg.model_dump(mode="json"),
                   weights=weights) as run:
        # text from random weights is noise; these models are profiled, not run on prompts
        skip = (("skipped", "random weights: outputs would be noise; profiled only") if weights == "random"
                else catalog.unavailable(params, name, backend))
        if skip:
            result = InferResult(**fixed, status=skip[0], reason=skip[1])
            write_jsonl_atomic(outputs, [])
        else:
            if cfg.threads:
                import torch

                torch.set_num_threads(cfg.threads)
            from llmbench.models import load_tokenizer  # torch: not for a skipped model

            prompts = read_jsonl(params.paths.prompts)
            tok, chat = load_tokenizer(prepared), params.models[name].chat
            n_ctx = max(len(encode(tok, p, chat)) for p in prompts) + cfg.max_new_tokens
            runs, records = [], []
            for dep, load in catalog.deployments(params, name, backend, cfg.dtype, n_ctx, n_seq=cfg.batch_size):
                try:
                    loaded = load()
                    t0 = time.perf_counter()
                    recs = generate(loaded, tok, prompts, batch_size=cfg.batch_size,
                                    max_new_tokens=cfg.max_new_tokens, chat=chat)
                    wall = time.perf_counter() - t0
                    loaded.close()
                except Exception as exc:  # noqa: BLE001 - one deployment failing is recorded, others run
                    runs.append(InferRun(deployment=dep, status="failed", reason=_reason(exc)))
                    log_event("infer failed", deployment=dep.key, reason=_reason(exc))
                    continue
                r = InferRun(deployment=dep, status="ok", **throughput_summary(recs, wall))
                runs.append(r)
                records += [{"deployment": dep.key, **x} for x in recs]
                # MLflow names derive from the deployment key
                run.log_metrics({f"{dep.key}.gen_tps": r.gen_tps, f"{dep.key}.ttft_s_p50": r.ttft_s.p50,
                                 f"{dep.key}.e2e_s_p50": r.e2e_s.p50})
            ok = any(r.status == "ok" for r in runs)
            result = InferResult(**fixed, status="ok" if ok else "failed", runs=runs,
                                 reason=None if ok else (runs[0].reason if runs else "no deployment enabled"))
            write_jsonl_atomic(outputs, records)
            run.log_artifact(outputs)
        write_result(metrics_path, result)
        log_event("infer done", status=result.status, runs=len(result.runs))
        run.log_artifact(metrics_path)


if __name__ == "__main__":
    run_stage("infer", main, per_backend=True)
