"""profile@<model>: latency and memory over the shape x dtype x attention grid (llmbench.profiling)."""
from llmbench.cli import run_stage
from llmbench.config import Params
from llmbench.io import read_jsonl
from llmbench.logs import log_event
from llmbench.models import describe, load, load_tokenizer
from llmbench.profiling import fingerprint, run_profile
from llmbench.results import write_result
from llmbench.spec import METRICS, SAMPLED
from llmbench.tracking import stage_run


def main(params: Params, name: str) -> None:
    prepared = params.paths.prepared(name)
    out = params.paths.profile_json(name)
    cfg = params.profile.resolved()
    info = describe(prepared)
    texts = [p["text"] for p in read_jsonl(params.paths.prompts)]

    def factory(dtype: str, attn: str):
        return load(prepared, dtype=dtype, attn_implementation=attn, seed=params.prompts.seed)[0]

    with stage_run("profile", name, params, fingerprint=fingerprint(cfg.device).model_dump(),
                   logged_params=cfg.model_dump(mode="json"), weights=info.weights) as run:
        result = run_profile(factory, load_tokenizer(prepared), info, texts, cfg,
                             progress=lambda msg: log_event(msg))
        write_result(out, result)
        run.log_metrics(profile_metrics(result))
        run.log_artifact(out)
        log_event("profile done", status=result.status, results=len(result.results))


def profile_metrics(result) -> dict[str, float]:
    """MLflow names: <row key>.<metric>_p50 (row key = deployment key + shape, results.row_key)."""
    out = {}
    for r in result.results:
        if r.status == "ok":
            out.update({f"{r.key}.{METRICS[m].field('p50')}": getattr(r, m).p50 for m in SAMPLED})
            out[f"{r.key}.rss_peak_mib"] = r.memory.rss_peak_mib
    return out


if __name__ == "__main__":
    run_stage("profile", main, per_model=True)
