"""The one entry point every stage module uses: argv, params, offline flags, logging, and a
one-line error with exit code 2 for user mistakes (never a bare traceback)."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable

from llmbench.config import Params, load_params
from llmbench.errors import UserError
from llmbench.logs import log_event, setup_logging
from llmbench.tracking import repo_root

OFFLINE_FLAGS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


def apply_network(params: Params) -> None:
    # without these, a hub id retries for ~49 s before failing; with them it fails in ~2 s
    if not params.network:
        for flag in OFFLINE_FLAGS:
            os.environ.setdefault(flag, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def run_stage(stage: str, main: Callable[..., None], per_model: bool = False) -> None:
    argv = sys.argv[1:]
    try:
        params = load_params(os.environ.get("LLMBENCH_PARAMS", "params.yaml"))
        model = None
        if per_model:
            if len(argv) != 1:
                raise UserError(f"usage: python -m stages.{stage.replace('-', '_')} <model name>")
            model = argv[0]
            if model not in params.models:
                raise UserError(f"params.yaml: models.{model}: not defined (defined: {', '.join(params.models)})")
        apply_network(params)
        # logs go to the user's repo, also from a queued experiment's temp copy
        setup_logging(stage, model, repo_root() / params.paths.logs)
        log_event("start")
        main(params, model) if per_model else main(params)
        log_event("done")
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


def ci_roster(params: Params) -> tuple[str, ...]:
    """The models CI benchmarks on every pull request (the roster when ci_roster is empty)."""
    return params.ci_roster or params.roster


def ci_args(params: Params) -> list[str]:
    """The `dvc exp run` arguments of CI's runs: the CI roster plus ci_overrides."""
    args = ["-S", "roster=[" + ",".join(ci_roster(params)) + "]"]
    for key, value in params.ci_overrides.items():
        args += ["-S", f"{key}={value}"]
    return args


def config_main(argv: list[str] | None = None) -> int:
    """`python -m llmbench.config ci-roster | ci-args`, for the Makefile and the workflows (so
    they never respell the CI roster)."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        params = load_params(os.environ.get("LLMBENCH_PARAMS", "params.yaml"))
        if argv == ["ci-roster"]:
            print("[" + ",".join(ci_roster(params)) + "]")
        elif argv == ["ci-args"]:
            print(" ".join(ci_args(params)))
        else:
            raise UserError("usage: python -m llmbench.config ci-roster | ci-args")
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
