"""fetch-dataset: the reference table of published scores (bundled, url+sha256, or hf)."""
from pathlib import Path

from llmbench.cli import run_stage
from llmbench.config import Params
from llmbench.logs import log_event
from llmbench.reference import fetch
from llmbench.tracking import stage_run


def main(params: Params) -> None:
    out = Path(params.paths.reference)
    with stage_run("fetch-dataset", None, params,
                   logged_params=params.dataset.model_dump(mode="json")) as run:
        info = fetch(params.dataset, out)
        log_event("reference written", rows=info["rows"], sha256=info["sha256"])
        run.log_metrics({"rows": info["rows"]})
        run.set_tag("reference.sha256", info["sha256"])
        run.log_artifact(out)


if __name__ == "__main__":
    run_stage("fetch-dataset", main)
