"""Reference dataset sources: bundled table, url with pinned sha256, hf at a pinned revision."""
import hashlib
import json
import socket
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from llmbench.config import Dataset, parse_params
from llmbench.errors import UserError
from llmbench.reference import V1_PROTOCOL, fetch, load_reference

REV = "0123456789abcdef0123456789abcdef01234567"


def ds(**keys) -> Dataset:
    """The dataset: section as the stage gets it: through params validation."""
    raw = {"roster": ["t"], "models": {"t": {"source": "random", "config": "tiny-gpt2"}}, "dataset": keys}
    return parse_params(raw).dataset


@pytest.fixture
def http_dir(tmp_path):
    """A folder served by `python -m http.server` on loopback; yields (folder, base url)."""
    root = tmp_path / "www"
    root.mkdir()
    proc = subprocess.Popen([sys.executable, "-u", "-m", "http.server", "0", "--bind",
                             "127.0.0.1", "--directory", str(root)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()  # "Serving HTTP on 127.0.0.1 port N (http://...) ..."
        port = int(line.split(" port ")[1].split()[0])
        yield root, f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        proc.stdout.close()


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def leaderboard_csv(path):
    pd.DataFrame({"Model": ["org/a", "org/b"], "#Params (B)": [0.125, 1.1],
                  "ARC": [22.95, 33.87], "HellaSwag": [30.26, 60.31], "MMLU": [25.97, 26.04],
                  "TruthfulQA": [45.58, 37.3], "Winogrande": [51.78, 59.51], "GSM8K": [0.3, np.nan],
                  "Average ⬆️": [29.47, 43.0], "Hub License": ["mit", "apache-2.0"]}).to_csv(path, index=False)


def test_bundled_table_matches_design_numbers(tmp_path):
    info = fetch(ds(source="bundled"), tmp_path / "ref")
    csv = tmp_path / "ref" / "reference.csv"
    meta = json.loads((tmp_path / "ref" / "reference.json").read_text())
    assert meta == info and meta["sha256"] == sha(csv) and meta["source"]["kind"] == "bundled"
    df = load_reference(tmp_path / "ref").set_index("model_id")
    assert meta["rows"] == len(df) == 6 and meta["columns"][:2] == ["model_id", "params"]
    neo = df.loc["EleutherAI/gpt-neo-125m"]
    assert neo["protocol"] == V1_PROTOCOL and neo["params"] == 125_198_592
    assert neo["average"] == pytest.approx((22.95 + 30.26 + 25.97 + 45.58 + 51.78 + 0.30) / 6, abs=1e-3)
    assert "25-shot acc_norm" in neo["protocol_detail"] and "truthfulqa 0-shot mc2" in neo["protocol_detail"]
    tl = df.loc["TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T"]
    assert tl["truthfulqa"] == 37.3 and "truncated" in tl["note"]
    gpt2 = df.loc["gpt2"]
    assert "second-hand" in gpt2["source"] and np.isnan(gpt2["winogrande"]) and gpt2["average_n"] == 4
    smol, gemma = df.loc["HuggingFaceTB/SmolLM2-135M"], df.loc["google/gemma-3-270m"]
    # other protocols: kept, labelled, and never averaged with the v1 leaderboard
    assert smol["protocol"] != V1_PROTOCOL and np.isnan(smol["average"]) and smol["hellaswag"] == 42.1
    assert "0-shot" in smol["protocol_detail"] and smol["extra_piqa"] == 68.4
    assert gemma["hellaswag"] == 40.9 and "10-shot" in gemma["protocol_detail"]
    assert gemma["extra_boolq"] == 61.4 and gemma["extra_arc_easy"] == 57.7


def test_url_csv_with_good_sha(tmp_path, http_dir):
    root, base = http_dir
    leaderboard_csv(root / "lb.csv")
    cfg = {"source": "url", "url": f"{base}/lb.csv", "sha256": sha(root / "lb.csv"),
           "protocol": V1_PROTOCOL}
    info = fetch(ds(**cfg), tmp_path / "ref")
    df = load_reference(tmp_path / "ref").set_index("model_id")
    assert info["rows"] == 2 and info["source"]["url"] == cfg["url"]
    assert df.loc["org/a", "params"] == pytest.approx(125e6)  # billions -> count
    assert df.loc["org/a", "arc"] == 22.95 and df.loc["org/a", "protocol"] == V1_PROTOCOL
    # unknown columns are kept, prefixed; the source's own average too (ours is recomputed)
    assert df.loc["org/b", "extra_Hub License"] == "apache-2.0"
    assert df.loc["org/b", "extra_Average ⬆️"] == 43.0
    assert df.loc["org/b", "average"] == pytest.approx((33.87 + 60.31 + 26.04 + 37.3 + 59.51) / 5)


def test_url_parquet_long_format(tmp_path, http_dir):
    root, base = http_dir
    long = pd.DataFrame({"model_id": ["m", "m"], "benchmark": ["arc", "piqa"], "value": [40.0, 60.0],
                         "shots": [25, 0], "metric": ["acc_norm", "acc"], "protocol": ["mine", "mine"]})
    long.to_parquet(root / "t.parquet")
    fetch(ds(source="url", url=f"{base}/t.parquet", sha256=sha(root / "t.parquet")), tmp_path / "ref")
    row = load_reference(tmp_path / "ref").iloc[0]
    assert row["arc"] == 40.0 and row["extra_piqa"] == 60.0 and row["protocol"] == "mine"


def test_url_bad_sha_writes_nothing(tmp_path, http_dir):
    root, base = http_dir
    leaderboard_csv(root / "lb.csv")
    wrong = "0" * 64
    out = tmp_path / "ref"
    with pytest.raises(UserError) as err:
        fetch(ds(source="url", url=f"{base}/lb.csv", sha256=wrong), out)
    msg = str(err.value)
    assert "\n" not in msg and f"{base}/lb.csv" in msg and wrong in msg and sha(root / "lb.csv") in msg
    assert not out.exists()
    # an earlier good fetch stays byte-for-byte as it was
    fetch(ds(source="bundled"), out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(UserError):
        fetch(ds(source="url", url=f"{base}/lb.csv", sha256=wrong), out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_url_unreachable(tmp_path, http_dir):
    _, base = http_dir
    with pytest.raises(UserError, match="cannot download"):
        fetch(ds(source="url", url=f"{base}/missing.csv", sha256="a" * 64), tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_url_honours_timeout_s(tmp_path):
    # a listening socket that never answers: only dataset.timeout_s ends the wait
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        url = f"http://127.0.0.1:{srv.getsockname()[1]}/x.csv"
        start = time.monotonic()
        with pytest.raises(UserError, match="cannot download.*timed out"):
            fetch(ds(source="url", url=url, sha256="a" * 64, timeout_s=0.5), tmp_path / "r")
        assert time.monotonic() - start < 5
    assert ds().timeout_s == 60  # the default a user sees in the schema


def test_hf_offline_fails_fast(tmp_path, monkeypatch):
    import huggingface_hub.constants as hfc

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hfc, "HF_HUB_CACHE", str(tmp_path / "hf"))
    cfg = {"source": "hf", "hf_repo": "optimum-benchmark/llm-perf-leaderboard",
           "hf_revision": REV, "hf_filename": "perf-df-pytorch-cpu-unquantized-32vCPU-C7i.csv"}
    start = time.monotonic()
    with pytest.raises(UserError) as err:
        fetch(ds(**cfg), tmp_path / "ref")
    assert time.monotonic() - start < 10
    assert "HF_HUB_OFFLINE" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "ref").exists()


def test_hf_cached_llm_perf_file_is_normalised(tmp_path, monkeypatch):
    import huggingface_hub.constants as hfc

    name = "perf-df-pytorch-cpu-unquantized-32vCPU-C7i.csv"
    snap = tmp_path / "hf" / "datasets--optimum-benchmark--llm-perf-leaderboard" / "snapshots" / REV
    snap.mkdir(parents=True)
    pd.DataFrame({"config.backend.model": ["gpt2", "gpt2"], "config.backend.name": ["pytorch"] * 2,
                  "config.backend.torch_dtype": ["float32", "bfloat16"],
                  "report.prefill.latency.p50": [0.02, 0.015], "report.per_token.latency.p50": [0.01, 0.008],
                  "report.decode.throughput.value": [100.0, 125.0],
                  "report.decode.memory.max_allocated": [600.0, 400.0],
                  "report.decode.efficiency.value": [1e6, 1.2e6],
                  "config.scenario.input_shapes.batch_size": [1, 1]}).to_csv(snap / name, index=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hfc, "HF_HUB_CACHE", str(tmp_path / "hf"))
    cfg = {"source": "hf", "hf_repo": "optimum-benchmark/llm-perf-leaderboard",
           "hf_revision": REV, "hf_filename": name}
    info = fetch(ds(**cfg), tmp_path / "ref")
    df = load_reference(tmp_path / "ref")
    assert info["source"]["revision"] == REV and info["rows"] == 2
    assert df["decode_tps"].tolist() == [100.0, 125.0] and df["dtype"].tolist() == ["float32", "bfloat16"]
    assert df["per_token_latency_p50_s"].tolist() == [0.01, 0.008] and (df["backend"] == "pytorch").all()
    assert df["memory_mb"].tolist() == [600.0, 400.0] and (df["protocol"] == "llm-perf-leaderboard").all()
    assert df["extra_config.scenario.input_shapes.batch_size"].tolist() == [1, 1]
    with pytest.raises(UserError, match="sha256 mismatch"):  # an optional pin is enforced too
        fetch(ds(**cfg, sha256="b" * 64), tmp_path / "ref2")


def test_load_reference_detects_hand_edits(tmp_path):
    fetch(ds(source="bundled"), tmp_path)
    with open(tmp_path / "reference.csv", "a") as fh:
        fh.write("x\n")
    with pytest.raises(UserError, match="sha256 differs"):
        load_reference(tmp_path)
    with pytest.raises(UserError, match="fetch_dataset"):
        load_reference(tmp_path / "nowhere")


@pytest.mark.parametrize("keys,expected", [
    ({"source": "ftp"}, "dataset.source: "),
    ({"source": "url", "url": "http://127.0.0.1:9/x.csv"}, "dataset: source 'url' needs dataset.url and dataset.sha256"),
    ({"source": "url", "url": "file:///etc/passwd", "sha256": "a" * 64}, "dataset.url: "),
    ({"source": "url", "url": "http://x/y.csv", "sha256": "abc"}, "dataset.sha256: "),
    ({"source": "hf", "hf_repo": "o/r", "hf_revision": "main", "hf_filename": "f.csv"}, "dataset.hf_revision: "),
    ({"source": "url", "url": "http://x/y.csv", "sha256": "a" * 64, "timeout_s": 0}, "dataset.timeout_s: "),
])
def test_bad_dataset_keys_are_one_line_errors_at_load(keys, expected, tmp_path):
    # checked once, by the schema, before any stage runs: fetch never sees a bad section
    with pytest.raises(UserError) as err:
        ds(**keys)
    assert str(err.value).startswith("params.yaml: " + expected) and "\n" not in str(err.value)


def test_sha256_pin_is_normalised():
    assert ds(source="url", url="http://x/y.csv", sha256=" " + "A" * 64 + " ").sha256 == "a" * 64
