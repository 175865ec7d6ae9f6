"""The load generator against fault-injecting servers on 127.0.0.1 (real sockets, real HTTP): every
run ends within its cap, every failure is counted by kind, nothing is silently dropped."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import count

import pytest

from llmbench.errors import UserError
from llmbench.serving import SLO, Endpoint, ServeParams, free_port, preflight, run

PLANTED = "sk-planted-7f3e9c1d2b"  # must never appear in any output
PROMPTS = [{"id": f"p{i}", "text": f"prompt number {i}"} for i in range(3)]


def _chunk(text: str | None, finish: str | None = None) -> bytes:
    body = {"choices": [{"index": 0, "text": text or "", "finish_reason": finish}]}
    return f"data: {json.dumps(body)}\n\n".encode()


class Handler(BaseHTTPRequestHandler):
    # HTTP/1.0: the body ends when the connection closes, so "end early" is a clean close
    counter = count()

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _rejected(self) -> bool:
        if self.path.startswith("/auth/") and self.headers.get("Authorization") != f"Bearer {PLANTED}":
            self._send_head(401, "application/json")
            self.wfile.write(b'{"error": "bad key"}')
            return True
        return False

    def do_GET(self):
        if self._rejected():
            return
        self._send_head(200, "application/json")
        self.wfile.write(b'{"object": "list", "data": []}')

    def _send_head(self, code: int, ctype: str = "text/event-stream") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.end_headers()

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        mode = self.path.strip("/").split("/")[0]
        n = next(Handler.counter)
        auth = self.headers.get("Authorization", "")
        if self._rejected():
            return
        if mode == "flaky" and n % 4 in (1, 2):
            # the 500 body echoes the key back: the client must scrub it from its error text
            self._send_head(500 if n % 4 == 1 else 429, "application/json")
            self.wfile.write(json.dumps({"error": f"boom, you sent {auth}"}).encode())
            return
        self._send_head(200)
        for i in range(4):
            self.wfile.write(_chunk(f" tok{i}"))
            self.wfile.flush()
            if i == 1 and mode == "stall":
                time.sleep(3.0)
            if i == 1 and mode == "early":
                return  # close without finish_reason or [DONE]
            if i == 1 and mode == "malformed":
                self.wfile.write(b"data: {oops not json\n\n")
                return
            time.sleep(0.002)
        self.wfile.write(_chunk(None, "length"))
        self.wfile.write(b"data: [DONE]\n\n")


@pytest.fixture(scope="module")
def fault_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _params(**kw) -> ServeParams:
    base = dict(profiles=["concurrency"], concurrency=[1, 2], requests_per_level=8,
                warmup_requests=0, level_time_cap_s=10.0, request_timeout_s=5.0,
                stall_timeout_s=0.5, connect_timeout_s=1.0, max_tokens=4)
    return ServeParams(**{**base, **kw})


def _check_accounting(result) -> None:
    for lv in result.levels:
        assert len(lv.samples) == lv.n_sent
        assert lv.n_ok + sum(lv.failures.values()) == lv.n_sent
        if not lv.capped:
            assert lv.n_sent == lv.n_planned


def _timed(endpoint, params, **kw):
    t0 = time.monotonic()
    result = run(endpoint, "fault", PROMPTS, params, SLO(), **kw)
    return result, time.monotonic() - t0


def test_healthy_server_all_ok(fault_server):
    result, _ = _timed(Endpoint(url=f"{fault_server}/ok/v1", model="m"), _params())
    _check_accounting(result)
    for lv in result.levels:
        assert lv.status == "ok" and lv.n_ok == 8 and lv.meets_slo
        assert all(s.n_out == 4 and len(s.itl_s) == 3 and s.tokens_source == "chunks"
                   for s in lv.samples)
    assert result.capacity is not None and result.capacity.level == 2


def test_refused_connections_counted(fault_server):
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    result, wall = _timed(Endpoint(url=url, model="m"), _params())
    assert wall < 10
    _check_accounting(result)
    for lv in result.levels:
        assert lv.failures == {"error:connect": 8} and lv.status == "failed"
        assert "max_error_rate" in lv.reason
    assert result.status == "failed" and "error:connect" in result.reason
    assert result.capacity is None


def test_500_and_429_counted_by_kind_and_key_scrubbed(fault_server, monkeypatch, tmp_path, capfd):
    monkeypatch.setenv("LLMBENCH_TEST_KEY", PLANTED)
    ep = Endpoint(url=f"{fault_server}/flaky/v1", model="m", api_key_env="LLMBENCH_TEST_KEY")
    Handler.counter = count()
    result, _ = _timed(ep, _params())
    _check_accounting(result)
    total = {}
    for lv in result.levels:
        for kind, n in lv.failures.items():
            total[kind] = total.get(kind, 0) + n
        assert lv.status == "failed" and lv.error_rate == pytest.approx(0.5)
    assert total == {"error:http_500": 4, "error:http_429": 4}
    errors = [s.error for lv in result.levels for s in lv.samples if s.error]
    assert errors and all("***" in e for e in errors if "500" in e or "boom" in e)
    out = tmp_path / "serve.json"
    out.write_text(result.model_dump_json())
    captured = capfd.readouterr()
    for text in (out.read_text(), captured.out, captured.err, repr(ep), ep.model_dump_json()):
        assert PLANTED not in text


def test_key_is_sent_and_missing_variable_is_one_line(fault_server, monkeypatch):
    ep = Endpoint(url=f"{fault_server}/auth/v1", model="m", api_key_env="LLMBENCH_TEST_KEY")
    monkeypatch.delenv("LLMBENCH_TEST_KEY", raising=False)
    with pytest.raises(UserError, match="LLMBENCH_TEST_KEY is not set") as info:
        run(ep, "auth", PROMPTS, _params(), SLO())
    assert "\n" not in str(info.value)
    monkeypatch.setenv("LLMBENCH_TEST_KEY", PLANTED)
    result = run(ep, "auth", PROMPTS, _params(concurrency=[1], requests_per_level=2), SLO())
    assert result.levels[0].n_ok == 2  # the server checked the Bearer key
    monkeypatch.setenv("LLMBENCH_TEST_KEY", "wrong")
    with pytest.raises(UserError, match="401"):
        preflight(Endpoint(url=f"{fault_server}/auth/v1", model="m",
                           api_key_env="LLMBENCH_TEST_KEY"), "auth")


def test_stall_mid_stream_times_out(fault_server):
    result, wall = _timed(Endpoint(url=f"{fault_server}/stall/v1", model="m"),
                          _params(requests_per_level=3))
    _check_accounting(result)
    assert wall < 2 * 3 * 1.5  # each request stops at the 0.5 s stall timeout, not the 3 s stall
    for lv in result.levels:
        assert lv.failures == {"timeout": 3}
        assert all(s.ttft_s is not None and s.n_chunks == 2 for s in lv.samples)


def test_level_time_cap_cancels_in_flight(fault_server):
    params = _params(concurrency=[1], requests_per_level=5, stall_timeout_s=10,
                     level_time_cap_s=1.0)
    result, wall = _timed(Endpoint(url=f"{fault_server}/stall/v1", model="m"), params)
    assert wall < 3
    lv = result.levels[0]
    _check_accounting(result)
    assert lv.capped and lv.n_planned == 5 and lv.n_sent == 1
    assert lv.failures == {"timeout": 1} and "time cap" in lv.samples[0].error


def test_stream_ending_early_is_truncated(fault_server):
    result, _ = _timed(Endpoint(url=f"{fault_server}/early/v1", model="m"), _params())
    _check_accounting(result)
    for lv in result.levels:
        assert lv.failures == {"truncated": 8} and lv.status == "failed"
        assert all(s.finish_reason is None and s.n_chunks == 2 for s in lv.samples)


def test_malformed_sse(fault_server):
    result, _ = _timed(Endpoint(url=f"{fault_server}/malformed/v1", model="m"), _params())
    _check_accounting(result)
    for lv in result.levels:
        assert lv.failures == {"error:malformed_sse": 8}


def test_unreachable_url_fails_fast_with_one_line():
    t0 = time.monotonic()
    with pytest.raises(UserError, match=r"endpoints\.remote\.url: cannot reach") as info:
        preflight(Endpoint(url="http://10.255.255.1:8000/v1", model="m"), "remote",
                  timeout_s=3.0)
    assert time.monotonic() - t0 < 5 and "\n" not in str(info.value)
    with pytest.raises(UserError, match="cannot reach"):
        preflight(Endpoint(url=f"http://127.0.0.1:{free_port()}/v1", model="m"), "remote")


def test_rate_profile_poisson_arrivals_relative_to_single_stream(fault_server):
    params = _params(profiles=["concurrency", "rate"], concurrency=[1], rate_multipliers=[0.5],
                     requests_per_level=20, seed=7)
    result, _ = _timed(Endpoint(url=f"{fault_server}/ok/v1", model="m"), params)
    _check_accounting(result)
    single, rate = result.levels
    assert result.single_stream_rps == pytest.approx(single.request_throughput_rps)
    assert rate.rate_rps == pytest.approx(0.5 * result.single_stream_rps)
    due = [s.scheduled_s for s in sorted(rate.samples, key=lambda s: s.index)]
    gaps = [b - a for a, b in zip(due, due[1:])]
    assert due[0] == 0 and all(g > 0 for g in gaps) and len(set(gaps)) == len(gaps)
    # exponential gaps: mean ~ 1/rate (19 draws: well inside a factor of 2)
    assert 0.5 < (sum(gaps) / len(gaps)) * rate.rate_rps < 2.0
    assert all(s.sent_s >= s.scheduled_s - 0.01 for s in rate.samples)  # loop clock slack
