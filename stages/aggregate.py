"""aggregate: join reference scores, live accuracy and measurements into the trade-off report."""
from pathlib import Path
from typing import Callable

from llmbench.cli import run_stage
from llmbench.combine import per_model
from llmbench.config import Params
from llmbench.failures import failed_rows, live_failures
from llmbench.logs import log_event
from llmbench.reference import load_reference
from llmbench.report import build_report, write_report
from llmbench.report_serving import section as serving_section
from llmbench.results import EvaluateResult, GgufSet, InferResult, ProfileResult, read_result
from llmbench.tracking import stage_run


def _per_model(path_of: Callable[[str], Path], roster: tuple[str, ...], model) -> dict:
    # only the roster's files: a removed model's stale file must not reappear in the report
    return {m: read_result(path_of(m), model) for m in roster if path_of(m).exists()}


def main(params: Params) -> None:
    paths, roster = params.paths, params.roster
    cfg = params.model_dump(mode="json", include={"cost", "budget", "report", "references"})
    with stage_run("aggregate", None, params, logged_params=cfg) as run:
        ids = params.backends.ids()
        result = build_report(list(roster), per_model(paths.profile_json, roster, ids, ProfileResult),
                              per_model(paths.infer_json, roster, ids, InferResult),
                              per_model(paths.evaluate_json, roster, ids, EvaluateResult),
                              load_reference(Path(paths.reference)), cost=params.cost,
                              budget=params.budget, report=params.report, references=params.references,
                              failed=failed_rows(live_failures(params)), serving=serving_section(params),
                              gguf=_per_model(paths.gguf_json, roster, GgufSet))
        written = write_report(result, Path(paths.reports), paths.summary_json)
        # MLflow names: <row key>.<field>, the same keys as metrics/summary.json's rows
        run.log_metrics(result.summary.model_dump(include={"rows", "frontier_size", "n_compared"}))
        run.log_table(result.table.reset_index(drop=True), "tradeoff_table.json")
        for name, fig in result.figures.items():
            run.log_figure(fig, name)
        run.log_artifact(paths.report_md)
        log_event("report written", files=[str(p) for p in written], frontier=result.frontier)


if __name__ == "__main__":
    run_stage("aggregate", main)
