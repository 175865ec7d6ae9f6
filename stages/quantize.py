"""quantize@<model>: the model's GGUF files for the llamacpp backend (llmbench.backends.catalog):
the shipped one as is, or the HF weights converted once and quantized to
backends.llamacpp.quantizations; unsupported architectures are recorded with the converter's reason."""
from llmbench.backends import catalog
from llmbench.cli import run_stage
from llmbench.config import Params
from llmbench.logs import log_event
from llmbench.results import Deployment
from llmbench.tracking import stage_run


def main(params: Params, name: str) -> None:
    cfg = params.backends.llamacpp
    out = params.paths.gguf_dir(name)
    logged = {"quantizations": list(cfg.quantizations), "requantize_shipped": cfg.requantize_shipped,
              "enabled": cfg.enabled}
    with stage_run("quantize", name, params, logged_params=logged) as run:
        result = catalog.build_set(name, params.paths.prepared(name), out, quantizations=cfg.quantizations,
                                   requantize_shipped=cfg.requantize_shipped, seed=params.prompts.seed,
                                   threads=catalog.default_threads(cfg.threads, params.profile.threads),
                                   enabled=cfg.enabled)
        for f in result.files:
            log_event("gguf", precision=f.precision, status=f.status, reason=f.reason,
                      bits_per_weight=f.bits_per_weight, file_bytes=f.file_bytes)
            if f.status == "ok":
                key = Deployment(model=name, backend="llamacpp", precision=f.precision).key
                run.log_metrics({f"{key}.bits_per_weight": f.bits_per_weight,
                                 f"{key}.file_mib": f.file_bytes / 2**20})
        run.log_artifact(params.paths.gguf_json(name))
        log_event("quantize done", status=result.status, reason=result.reason)


if __name__ == "__main__":
    run_stage("quantize", main, per_model=True)
