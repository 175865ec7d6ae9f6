"""The one entry point every stage module uses: argv, params, offline flags, logging, the
pre-flight check, and failure isolation: whatever a stage raises ends as one line on stderr (the
traceback goes to the log file only), a failure record for a per-model stage
(llmbench.failures) and exit code 2 (a user mistake, UserError) or 3 (any other failure)."""
from __future__ import annotations

import logging
import os
import sys
import traceback
from typing import Callable

from llmbench import failures
from llmbench.config import Params, load_params
from llmbench.errors import UserError
from llmbench.logs import LOGGER, log_event, setup_logging
from llmbench.redact import error_line
from llmbench.tracking import repo_root

OFFLINE_FLAGS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
# where in the code an exception came from -> the failure record's phase (first match, innermost)
PHASES = (("llmbench.models", "load", "load"), ("llmbench.models", "load_tokenizer", "load"),
          ("llmbench.models", "describe", "load"), ("llmbench.models", "prepare", "prepare"),
          ("llmbench.evaluate", None, "score"), ("llmbench.io", None, "write"),
          ("llmbench.results", "write_result", "write"))
DEFAULT_PHASE = {"prepare": "prepare", "evaluate": "score"}


def apply_network(params: Params) -> None:
    # without these, a hub id retries for ~49 s before failing; with them it fails in ~2 s
    # (stages/__init__.py sets them already, before any hub library is imported)
    if not params.network:
        for flag in OFFLINE_FLAGS:
            os.environ.setdefault(flag, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def phase_of(stage: str, exc: BaseException) -> str:
    """The phase an exception was raised in, read from its traceback (no stage code needed)."""
    frames = [(f.f_globals.get("__name__", ""), f.f_code.co_name)
              for f, _ in traceback.walk_tb(exc.__traceback__)]
    for module, func, phase in PHASES:
        if any(m == module and (func is None or fn == func) for m, fn in frames):
            return phase
    return DEFAULT_PHASE.get(stage, "run")


def _log_traceback(exc: BaseException) -> None:
    # the file handler only: stderr gets one line
    logger = logging.getLogger(LOGGER)
    record = logger.makeRecord(LOGGER, logging.ERROR, __file__, 0, "failed", (), (type(exc), exc,
                               exc.__traceback__), extra={"fields": {"kind": type(exc).__name__}})
    for handler in logger.handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def run_stage(stage: str, main: Callable[..., None] | None, per_model: bool = False,
              per_backend: bool = False) -> None:
    """Run one stage body; never returns a traceback to the user. Exits 0, 2 or 3. With main
    None (stages/__init__.py, before torch is imported) only the checks run: a bad input fails
    in well under a second instead of after the heavy imports. per_backend: argv is
    `<model> <backend>` and the stage is named `<stage>-<backend>` (profile-llamacpp@smollm2)."""
    from llmbench.check import preflight

    argv = sys.argv[1:]
    params, model, backend, phase, base = None, None, None, "check", stage
    try:
        if per_backend:
            per_model = True
            if len(argv) == 2:
                stage, backend = f"{base}-{argv[1]}", argv[1]
        params = load_params(os.environ.get("LLMBENCH_PARAMS", "params.yaml"))
        if per_model:
            if len(argv) != (2 if per_backend else 1):
                usage = " <backend>" if per_backend else ""
                raise UserError(f"usage: python -m stages.{base.replace('-', '_')} <model name>{usage}")
            known = params.backends.ids()
            if backend is not None and backend not in known:  # before `model`: no failure record
                raise UserError(f"{stage}@{argv[0]}: unknown backend '{backend}' (known: {', '.join(known)})")
            model = argv[0]
            if model not in params.models:
                raise UserError(f"params.yaml: models.{model}: not defined (defined: {', '.join(params.models)})")
        apply_network(params)
        # logs go to the user's repo, also from a queued experiment's temp copy
        setup_logging(stage, model, repo_root() / params.paths.logs)
        log_event("start" if main else "pre-flight")
        preflight(params, base, model)  # before stage_run: a bad input leaves no MLflow run
        if main is None:
            return
        phase = "run"
        if backend is not None:
            main(params, model, backend)
        else:
            main(params, model) if per_model else main(params)
        log_event("done")
    except Exception as exc:  # noqa: BLE001 - isolation: one failing model never sinks the run
        code = failures.EXIT_USER if isinstance(exc, UserError) else failures.EXIT_MODEL
        if phase != "check":
            phase = phase_of(base, exc)
        _log_traceback(exc)
        # a user error names its key/file itself; a crash gets the stage, a model always
        where = f"{stage}@{model}" if model else None if code == failures.EXIT_USER else stage
        print(f"error: {where + ': ' if where else ''}{error_line(exc)}", file=sys.stderr)
        if params is not None and (model is not None or not per_model):
            try:  # a shared stage's record: model SHARED ("" in the file name: aggregate@.json)
                rec = failures.make(stage, model or failures.SHARED, phase, exc, code)
                failures.write(params.paths.failures, rec)
            except OSError as wexc:  # the exit code still tells dvc the stage failed
                print(f"error: {where or stage}: failure record not written: {error_line(wexc)}",
                      file=sys.stderr)
        sys.exit(code)
    failures.clear(params.paths.failures, stage, model or failures.SHARED)


def ci_roster(params: Params) -> tuple[str, ...]:
    """The models CI benchmarks on every pull request (the roster when ci_roster is empty)."""
    return params.ci_roster or params.roster


def ci_args(params: Params) -> list[str]:
    """The `dvc exp run` arguments of CI's runs: the CI roster plus ci_overrides."""
    args = ["-S", "roster=[" + ",".join(ci_roster(params)) + "]"]
    for key, value in params.ci_overrides.items():
        args += ["-S", f"{key}={value}"]
    return args


def _overrides_exist(path: str, params: Params) -> None:
    # `dvc exp run -S a.b=v` refuses a key that params.yaml does not spell out ("not in struct")
    import yaml

    raw = yaml.safe_load(open(path, encoding="utf-8"))
    for key in params.ci_overrides:
        node = raw
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                raise UserError(f"{path}: ci_overrides.{key}: not a key of {path}, so `dvc exp run -S` "
                                "cannot set it (add it there, null for the default)")
            node = node[part]


def config_main(argv: list[str] | None = None) -> int:
    """`python -m llmbench.config ci-roster | ci-args`, for the Makefile and the workflows (so
    they never respell the CI roster)."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        path = os.environ.get("LLMBENCH_PARAMS", "params.yaml")
        params = load_params(path)
        _overrides_exist(path, params)
        if argv == ["ci-roster"]:
            print("[" + ",".join(ci_roster(params)) + "]")
        elif argv == ["ci-args"]:
            print(" ".join(ci_args(params)))
        else:
            raise UserError("usage: python -m llmbench.config ci-roster | ci-args")
    except UserError as exc:
        print(f"error: {error_line(exc)}", file=sys.stderr)
        return 2
    return 0
