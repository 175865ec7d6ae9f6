"""Pre-flight: catch a bad input before the first expensive step.

`python -m llmbench.check [model ...]` (run by `make run` before dvc) checks params.yaml, the
user's own inputs (local model folders, GGUF packages, hub ids while offline, include_path) and
each model's limits (input_lens + output_len and the prompts + max_new_tokens against its
context, the grid's memory against the machine, the device, threads and packages). Every stage
calls `preflight(params, stage, model)` at start for the files it reads (prompts JSONL, prepared
folder, reference table): before stage_run opens an MLflow run, so a bad input leaves no run and
writes nothing. A problem is a UserError naming the key, file or model; exit 2.

Cheap by design: no torch import (except to look for a CUDA device when one is asked for), and
pandas only for the aggregate's reference table.
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

from llmbench.config import GgufPackageModel, HubModel, LocalModel, Params, RandomModel, load_params
from llmbench.errors import UserError

CONFIGS = Path(__file__).parent / "configs"
# config.json keys that cap the sequence length, by model family (GPT-2, Llama/Falcon/Neo, ...)
MAX_POSITION_KEYS = ("n_positions", "max_position_embeddings", "n_ctx", "max_seq_len", "seq_length")
PROMPT_FIELDS = {"id": str, "text": str, "variant": str}  # what infer and profile read per prompt
VARIANTS = ("plain", "chat")
STAGE_PACKAGES = {  # import name -> why; checked with find_spec, nothing imported
    "prepare": ("torch", "transformers"),
    "infer": ("torch", "transformers"),
    "profile": ("torch", "transformers"),
    "evaluate": ("torch", "transformers", "lm_eval"),
}
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


# ----------------------------------------------------------------- files
def read_text(path: Path, what: str) -> str:
    """A file's text: missing, unreadable, empty or non-UTF-8 is one UserError naming it."""
    try:
        blob = Path(path).read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: not found ({what}; has its stage run? try `dvc repro`)") from None
    except OSError as exc:
        raise UserError(f"{path}: unreadable ({what}): {exc.strerror or exc}") from None
    try:
        text = blob.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 at byte {exc.start} ({what})") from None
    if not text.strip():
        raise UserError(f"{path}: empty ({what})")
    return text


def prompts_file(path: Path) -> list[dict]:
    """The prompts JSONL: every line an object with a non-empty text, an id and a known variant;
    ids unique; at least one prompt."""
    rows, seen = [], set()
    for n, line in enumerate(read_text(path, "the prompts").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{n}: not valid JSON ({exc.msg}); rerun generate-prompts") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
        for key, typ in PROMPT_FIELDS.items():
            if not isinstance(row.get(key), typ) or (typ is str and not row[key].strip()):
                got = "missing" if key not in row else f"{type(row[key]).__name__} {row[key]!r:.40}"
                raise UserError(f"{path}:{n}: field '{key}' must be a non-empty {typ.__name__} ({got})")
        if row["variant"] not in VARIANTS:
            raise UserError(f"{path}:{n}: field 'variant' is '{row['variant']}' "
                            f"(expected one of: {', '.join(VARIANTS)})")
        if "n_tokens" in row and (not isinstance(row["n_tokens"], int) or isinstance(row["n_tokens"], bool)
                                  or row["n_tokens"] < 0):
            raise UserError(f"{path}:{n}: field 'n_tokens' must be a non-negative integer")
        if row["id"] in seen:
            raise UserError(f"{path}:{n}: duplicate prompt id '{row['id']}'")
        seen.add(row["id"])
        rows.append(row)
    return rows


def json_object(path: Path, what: str) -> dict:
    try:
        obj = json.loads(read_text(path, what))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}; {what})") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path}: expected a JSON object ({what})")
    return obj


def prepared_folder(params: Params, model: str) -> dict:
    """The prepared model's manifest and config.json (both as dicts)."""
    folder = params.paths.prepared(model)
    man = json_object(folder / "llmbench_model.json", f"model {model}'s manifest; rerun prepare@{model}")
    if man.get("weights") not in ("random", "pretrained"):
        raise UserError(f"{folder / 'llmbench_model.json'}: field 'weights' must be random or pretrained "
                        f"(model {model}; rerun prepare@{model})")
    return json_object(folder / "config.json", f"model {model}'s config; rerun prepare@{model}")


def reference_table(params: Params) -> None:
    import pandas as pd

    from llmbench.reference import CORE_COLUMNS, CSV_NAME, META_NAME, load_reference

    folder = Path(params.paths.reference)
    json_object(folder / META_NAME, "the reference table's metadata; rerun fetch-dataset")
    read_text(folder / CSV_NAME, "the reference table; rerun fetch-dataset")
    try:
        table = load_reference(folder)
    except (ValueError, pd.errors.ParserError) as exc:  # EmptyDataError is a ValueError
        raise UserError(f"{folder / CSV_NAME}: not a readable CSV ({type(exc).__name__}); "
                        "rerun fetch-dataset") from None
    missing = [c for c in CORE_COLUMNS if c not in table.columns]
    if missing:
        raise UserError(f"{Path(params.paths.reference) / 'reference.csv'}: missing column "
                        f"'{missing[0]}'; rerun fetch-dataset")
    if table["model_id"].duplicated().any():
        dup = table.loc[table["model_id"].duplicated(), "model_id"].iloc[0]
        if "protocol" not in table or table.duplicated(["model_id", "protocol"]).any():
            raise UserError(f"{Path(params.paths.reference) / 'reference.csv'}: duplicate rows for "
                            f"model_id '{dup}'")


def result_files(params: Params) -> None:
    """Each roster model's result files that exist parse (read_result names file and field)."""
    from llmbench.results import EvaluateResult, InferResult, ProfileResult, read_result

    p = params.paths
    for model in params.roster:
        for path, kind in ((f(model, b), kind) for b in params.backends.ids() for f, kind in
                           ((p.profile_json, ProfileResult), (p.infer_json, InferResult),
                            (p.evaluate_json, EvaluateResult))):
            if path.exists():
                read_text(path, f"model {model}'s result; rerun its stage")
                read_result(path, kind)


# ----------------------------------------------------------------- models and the machine
def model_config(params: Params, model: str) -> dict | None:
    """config.json of a model: the prepared one, else a random model's bundled config (known
    before prepare runs); None when not knowable yet (a GGUF or hub model not prepared)."""
    prepared = params.paths.prepared(model) / "config.json"
    if prepared.exists():
        return json_object(prepared, f"model {model}'s config")
    spec = params.models[model]
    if isinstance(spec, RandomModel):
        return json_object(CONFIGS / f"{spec.config}.json", f"models.{model}.config")
    return None


def max_positions(cfg: dict) -> int | None:
    for key in MAX_POSITION_KEYS:
        if isinstance(cfg.get(key), int) and cfg[key] > 0:
            return cfg[key]
    return None


def _dims(cfg: dict) -> tuple[int, int, int, int] | None:
    """(layers, hidden, kv_dim, heads) of a decoder config, None when the keys are unknown."""
    layers = cfg.get("num_hidden_layers") or cfg.get("n_layer") or cfg.get("num_layers")
    hidden = cfg.get("hidden_size") or cfg.get("n_embd") or cfg.get("d_model")
    heads = cfg.get("num_attention_heads") or cfg.get("n_head") or cfg.get("num_heads")
    if not all(isinstance(v, int) and v > 0 for v in (layers, hidden, heads)):
        return None
    kv_heads = cfg.get("num_key_value_heads") or heads
    return layers, hidden, hidden * kv_heads // heads, heads


def estimate_bytes(cfg: dict, batch: int, seq: int, dtype: str) -> int | None:
    """Weights + KV cache + one layer's eager attention scores: a floor on the peak."""
    dims = _dims(cfg)
    if dims is None:
        return None
    layers, hidden, kv_dim, heads = dims
    b = BYTES.get(dtype, 4)
    weights = (12 * layers * hidden * hidden + int(cfg.get("vocab_size") or 0) * hidden) * b
    kv = 2 * layers * batch * seq * kv_dim * b
    scores = batch * heads * seq * seq * 4
    return weights + kv + scores


def machine_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def device(key: str, dev: str) -> None:
    if dev == "cpu":
        return
    if importlib.util.find_spec("torch") is None:
        raise UserError(f"params.yaml: {key}: '{dev}' needs torch, which is not installed")
    import torch  # only for a CUDA device: there is no cheaper way to ask the driver

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(dev.partition(":")[2] or 0)
    if index >= n:
        raise UserError(f"params.yaml: {key}: '{dev}' is not on this machine "
                        f"({n} CUDA device(s) visible); use cpu")


def threads(key: str, value: int | None) -> None:
    if value is not None and value > cores():
        raise UserError(f"params.yaml: {key}: {value} threads, but this machine gives the process "
                        f"{cores()} core(s)")


def packages(names: tuple[str, ...], what: str) -> None:
    for name in names:
        if importlib.util.find_spec(name) is None:
            raise UserError(f"{what} needs the Python package '{name}', which is not installed "
                            "(`make venv`)")


def model_source(params: Params, model: str) -> None:
    """What prepare@model reads from outside the repo exists (no download, no torch)."""
    spec, key = params.models[model], f"params.yaml: models.{model}"
    if isinstance(spec, LocalModel):
        folder = Path(spec.path).expanduser()
        if not (folder / "config.json").is_file():
            raise UserError(f"{key}.path: '{spec.path}' is not a save_pretrained folder (no config.json)")
        json_object(folder / "config.json", f"models.{model}.path")
    elif isinstance(spec, GgufPackageModel):
        if importlib.util.find_spec(spec.package) is None:
            raise UserError(f"{key}.package: '{spec.package}' is not installed (`make venv`)")
    elif isinstance(spec, RandomModel):
        if not (CONFIGS / f"{spec.config}.json").is_file():
            known = ", ".join(sorted(p.stem for p in CONFIGS.glob("*.json")))
            raise UserError(f"{key}.config: no bundled config '{spec.config}' (bundled: {known})")
    elif isinstance(spec, HubModel) and not params.network:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(spec.id, "config.json", revision=spec.revision)
        if not isinstance(hit, str):
            raise UserError(f"{key}: hub model '{spec.id}@{spec.revision}' is not in the local cache "
                            "and params.yaml has network: false (set network: true, or use source: local)")


def limits(params: Params, model: str, stage: str | None = None, prompts: list[dict] | None = None) -> None:
    """Lengths against the model's context, the grid's memory against the machine."""
    cfg = model_config(params, model)
    if cfg is None:
        return  # not knowable before prepare; the stage-start check runs it again after
    ctx, ram = max_positions(cfg), machine_bytes()
    if stage in (None, "profile"):
        prof = params.profile.resolved()
        longest = max(prof.input_lens) + prof.output_len
        if ctx is not None and longest > ctx:
            raise UserError(f"params.yaml: profile.input_lens: {max(prof.input_lens)} + profile.output_len "
                            f"{prof.output_len} = {longest} tokens exceeds model {model}'s context of {ctx}")
        need = estimate_bytes(cfg, max(prof.batch_sizes), longest, "float32")
        if need is not None and ram is not None and need > ram:
            raise UserError(f"params.yaml: profile.batch_sizes: batch {max(prof.batch_sizes)} x {longest} "
                            f"tokens needs ~{need >> 30} GiB for model {model}, beyond this machine's "
                            f"{ram >> 30} GiB")
    if stage in (None, "infer"):
        inf = params.infer
        if prompts is not None and ctx is not None:
            n_in = max((p.get("n_tokens", 0) for p in prompts), default=0)
            if n_in + inf.max_new_tokens > ctx:
                raise UserError(f"params.yaml: infer.max_new_tokens: {inf.max_new_tokens} + the longest "
                                f"prompt ({n_in} tokens) exceeds model {model}'s context of {ctx}")
        elif ctx is not None and inf.max_new_tokens >= ctx:
            raise UserError(f"params.yaml: infer.max_new_tokens: {inf.max_new_tokens} is not below model "
                            f"{model}'s context of {ctx}")
        need = estimate_bytes(cfg, inf.batch_size, max(params.prompts.buckets) + inf.max_new_tokens,
                              inf.dtype)
        if need is not None and ram is not None and need > ram:
            raise UserError(f"params.yaml: infer.batch_size: {inf.batch_size} needs ~{need >> 30} GiB for "
                            f"model {model}, beyond this machine's {ram >> 30} GiB")


def machine(params: Params, stage: str | None) -> None:
    if stage in (None, "profile"):
        prof = params.profile.resolved()
        device("profile.device", prof.device)
        threads("profile.threads", prof.threads)
    if stage in (None, "profile", "quantize"):
        backends = params.backends
        threads("backends.llamacpp.threads", backends.llamacpp.threads)
        if backends.llamacpp.enabled:
            packages(("llama_cpp",), "params.yaml: backends.llamacpp.enabled")
        if backends.transformers.enabled:
            packages(("torch", "transformers"), "params.yaml: backends.transformers.enabled")
    if stage in (None, "infer"):
        threads("infer.threads", params.infer.threads)
    if stage in (None, "evaluate") and params.evaluate.include_path is not None:
        if not Path(params.evaluate.include_path).is_dir():
            raise UserError(f"params.yaml: evaluate.include_path: '{params.evaluate.include_path}' "
                            "is not a folder")


# ----------------------------------------------------------------- entry points
def preflight(params: Params, stage: str, model: str | None = None) -> None:
    """The stage-start check (cli.run_stage calls it): only what this stage reads."""
    machine(params, stage)
    packages(STAGE_PACKAGES.get(stage, ()), f"stage {stage}")
    if stage == "prepare" and model:
        model_source(params, model)
    elif stage in ("infer", "profile", "evaluate") and model:
        prepared_folder(params, model)
        prompts = prompts_file(Path(params.paths.prompts)) if stage in ("infer", "profile") else None
        limits(params, model, stage, prompts)
    elif stage == "aggregate":
        reference_table(params)
        result_files(params)


def check_models(params: Params, models: list[str]) -> tuple[list[str], dict[str, str]]:
    """(problems of the whole run, {model: its first problem}), one line each."""
    shared: list[str] = []
    for fn in (lambda: machine(params, None),
               lambda: packages(tuple(dict.fromkeys(p for ps in STAGE_PACKAGES.values() for p in ps)),
                                "the pipeline")):
        try:
            fn()
        except UserError as exc:
            shared.append(str(exc))
    per_model: dict[str, str] = {}
    for model in models:
        if model not in params.models:
            shared.append(f"model '{model}': not defined under models (defined: {', '.join(params.models)})")
            continue
        try:
            model_source(params, model)
            limits(params, model)
        except UserError as exc:
            per_model[model] = str(exc)
    return shared, per_model


def main(argv: list[str] | None = None) -> int:
    """Exit 0 when all is well, 2 on any problem. --keep-going (make run): a problem of one
    model is a warning (its stages fail, are recorded and shown in the report); only problems
    of the whole run exit 2."""
    from llmbench.redact import error_line

    argv = list(sys.argv[1:] if argv is None else argv)
    keep_going = "--keep-going" in argv
    models = [a for a in argv if a != "--keep-going"]
    try:
        params = load_params(os.environ.get("LLMBENCH_PARAMS", "params.yaml"))
    except UserError as exc:
        print(f"error: {error_line(exc)}", file=sys.stderr)
        return 2
    shared, per_model = check_models(params, models or list(params.roster))
    for line in shared:
        print(f"error: {error_line(UserError(line))}", file=sys.stderr)
    for model, line in per_model.items():
        label = f"warning: model {model} will fail" if keep_going else "error"
        print(f"{label}: {error_line(UserError(line))}", file=sys.stderr)
    return 2 if shared or (per_model and not keep_going) else 0


if __name__ == "__main__":
    sys.exit(main())
