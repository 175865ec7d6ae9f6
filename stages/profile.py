"""profile-<backend>@<model>: latency and memory of the model's deployments on one backend
(transformers: dtypes x attentions; llamacpp: each GGUF type) over the shape grid
(llmbench.profiling). One stage per backend, so one backend's settings rerun only its stages."""
from pathlib import Path

from llmbench.cli import run_stage
from llmbench.config import Params
from llmbench.io import read_jsonl
from llmbench.logs import log_event
from llmbench.models import describe, load_tokenizer
from llmbench.profiling import Target, fingerprint, run_profile
from llmbench.results import Deployment, write_result
from llmbench.spec import MEMORY, METRICS, SAMPLED
from llmbench.tracking import stage_run


def targets_for(params: Params, name: str, backend: str):
    """grid -> the model's deployments on `backend`: transformers at the grid's dtypes x
    attentions, llamacpp at every usable GGUF of data/gguf/<model>/gguf.json (shipped or converted)."""
    from llmbench.backends import catalog

    prepared = params.paths.prepared(name)
    cpp = params.backends.llamacpp
    hf_on = backend == "transformers" and params.backends.transformers.enabled
    cpp_on = backend == "llamacpp" and cpp.enabled
    files = catalog.read_set(params.paths.gguf_json(name)).usable() if cpp_on else []
    threads = catalog.default_threads(cpp.threads, params.profile.resolved().threads)

    from llmbench.backends.transformers import supports_sdpa as hf_supports_sdpa

    def hf_load(d: str, a: str):
        from llmbench.backends import transformers as hf

        return lambda n_ctx, n_seq: hf.load(prepared, precision=d, attention=a, n_ctx=n_ctx, n_seq=n_seq,
                                            device=params.profile.resolved().device, seed=params.prompts.seed)

    def cpp_load(path: str, precision: str):
        def load(n_ctx: int, n_seq: int):
            from llmbench.backends import llamacpp

            return llamacpp.load(Path(path), precision=precision, threads=threads, n_ctx=n_ctx, n_seq=n_seq,
                                 flash_attn=cpp.flash_attn, n_gpu_layers=cpp.n_gpu_layers)
        return load

    def build(grid):
        attentions = list(grid.attentions)
        if hf_on and "sdpa" in attentions and "eager" not in attentions and not hf_supports_sdpa(prepared):
            attentions.append("eager")  # measured too, so the model has a row (gpt-neo: no sdpa)
        out = [Target(Deployment(model=name, backend="transformers", precision=d, attention=a), hf_load(d, a))
               for d in grid.dtypes for a in attentions] if hf_on else []
        out += [Target(Deployment(model=name, backend="llamacpp", precision=f.precision),
                       cpp_load(f.path, f.precision)) for f in files]
        return out

    return build


def main(params: Params, name: str, backend: str) -> None:
    from transformers import AutoConfig

    from llmbench.backends import catalog

    prepared = params.paths.prepared(name)
    out = params.paths.profile_json(name, backend)
    cfg = params.profile.resolved()
    info = describe(prepared)
    texts = [p["text"] for p in read_jsonl(params.paths.prompts)]
    skip, on = catalog.unavailable(params, name, backend), params.backends.enabled(backend)
    with stage_run(f"profile-{backend}", name, params,
                   fingerprint=fingerprint(cfg.device, [backend] if on else []).model_dump(),
                   logged_params={**cfg.model_dump(mode="json"),
                                  "backends": params.backends.model_dump(mode="json")},
                   weights=info.weights) as run:
        result = run_profile(targets_for(params, name, backend), load_tokenizer(prepared), info, texts, cfg,
                             progress=lambda msg: log_event(msg), kv_config=AutoConfig.from_pretrained(prepared),
                             runtimes=[backend] if on else [])
        if skip:  # nothing was measured: say why (disabled, or no GGUF the converter could make)
            result = result.model_copy(update={"status": skip[0], "reason": skip[1]})
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
            out.update({f"{r.key}.{m}": getattr(r.memory, m) for m in MEMORY if m.startswith("rss_")})
    return out


if __name__ == "__main__":
    run_stage("profile", main, per_backend=True)
