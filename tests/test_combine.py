"""A model's per-backend result files as the one result the report reads (llmbench.combine)."""
from __future__ import annotations

import numpy as np
from test_gate import entry, profile

from llmbench.combine import merge, per_model
from llmbench.results import Deployment, Headline, InferResult, InferRun, write_result


def _cpp(rng):
    row = entry(rng, 5, config=("Q4_1", None, 1, 32, 16))
    return row.model_copy(update={"deployment": row.deployment.model_copy(update={"backend": "llamacpp"})})


def test_rows_keep_backend_order_and_the_first_headline():
    rng = np.random.default_rng(0)
    hf, cpp = profile("m", [entry(rng, 5)]), profile("m", [_cpp(rng)])
    cpp = cpp.model_copy(update={"headline": Headline(deployment=cpp.results[0].deployment, batch_size=1,
                                                      input_len=32)})
    both = merge([hf, cpp])
    assert [r.deployment.backend for r in both.results] == ["transformers", "llamacpp"]
    assert both.headline == cpp.headline  # transformers had none: the next backend's
    assert both.status == "ok"


def test_status_ok_when_any_backend_is_else_the_first_failure():
    rng = np.random.default_rng(1)
    ok = profile("m", [entry(rng, 5)])
    failed = ok.model_copy(update={"status": "failed", "reason": "llama.cpp crashed", "results": []})
    skipped = ok.model_copy(update={"status": "skipped", "reason": "backends.x.enabled is false", "results": []})
    assert merge([failed, ok]).status == "ok"
    assert (merge([skipped, failed]).status, merge([skipped, failed]).reason) == ("failed", "llama.cpp crashed")
    assert merge([skipped, skipped]).status == "skipped"


def test_per_model_reads_only_the_roster_and_the_files_that_exist(tmp_path):
    def path_of(m, b):
        return tmp_path / f"{m}.{b}.json"

    for b in ("transformers", "llamacpp"):
        write_result(path_of("a", b), InferResult(
            status="ok", model="a", weights="pretrained", batch_size=1, max_new_tokens=2,
            runs=[InferRun(status="ok", deployment=Deployment(model="a", backend=b, precision="x"))]))
    write_result(path_of("gone", "llamacpp"), InferResult(status="skipped", reason="r", model="gone",
                                                          weights="random", batch_size=1, max_new_tokens=2))
    got = per_model(path_of, ("a", "b"), ["transformers", "llamacpp"], InferResult)
    assert list(got) == ["a"] and [r.deployment.backend for r in got["a"].runs] == ["transformers", "llamacpp"]
