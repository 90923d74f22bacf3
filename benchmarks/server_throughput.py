"""Server throughput: requests/s and generated tokens/s with 16 concurrent streaming clients vs one at a time.

    .venv/bin/python benchmarks/server_throughput.py [--model DIR] [--requests 32] [--clients 16]
                                                     [--max-tokens 16] [--rounds 2] [--image]

The real stack end to end: `minicpmv.load` + `ChatService` (dynamic batching in its engine thread) behind the
FastAPI/uvicorn server on 127.0.0.1, driven over HTTP with streaming requests. Every request is greedy with
`min_tokens = max_tokens`, so each generates exactly `--max-tokens` tokens and both modes do the same work;
prompts differ per request. `--image` adds a different 448x448 image to every prompt (no vision-cache hits).
Both modes run in the same process after a warm-up, interleaved for `--rounds` rounds (sequential, concurrent,
sequential, ...) so that a busy machine slows both alike; the table shows the best (fastest) round of each mode
and the ratio column is concurrent / sequential. Default model: the tiny reference model (`$MINICPMV_REFERENCE_DIR/tiny_model`).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import socket
import statistics
import threading
import time
from pathlib import Path

import httpx
import torch
import uvicorn
from PIL import Image

from minicpmv.api import load
from minicpmv.chat import ChatService
from minicpmv.serve import ServerConfig
from minicpmv.serve.openai_server import create_app

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("MINICPMV_REFERENCE_DIR", ROOT.parent / "shared" / "reference"))


def start_server(service: ChatService) -> tuple[uvicorn.Server, threading.Thread, str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(service, ServerConfig(max_in_flight=256)), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    return server, thread, f"http://127.0.0.1:{sock.getsockname()[1]}"


def request_body(i: int, max_tokens: int, with_image: bool) -> dict:
    content: list[dict] = [{"type": "text", "text": f"Request {i}: tell me a short story about the number {i}."}]
    if with_image:
        buf = io.BytesIO()
        Image.new("RGB", (448, 448), ((37 * i) % 256, (91 * i) % 256, (53 * i) % 256)).save(buf, format="PNG")
        url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
        content.insert(0, {"type": "image_url", "image_url": {"url": url}})
    return {"model": "bench", "messages": [{"role": "user", "content": content}], "stream": True,
            "stream_options": {"include_usage": True}, "max_tokens": max_tokens, "min_tokens": max_tokens,
            "temperature": 0}


async def one_request(http: httpx.AsyncClient, body: dict) -> tuple[float, int]:
    """(time to first content token, completion tokens) of one streamed request."""
    start, first, tokens = time.perf_counter(), None, 0
    async with http.stream("POST", "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if first is None and any(c["delta"].get("content") for c in chunk["choices"]):
                first = time.perf_counter() - start
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return first if first is not None else float("nan"), tokens


async def run_mode(url: str, bodies: list[dict], clients: int) -> dict:
    """Send `bodies` with `clients` requests in flight at a time; wall time, tokens and mean TTFT."""
    queue: asyncio.Queue = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    results: list[tuple[float, int]] = []

    async def worker(http: httpx.AsyncClient) -> None:
        while not queue.empty():
            results.append(await one_request(http, queue.get_nowait()))

    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:
        start = time.perf_counter()
        await asyncio.gather(*(worker(http) for _ in range(clients)))
        wall = time.perf_counter() - start
    return {"wall": wall, "tokens": sum(t for _, t in results), "ttft": statistics.mean(f for f, _ in results),
            "requests": len(results)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=REFERENCE / "tiny_model")
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds per mode (the best is reported)")
    ap.add_argument("--image", action="store_true", help="a different 448x448 image in every request")
    args = ap.parse_args()

    torch.manual_seed(0)
    model, processor = load(args.model, device="cpu", dtype=torch.float32)
    service = ChatService(model, processor, max_batch_size=max(32, args.clients))
    server, thread, url = start_server(service)
    bodies = [request_body(i, args.max_tokens, args.image) for i in range(args.requests)]
    warmup = [request_body(10_000 + i, 4, args.image) for i in range(4)]
    asyncio.run(run_mode(url, warmup, 4))
    rounds: dict[str, list[dict]] = {"one at a time": [], f"{args.clients} concurrent": []}
    for _ in range(args.rounds):
        for (name, runs), clients in zip(rounds.items(), (1, args.clients)):
            runs.append(asyncio.run(run_mode(url, bodies, clients)))
    modes = {name: min(runs, key=lambda m: m["wall"]) for name, runs in rounds.items()}
    server.should_exit = True
    thread.join(30)
    service.close(cancel_running=True, timeout=30)

    base = modes["one at a time"]
    print(f"model `{args.model.name}`, {args.requests} streamed requests x {args.max_tokens} tokens"
          f"{', one 448x448 image each' if args.image else ''}; best of {args.rounds} interleaved rounds; "
          f"torch threads {torch.get_num_threads()}\n")
    print("| mode | wall s | requests/s | tokens/s | mean TTFT s | req/s ratio |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, m in modes.items():
        rps, tps = m["requests"] / m["wall"], m["tokens"] / m["wall"]
        ratio = rps / (base["requests"] / base["wall"])
        print(f"| {name} | {m['wall']:.2f} | {rps:.2f} | {tps:.1f} | {m['ttft']:.3f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
