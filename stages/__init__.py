"""Stage entry modules (`python -m stages.<name>`), one per DVC stage.

This package runs before any stage module imports torch, transformers or huggingface_hub, so
the process-wide settings those libraries read once at import are set here."""
import os

# Must precede the first torch import. OpenMP's default spin-waiting makes 2 torch threads run
# 10-100x slower whenever another process wants a core (a shared laptop or CI runner);
# passive waiting costs little when the machine is idle. A user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _network_allowed() -> bool:
    # huggingface_hub reads HF_HUB_OFFLINE at import: set it before, from params.yaml's
    # `network`, read cheaply. A broken params.yaml counts as offline; cli reports the error.
    try:
        import yaml

        raw = yaml.safe_load(open(os.environ.get("LLMBENCH_PARAMS", "params.yaml"), encoding="utf-8"))
        return isinstance(raw, dict) and raw.get("network") is True
    except Exception:  # noqa: BLE001 - never fail here; the stage's own load_params will
        return False


if not _network_allowed():
    for _flag in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(_flag, "1")


def _early_check() -> None:
    # `python -m stages.<stage> [model]`: the pre-flight check runs now, before the stage module
    # imports torch (~2 s): a bad input (a hub id offline, a broken file) fails at once
    import sys

    argv = list(getattr(sys, "orig_argv", ()))
    if "-m" not in argv[:-1]:
        return
    i = argv.index("-m")
    stage = argv[i + 1].partition("stages.")[2].replace("_", "-")
    if stage in ("prepare", "infer", "profile", "evaluate", "aggregate"):
        from llmbench.cli import run_stage

        saved, sys.argv = sys.argv, [argv[i + 1], *argv[i + 2:]]
        try:
            run_stage(stage, None, per_model=stage == "prepare",
                      per_backend=stage in ("infer", "profile", "evaluate"))
        finally:
            sys.argv = saved


_early_check()
