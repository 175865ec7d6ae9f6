"""prepare@<model>: materialise the model once (GGUF -> safetensors, hub download, random config)."""
from llmbench.cli import run_stage
from llmbench.config import Params
from llmbench.logs import log_event
from llmbench.models import prepare
from llmbench.tracking import stage_run


def main(params: Params, name: str) -> None:
    spec = params.models[name]
    out = params.paths.prepared(name)
    with stage_run("prepare", name, params, logged_params=spec.model_dump(mode="json")) as run:
        manifest = prepare(name, spec, out)
        log_event("prepared", path=str(out), weights=manifest["weights"])
        run.set_tag("llmbench.weights", manifest["weights"])
        run.log_artifact(out / "llmbench_model.json")


if __name__ == "__main__":
    run_stage("prepare", main, per_model=True)
