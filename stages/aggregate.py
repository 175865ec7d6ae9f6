"""aggregate: join reference scores, live accuracy and measurements into the trade-off report."""
import json
from pathlib import Path

from llmbench.cli import run_stage
from llmbench.config import Params
from llmbench.logs import log_event
from llmbench.reference import load_reference
from llmbench.report import build_report, write_report
from llmbench.tracking import stage_run


def _per_model(folder: Path, roster: tuple[str, ...]) -> dict[str, dict]:
    # only the roster's files: a removed model's stale file must not reappear in the report
    return {m: json.loads((folder / f"{m}.json").read_text())
            for m in roster if (folder / f"{m}.json").exists()}


def main(params: Params) -> None:
    metrics = Path(params.paths.metrics)
    roster = params.roster
    cfg = params.model_dump(mode="json", include={"cost", "budget", "report"})
    with stage_run("aggregate", None, params, logged_params=cfg) as run:
        result = build_report(list(roster), _per_model(metrics / "profile", roster),
                              _per_model(metrics / "infer", roster),
                              _per_model(metrics / "evaluate", roster),
                              load_reference(Path(params.paths.reference)), cfg)
        written = write_report(result, Path(params.paths.reports), metrics / "summary.json")
        run.log_metrics(result.summary)
        run.log_table(result.table.reset_index(), "tradeoff_table.json")
        for name, fig in result.figures.items():
            run.log_figure(fig, name)
        run.log_artifact(Path(params.paths.reports) / "report.md")
        log_event("report written", files=[str(p) for p in written], frontier=result.frontier)


if __name__ == "__main__":
    run_stage("aggregate", main)
