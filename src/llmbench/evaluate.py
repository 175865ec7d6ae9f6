"""Accuracy with lm-evaluation-harness as the scoring engine, on a model llmbench already loaded.

lm-eval does the prompting, few-shot sampling, log-likelihood scoring and metrics, so numbers
mean what the Open LLM Leaderboard's mean; this module only picks tasks, wraps a loaded
deployment of any backend in one lm-eval LM (make_lm: why not HFLM is said there) and reshapes
lm-eval's output into llmbench's records. Task indexing is targeted: lm-eval's default TaskManager parses ~14,700 YAML files
(~8 s); here only the folders that define the requested tasks are indexed (milliseconds).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmbench.errors import UserError
from llmbench.results import Deployment, EvaluateResult, EvaluateRun, TaskScore

if TYPE_CHECKING:
    from lm_eval.tasks import TaskManager

SMOKE_TASK = "llmbench_smoke"
SMOKE_DIR = Path(__file__).parent / "tasks" / SMOKE_TASK
# Standard task -> the lm_eval/tasks sub-folder that defines it (and everything it includes).
STANDARD_TASKS = {
    "arc_easy": "arc",
    "arc_challenge": "arc",
    "hellaswag": "hellaswag",
    "mmlu": "mmlu/default",
    "truthfulqa_mc2": "truthfulqa",
    "winogrande": "winogrande",
}
_KEY = "params.yaml: evaluate.tasks"
_LOCAL_LOADERS = {"json", "csv", "parquet", "text", "arrow"}


def lm_eval_version() -> str:
    from importlib.metadata import version

    return version("lm_eval")


def _lm_eval_tasks_dir() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent


def _include_dirs(include_path: str | os.PathLike | None) -> list[Path]:
    if include_path is None:
        return []
    path = Path(include_path).expanduser()
    if not path.is_dir():
        raise UserError(f"params.yaml: evaluate.include_path: {path} is not a folder")
    return [path.resolve()]


def known_tasks(include_path: str | os.PathLike | None = None) -> list[str]:
    """Names evaluate_model accepts: the smoke suite, the standard set, and include_path's tasks."""
    from lm_eval.tasks import TaskManager

    names = {SMOKE_TASK, *STANDARD_TASKS}
    dirs = _include_dirs(include_path)
    if dirs:
        names.update(TaskManager(include_path=dirs, include_defaults=False).all_tasks)
    return sorted(names)


def _suite(name: str, local: set[str]) -> str:
    if name in local:  # a user's own YAML wins over a built-in name, as in lm-eval
        return "local"
    return "smoke" if name == SMOKE_TASK else "standard"


def _absolute_data_files(cfg: dict[str, Any], yaml_dir: Path) -> dict[str, Any]:
    """Resolve relative data_files against the YAML's folder (lm-eval uses the working dir),
    so a task folder works from any directory, including DVC's temporary experiment copies."""
    kwargs = dict(cfg.get("dataset_kwargs") or {})
    files = kwargs.get("data_files")
    if cfg.get("dataset_path") not in _LOCAL_LOADERS or files is None:
        return cfg

    def fix(p: Any) -> Any:
        if isinstance(p, list):
            return [fix(x) for x in p]
        if not isinstance(p, str) or Path(p).is_absolute() or "://" in p:
            return p
        if (yaml_dir / p).exists() or not Path(p).exists():  # else keep lm-eval's cwd-relative
            return str(yaml_dir / p)
        return p

    kwargs["data_files"] = (
        {k: fix(v) for k, v in files.items()} if isinstance(files, dict) else fix(files)
    )
    return {**cfg, "dataset_kwargs": kwargs}


def _dataset_error(name: str, err: Exception) -> UserError | None:
    """Map a dataset-loading failure to one line naming the task, or None if it is not one."""
    from datasets.exceptions import DatasetNotFoundError
    from huggingface_hub.errors import OfflineModeIsEnabled

    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    if isinstance(err, FileNotFoundError) and not isinstance(err, DatasetNotFoundError):
        return UserError(f"{_KEY}: {name}: data file not found ({first})")
    if not isinstance(err, (ConnectionError, OfflineModeIsEnabled, DatasetNotFoundError)):
        return None
    flags = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
    offline = any(os.environ.get(v, "") not in ("", "0", "false") for v in flags)
    why = "is not available offline" if offline else "could not be fetched"
    return UserError(
        f"{_KEY}: {name}: dataset {why} ({first}); put a local copy in the Hugging Face datasets "
        "cache, or write a task YAML with dataset_path: json and data_files pointing at local "
        "JSONL and pass its folder as evaluate.include_path"
    )


def load_tasks(
    tasks: list[str], include_path: str | os.PathLike | None = None
) -> tuple[TaskManager, list[Any], dict[str, str]]:
    """Build a TaskManager indexing only what `tasks` need, and the lm-eval Task/Group objects.

    Returns (task_manager, objects to pass to simple_evaluate, {task name: suite}).
    Raises UserError for an unknown name or a dataset that cannot be loaded."""
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._index import Kind
    from lm_eval.tasks._yaml_loader import load_yaml

    if not tasks:
        raise UserError(f"{_KEY}: empty; name at least one task (e.g. {SMOKE_TASK})")
    if len(set(tasks)) != len(tasks):
        raise UserError(f"{_KEY}: duplicate task names in {tasks}")
    user_dirs = _include_dirs(include_path)
    local = set()
    if user_dirs:
        local = set(TaskManager(include_path=user_dirs, include_defaults=False).all_tasks)
    unknown = [t for t in tasks if t not in local and t != SMOKE_TASK and t not in STANDARD_TASKS]
    if unknown:
        known = ", ".join(known_tasks(include_path))
        raise UserError(f"{_KEY}: unknown task {', '.join(map(repr, unknown))}; known: {known}")

    dirs = []
    if SMOKE_TASK in tasks and SMOKE_TASK not in local:
        dirs.append(SMOKE_DIR)
    subs = {STANDARD_TASKS[t] for t in tasks if t in STANDARD_TASKS and t not in local}
    dirs += [_lm_eval_tasks_dir() / sub for sub in sorted(subs)]
    tm = TaskManager(include_path=dirs + user_dirs, include_defaults=False)
    local_dirs = [SMOKE_DIR, *user_dirs]

    objects, suites = [], {}
    for name in tasks:
        entry = tm.task_index[name]
        spec: str | dict[str, Any] = name
        if entry.kind == Kind.TASK and entry.yaml_path is not None and any(
            Path(entry.yaml_path).resolve().is_relative_to(d.resolve()) for d in local_dirs
        ):
            cfg = load_yaml(entry.yaml_path, resolve_func=True)
            spec = _absolute_data_files(cfg, Path(entry.yaml_path).resolve().parent)
        try:
            loaded = tm.load([spec])
        except Exception as err:  # noqa: BLE001 - only dataset errors are mapped, others re-raised
            mapped = _dataset_error(name, err)
            if mapped is None:
                raise
            raise mapped from err
        if name in loaded["groups"]:
            objects.append(loaded["groups"][name])
        else:
            objects.extend(loaded["tasks"].values())
        suites[name] = _suite(name, local)
    return tm, objects, suites


def _num(x: Any) -> float | None:
    """lm-eval writes 'N/A' for missing stderrs; JSON has no NaN."""
    if isinstance(x, (int, float)) and not (isinstance(x, float) and math.isnan(x)):
        return float(x)
    return None


def task_scores(results: dict, suites: dict[str, str], limit: int | None) -> dict[str, TaskScore]:
    """lm-eval's results -> {task name: TaskScore} (fractions, not percent)."""
    out = {}
    for name, suite in suites.items():
        r = results["results"][name]
        leaves = results.get("group_subtasks", {}).get(name) or [name]
        counts = results["n-samples"]
        n = sum(int(counts[t]["effective"]) for t in leaves if t in counts)
        n_shot = results.get("n-shot", {})
        shots = n_shot.get(name, n_shot.get(leaves[0]))
        acc, acc_norm = _num(r.get("acc,none")), _num(r.get("acc_norm,none"))
        scored = acc is not None or acc_norm is not None
        out[name] = TaskScore(
            status="ok" if scored else "failed",
            reason=None if scored else "lm-eval reported neither acc nor acc_norm for this task",
            acc=acc, acc_stderr=_num(r.get("acc_stderr,none")),
            acc_norm=acc_norm, acc_norm_stderr=_num(r.get("acc_norm_stderr,none")),
            n=n, num_fewshot=shots, limit=limit, suite=suite,
        )
    return out


def sample_records(results: dict, tasks: dict[str, Any]) -> list[dict]:
    """One record per scored item: what the model chose among the choices, and why."""
    records = []
    for task_name, samples in results.get("samples", {}).items():
        task = tasks.get(task_name)
        for s in samples:
            doc = s["doc"]
            lls = [float(resp[0]) for resp in s["filtered_resps"]]
            target = s["target"]
            if isinstance(target, str) and task is not None:
                target = task.doc_to_choice(doc).index(target)
            acc = s.get("acc")
            chosen = max(range(len(lls)), key=lls.__getitem__) if lls else None
            item_id = doc.get("id", s["doc_id"]) if isinstance(doc, dict) else s["doc_id"]
            records.append(
                {
                    "task": task_name,
                    "id": str(item_id),
                    "doc_id": s["doc_id"],
                    "chosen": chosen,
                    "gold": target,
                    "loglikelihoods": lls,
                    "correct": bool(acc) if acc in (0, 1, 0.0, 1.0, True, False) else None,
                    "acc": _num(acc),
                    "acc_norm": _num(s.get("acc_norm")),
                }
            )
    return records


def make_lm(loaded: Any, tokenizer: Any, chat: bool = False, batch_size: int = 1) -> Any:
    """An lm-eval LM around any backend's Loaded.loglikelihood (llmbench.backends).

    Why an LM subclass around the backend rather than lm-eval's own HFLM / completions model:
    one scorer for every runtime, so the tokenization (the prepared folder's tokenizer, lm-eval's
    TemplateLM context/continuation split, HFLM's BOS rule), the request order and the float64
    log-softmax are identical across backends and only the runtime differs; llama.cpp gives full
    logits in-process (no server, no logprob alignment to verify, no top-k truncation), and the
    llamacpp backend reuses the KV cache of a multiple-choice item's shared context. chat: build
    requests through the tokenizer's chat template (lm-eval's apply_chat_template). batch_size:
    requests per forward on a backend that batches scoring (loglikelihood_many: transformers)."""
    from lm_eval.api.model import TemplateLM

    class _LM(TemplateLM):
        def __init__(self) -> None:
            super().__init__()
            self.loaded, self.tokenizer = loaded, tokenizer
            self.chat = chat

        @property
        def eot_token_id(self) -> int:
            return self.tokenizer.eos_token_id

        @property
        def prefix_token_id(self) -> int:  # as HFLM: BOS, else EOS
            bos = self.tokenizer.bos_token_id
            return bos if bos is not None else self.tokenizer.eos_token_id

        @property
        def tokenizer_name(self) -> str:
            return str(getattr(self.tokenizer, "name_or_path", "tokenizer")).replace("/", "__")

        def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
            # HFLM's rule (lm-eval 0.4.13): the tokenizer's default, unless the text already has BOS
            kw = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
            if add_special_tokens is None and string.startswith(self.tokenizer.decode(self.prefix_token_id)):
                kw["add_special_tokens"] = False
            return self.tokenizer.encode(string, **kw)

        def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
            many = getattr(self.loaded, "loglikelihood_many", None)  # a backend that batches
            out = []
            for start in range(0, len(requests), batch_size if many else 1):
                chunk = requests[start:start + batch_size] if many else requests[start:start + 1]
                # in order: the choices of one item share its context (llamacpp keeps that KV)
                answers = many([(c, x) for _, c, x in chunk]) if many else [
                    self.loaded.loglikelihood(chunk[0][1], chunk[0][2])]
                for (key, _, _), ans in zip(chunk, answers):
                    self.cache_hook.add_partial("loglikelihood", key, ans)
                    out.append(ans)
            return out

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            raise UserError(f"{_KEY}: a task needs loglikelihood_rolling (perplexity), which llmbench's "
                            "scorer does not offer; use multiple-choice tasks")

        def generate_until(self, requests, disable_tqdm: bool = False):
            raise UserError(f"{_KEY}: a task needs generate_until (free generation), which llmbench's "
                            "scorer does not offer; use multiple-choice tasks")

        def apply_chat_template(self, chat_history, add_generation_prompt: bool = True) -> str:
            return self.tokenizer.apply_chat_template(chat_history, tokenize=False,
                                                      add_generation_prompt=add_generation_prompt)

    return _LM()


def prompt_format(tokenizer: Any, chat: bool) -> str:
    """'chat template' when the model spec asks for it (chat: true) and the tokenizer has one."""
    return "chat template" if chat and getattr(tokenizer, "chat_template", None) else "plain"


def evaluate_model(
    loaded: Any,
    tokenizer: Any,
    *,
    tasks: list[str],
    limit: int | None,
    num_fewshot: int | None,
    batch_size: int = 1,
    include_path: str | os.PathLike | None = None,
    chat: bool = False,
) -> tuple[dict[str, TaskScore], list[dict]]:
    """Score a deployment (a backends.Loaded, or a torch model) on `tasks` with lm-eval.
    Returns ({task: TaskScore}, per-sample records).

    limit / num_fewshot come validated from params (config.Evaluate); num_fewshot=None keeps
    each task's own default. chat: through the chat template when the tokenizer has one
    (prompt_format says which). Raises UserError for bad task names or unloadable datasets."""
    from lm_eval import simple_evaluate

    if not hasattr(loaded, "loglikelihood"):  # a bare torch model: the transformers backend around it
        from llmbench.backends import transformers as hf

        loaded = hf.wrap(loaded, tokenizer)
    tm, objects, suites = load_tasks(list(tasks), include_path)
    templated = prompt_format(tokenizer, chat) == "chat template"
    results = simple_evaluate(
        model=make_lm(loaded, tokenizer, chat=templated, batch_size=batch_size),
        tasks=objects,
        task_manager=tm,  # without it lm-eval builds the full ~8 s index
        num_fewshot=num_fewshot,
        limit=limit,
        log_samples=True,
        apply_chat_template=templated,
    )
    leaf_tasks = {}
    for obj in objects:
        for t in obj.get_all_tasks() if hasattr(obj, "get_all_tasks") else [obj]:
            leaf_tasks[t.task_name] = t
    return task_scores(results, suites, limit), sample_records(results, leaf_tasks)


def ok_run(deployment: Deployment, tasks: dict[str, TaskScore], fmt: str, wall_s: float | None = None
           ) -> EvaluateRun:
    return EvaluateRun(deployment=deployment, status="ok", prompt_format=fmt, tasks=tasks, wall_s=wall_s)


def record(model: str, weights: str, runs: list[EvaluateRun], reason: str | None = None) -> EvaluateResult:
    """metrics/evaluate/<model>.<backend>.json: ok when any deployment was scored; else `reason` (or the
    first run's) says why not (e.g. random weights, whose accuracy is chance by construction)."""
    ok = any(r.status == "ok" for r in runs)
    why = None if ok else (reason or next((r.reason for r in runs if r.reason), "nothing was scored"))
    status = "ok" if ok else "failed" if any(r.status == "failed" for r in runs) else "skipped"
    return EvaluateResult(model=model, weights=weights, status=status, reason=why,
                          lm_eval_version=lm_eval_version(), runs=runs)
