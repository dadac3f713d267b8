"""Protocol requests per second of the emulator, next to a bare starlette endpoint.

Both servers run the same way (one uvicorn worker, its own process, access log off); the load
comes from separate processes speaking raw HTTP/1.1 over keep-alive asyncio streams, so the
client is not the bottleneck. The emulator's load is a submit -> status -> result loop per
client (speed 1e9: jobs are done when first looked at; no download, so no encoding). Rounds
alternate between the two servers; medians and the ratio are printed.

    python benchmarks/emulator_rps.py [--clients 64] [--seconds 3] [--rounds 3] [--procs 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import statistics
import subprocess
import sys
import time
from typing import Any

MODEL = "community/wan-2-2/vace-fun"
TOKEN = "bench-token"
BODY = json.dumps(
    {
        "56_text": "bench",
        "118_image": "https://example.com/a.png",
        "4_valuex3_value": "480x480 (1:1)",
    }
).encode()


def _bare_server() -> None:
    """A starlette app with one JSON endpoint, served like the emulator."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from orchestrator.emulator.server import bind

    async def ping(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/v1/ping", ping, methods=["GET", "POST"])])
    sock = bind("127.0.0.1", 0)
    print(f"http://127.0.0.1:{sock.getsockname()[1]}/v1", flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    uvicorn.Server(config).run(sockets=[sock])


def _request(method: str, path: str, host: str, body: bytes = b"") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\n"
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> bytes:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(head.split(b"\r\n", 1)[0].decode())
    marker = head.lower().index(b"content-length:") + 15
    length = int(head[marker : head.index(b"\r\n", marker)])
    return await reader.readexactly(length)


async def _client(port: int, bare: bool, until: float, counts: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    host = f"127.0.0.1:{port}"
    ping = _request("GET", "/v1/ping", host)
    submit = _request("POST", f"/v1/models/{MODEL}", host, BODY)
    done = 0
    while time.time() < until:
        if bare:
            await _exchange(reader, writer, ping)
            done += 1
            continue
        rid = json.loads(await _exchange(reader, writer, submit))["request_id"]
        await _exchange(reader, writer, _request("GET", f"/v1/requests/{rid}/status", host))
        await _exchange(reader, writer, _request("GET", f"/v1/requests/{rid}/result", host))
        done += 3
    counts.append(done)
    writer.close()


def _load(port: int, bare: bool, clients: int, start: float, seconds: float, out: Any) -> None:
    async def main() -> int:
        counts: list[int] = []
        await asyncio.sleep(max(0.0, start - time.time()))
        await asyncio.gather(
            *(_client(port, bare, start + seconds, counts) for _ in range(clients))
        )
        return sum(counts)

    out.put(asyncio.run(main()))


def _round(port: int, bare: bool, clients: int, procs: int, seconds: float) -> float:
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    start = time.time() + 0.5
    share = [clients // procs + (i < clients % procs) for i in range(procs)]
    workers = [
        context.Process(target=_load, args=(port, bare, n, start, seconds, out)) for n in share
    ]
    for worker in workers:
        worker.start()
    total = sum(out.get(timeout=seconds + 60) for _ in workers)
    for worker in workers:
        worker.join()
    return float(total) / seconds


def _spawn(args: list[str]) -> tuple[subprocess.Popen[bytes], int]:
    process = subprocess.Popen(args, stdout=subprocess.PIPE)
    assert process.stdout is not None
    url = process.stdout.readline().decode().strip()
    return process, int(url.rsplit(":", 1)[1].split("/")[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--procs", type=int, default=2, help="load-generating processes")
    parser.add_argument("--bare-server", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.bare_server:
        _bare_server()
        return
    emulator_args = [sys.executable, "-m", "orchestrator", "emulator", "--port", "0"]
    emulator_args += ["--speed", "1e9", "--balance", "1e12", "--token", TOKEN]
    emulator, emulator_port = _spawn(emulator_args)
    bare, bare_port = _spawn([sys.executable, __file__, "--bare-server"])
    rates: dict[str, list[float]] = {"emulator": [], "bare": []}
    try:
        for n in range(options.rounds):
            for name, port in (("emulator", emulator_port), ("bare", bare_port)):
                rate = _round(port, name == "bare", options.clients, options.procs, options.seconds)
                rates[name].append(rate)
                print(f"round {n + 1}: {name:<8} {rate:8.0f} req/s", flush=True)
    finally:
        for process in (emulator, bare):
            process.terminate()
            process.wait(timeout=10)
    emu, base = statistics.median(rates["emulator"]), statistics.median(rates["bare"])
    print(f"clients {options.clients}, one uvicorn worker each, median of {options.rounds} rounds")
    print(f"emulator protocol (submit/status/result): {emu:8.0f} req/s")
    print(f"bare starlette endpoint:                  {base:8.0f} req/s")
    print(f"ratio emulator/bare:                      {emu / base:8.2f}")


if __name__ == "__main__":
    main()
