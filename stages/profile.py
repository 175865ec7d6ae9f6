"""profile@<model>: latency and memory over the shape x dtype x attention grid (llmbench.profiling)."""
from pathlib import Path

from llmbench.cli import run_stage
from llmbench.config import Params
from llmbench.io import read_jsonl, write_json_atomic
from llmbench.logs import log_event
from llmbench.models import describe, load, load_tokenizer
from llmbench.profiling import fingerprint, run_profile
from llmbench.tracking import stage_run


def main(params: Params, name: str) -> None:
    prepared = Path(params.paths.models) / name
    out = Path(params.paths.metrics) / "profile" / f"{name}.json"
    cfg = params.profile.model_dump()
    info = describe(prepared)
    texts = [p["text"] for p in read_jsonl(Path(params.paths.prompts))]

    def factory(dtype: str, attn: str):
        return load(prepared, dtype=dtype, attn_implementation=attn, seed=params.prompts.seed)[0]

    with stage_run("profile", name, params, fingerprint=fingerprint(params.profile.device or "cpu"),
                   logged_params={k: v for k, v in cfg.items() if v is not None},
                   weights=info.weights) as run:
        result = run_profile(factory, load_tokenizer(prepared), info, texts, cfg,
                             progress=lambda msg: log_event(msg))
        result["model"] = name
        write_json_atomic(out, result)
        for step, r in enumerate(result["results"]):
            if r["status"] == "ok":  # the shape is in the name so runs compare across shapes
                key = f"{r['dtype']}.{r['attention']}.b{r['batch_size']}.in{r['input_len']}"
                run.log_metrics({f"{key}.{m}_p50": r[m]["p50"] for m in
                                 ("ttft_s", "tpot_s", "e2e_s", "decode_tps", "prefill_tps")})
                run.log_metrics({f"{key}.rss_peak_mib": r["memory"]["rss_peak_mib"]})
        run.log_metrics({"headline": result.get("headline") or {}})
        run.log_artifact(out)
        log_event("profile done", results=len(result["results"]))


if __name__ == "__main__":
    run_stage("profile", main, per_model=True)
