"""serve@<endpoint>: an OpenAI-compatible endpoint under load (llmbench.serving.stage), one MLflow
run per endpoint, the result in metrics/serve/<endpoint>.json (raw per-request samples kept)."""
import sys

from llmbench.cli import run_stage
from llmbench.config import Params
from llmbench.errors import UserError
from llmbench.logs import log_event, setup_logging
from llmbench.results import write_result
from llmbench.serving.results import ServeResult
from llmbench.serving.stage import deployment, measure, mlflow_metrics
from llmbench.tracking import repo_root, stage_run


def endpoint_arg(params: Params, argv: list[str]) -> str:
    if len(argv) != 1:
        raise UserError("usage: python -m stages.serve <endpoint name>")
    name = argv[0]
    if name not in params.endpoints:
        raise UserError(f"params.yaml: endpoints.{name}: not defined (defined: "
                        f"{', '.join(params.endpoints) or 'none'})")
    return name


def main(params: Params, argv: list[str] | None = None) -> None:
    name = endpoint_arg(params, sys.argv[1:] if argv is None else argv)
    logs = repo_root() / params.paths.logs
    setup_logging("serve", name, logs)  # logs/serve@<endpoint>.jsonl, as per-model stages do
    ep = params.endpoints[name]
    # the key's variable NAME is logged, never its value (read per request from the environment)
    logged = {"endpoint": ep.model_dump(mode="json"), "serve": params.serve.model_dump(mode="json"),
              "slo": params.slo.model_dump(mode="json")}
    # a managed GGUF of a random-init model serves noise: the tag says so, as on local runs
    weights = ("remote" if ep.managed is None else
               "random" if params.models[ep.managed.model].source == "random" else "pretrained")
    with stage_run("serve", name, params, logged_params=logged, weights=weights) as run:
        if ep.managed is not None and ep.managed.model not in params.roster:
            # a roster without the served model (e.g. CI's, or a sweep) has no GGUF to serve: say so
            # in the result rather than fail the run
            out = write_result(params.paths.serve_json(name), ServeResult(
                endpoint=name, target=f"managed:{deployment(ep.managed).key}",
                model=ep.model or ep.managed.model, api=ep.api, revision=ep.revision, status="skipped", slo=params.slo,
                reason=f"managed model '{ep.managed.model}' is not in the roster",
                max_error_rate=params.serve.max_error_rate, max_tokens=params.serve.max_tokens,
                fixed_length=ep.fixed_length))
            log_event("serve skipped", reason="managed model not in the roster")
            run.set_tag("serve.status", "skipped")
            run.log_artifact(out)
            return
        if ep.managed is not None:
            run.set_tag("deployment", deployment(ep.managed).key)
        result = measure(params, name, logs)
        out = write_result(params.paths.serve_json(name), result)
        run.log_metrics(mlflow_metrics(result))
        run.set_tag("serve.status", result.status)
        run.log_artifact(out)
        cap = result.capacity
        log_event("serve done", status=result.status, reason=result.reason,
                  capacity_rps=cap.request_throughput_rps if cap else None,
                  capacity_level=f"{cap.profile} {cap.level:g}" if cap else None)


if __name__ == "__main__":
    run_stage("serve", main)
