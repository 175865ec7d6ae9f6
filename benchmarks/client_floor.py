"""The load generator's own floor: against an instant-reply streaming server on 127.0.0.1 (a
separate process, so its CPU is not ours), what TTFT, per-chunk gap and CPU does the client cost?

    .venv/bin/python benchmarks/client_floor.py [--requests 200] [--tokens 32] [--concurrency 8]

The server answers every request with a prebuilt SSE body (one chunk per token), so everything
measured is client-side: httpx connection + request, SSE line parsing, JSON decoding, timestamps.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np


def _body(tokens: int) -> bytes:
    def chunk(text, finish=None):
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        return ("data: " + json.dumps({"id": "cmpl-x", "object": "text_completion",
                                        "choices": [choice]}) + "\n\n").encode()
    return b"".join([chunk(f" tok{i}") for i in range(tokens)] + [chunk("", "length"),
                                                                    b"data: [DONE]\n\n"])


async def _serve(port_file: str, tokens: int) -> None:
    body = _body(tokens)
    head = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: "
            + str(len(body)).encode() + b"\r\n\r\n")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:  # keep-alive: one connection serves many requests
                header = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in header.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                await reader.readexactly(length)
                if header.startswith(b"GET"):
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
                else:
                    writer.write(head + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    with open(port_file, "w") as fh:
        fh.write(str(server.sockets[0].getsockname()[1]))
    async with server:
        await server.serve_forever()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--concurrency", type=int, default=8)  # the highest default level
    ap.add_argument("--serve", help=argparse.SUPPRESS)  # internal: run as the server
    args = ap.parse_args()
    if args.serve:
        asyncio.run(_serve(args.serve, args.tokens))
        return

    from llmbench.serving import SLO, Endpoint, ServeParams, run
    port_file = f"/tmp/llmbench_client_floor_{os.getpid()}.port"
    server = subprocess.Popen([sys.executable, __file__, "--serve", port_file,
                               "--tokens", str(args.tokens)])
    try:
        for _ in range(100):
            if os.path.exists(port_file) and open(port_file).read():
                break
            time.sleep(0.05)
        url = f"http://127.0.0.1:{open(port_file).read()}/v1"
        ep = Endpoint(url=url, model="instant", fixed_length=False)
        rows = []
        for c in sorted({1, args.concurrency}):
            params = ServeParams(profiles=["concurrency"], concurrency=[c], warmup_requests=5,
                                 requests_per_level=args.requests, max_tokens=args.tokens)
            cpu0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            result = run(ep, "floor", [{"id": "p", "text": "hello"}], params, SLO())
            cpu1, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - t0
            cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
            lv = result.levels[0]
            assert lv.n_ok == args.requests, lv.failures
            rows.append(dict(
                concurrency=c, ttft_p50_ms=lv.ttft_s.p50 * 1e3, ttft_p99_ms=lv.ttft_s.p99 * 1e3,
                itl_p50_us=lv.itl_s.p50 * 1e6, itl_p99_us=lv.itl_s.p99 * 1e6,
                tpot_p50_us=lv.tpot_s.p50 * 1e6, req_s=lv.request_throughput_rps,
                chunks_s=lv.output_tok_s, cpu_core_fraction=cpu / wall,
                cpu_us_per_chunk=cpu / (args.requests * args.tokens + 5 * args.tokens) * 1e6))
        print(json.dumps({"requests": args.requests, "tokens": args.tokens, "levels": rows,
                          "cpus": os.cpu_count()}, indent=1))
        print(f"client floor: TTFT p50 {rows[0]['ttft_p50_ms']:.2f} ms at 1 stream; per chunk "
              f"{np.mean([r['cpu_us_per_chunk'] for r in rows]):.0f} us CPU; at "
              f"{rows[-1]['concurrency']} streams {rows[-1]['chunks_s']:.0f} chunks/s using "
              f"{rows[-1]['cpu_core_fraction']:.2f} of a core")
    finally:
        server.kill()
        server.wait()
        if os.path.exists(port_file):
            os.unlink(port_file)


if __name__ == "__main__":
    main()
