"""Load test of `llavakit serve`: many concurrent streaming clients on one continuously batched engine.

A LLaVA-shaped random model (about 32M parameters by default: a 6-layer ViT at 112 px and a 6-layer,
512-wide Llama with an 8000-word vocabulary; bench/generate.py builds it) is served by
`llavakit serve` in a subprocess on 127.0.0.1. Every request carries one image (a data URL) and a
question; decoding is greedy, so each answer must equal the same request's answer sent alone.

    1. alone:      each of the P distinct requests by itself, one after the other (the reference
                   answers, and the one-at-a-time throughput)
    2. concurrent: the same P requests at once (throughput against step 1; target >= 4x at P=16)
    3. load:       C concurrent streaming clients send R requests in total (latency p50/p99,
                   tokens/s, errors, answers identical to step 1)

Traffic goes to loopback only, every loop is bounded, and the run stops by itself (--time-limit).

    python bench/load_test.py                      # 64 clients, 320 requests, 128 tokens each
    python bench/load_test.py --clients 8 --requests 32 --new-tokens 8   # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=64, help="concurrent streaming clients in the load phase")
    p.add_argument("--requests", type=int, default=320, help="requests in the load phase")
    p.add_argument("--distinct", type=int, default=16, help="distinct requests (also the concurrency of phase 2)")
    p.add_argument("--new-tokens", type=int, default=128, help="max_tokens of every request")
    p.add_argument("--max-batch-size", type=int, default=32, help="the server's --max-batch-size")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="the server's torch threads")
    p.add_argument("--time-limit", type=float, default=900, help="seconds; no new requests after this")
    p.add_argument("--model", help="serve this checkpoint instead of building the random one")
    return p.parse_args(argv)


def build_model(directory: Path) -> None:
    """The random LLaVA of bench/generate.py at load-test size, with EOS never winning (fixed-length answers)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import torch
    from generate import build_hf_model
    from generate import parse_args as generate_args

    args = generate_args(["--vision-width", "256", "--vision-layers", "6", "--vision-heads", "4", "--image-size", "112",
                          "--text-width", "512", "--text-layers", "6", "--text-heads", "8", "--text-ffn", "1376",
                          "--vocab", "8000"])
    model = build_hf_model(args, directory)
    with torch.no_grad():
        model.lm_head.weight[:3] = 0  # <unk>, <s>, </s>
    model.save_pretrained(directory)
    print(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters", flush=True)


def make_requests(count: int, new_tokens: int) -> list[dict]:
    """Distinct chat requests: a random 112 px picture and a question of 8-23 vocabulary words."""
    from PIL import Image

    rng = np.random.default_rng(0)
    requests = []
    for i in range(count):
        pixels = (rng.random((112, 112, 3)) * 255).astype("uint8")
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
        question = " ".join(f"t{w}" for w in rng.integers(3, 7999, 8 + i % 16))
        requests.append({"model": "bench", "max_tokens": new_tokens, "temperature": 0, "stream": True,
                         "stream_options": {"include_usage": True},
                         "messages": [{"role": "user", "content": [
                             {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": question}]}]})
    return requests


async def one(client: httpx.AsyncClient, body: dict) -> dict:
    """Send one streaming request; its text, token count, latency and time to first token."""
    started = time.perf_counter()
    first, text, tokens = None, [], 0
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            return {"error": f"HTTP {response.status_code}: {(await response.aread())[:200]!r}"}
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                return {"error": str(chunk["error"])}
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            for choice in chunk.get("choices", []):
                if choice["delta"].get("content"):
                    first = first or time.perf_counter()
                    text.append(choice["delta"]["content"])
    end = time.perf_counter()
    return {"text": "".join(text), "tokens": tokens, "latency": end - started,
            "ttft": (first or end) - started}


async def run_phases(url: str, args: argparse.Namespace) -> dict:
    requests = make_requests(args.distinct, args.new_tokens)
    limits = httpx.Limits(max_connections=args.clients + 8, max_keepalive_connections=args.clients + 8)
    async with httpx.AsyncClient(base_url=url, trust_env=False, timeout=600, limits=limits) as client:
        await one(client, requests[0])  # warm-up (first image encode, allocations)
        out: dict = {}

        started = time.perf_counter()
        alone = [await one(client, body) for body in requests]
        out["sequential_s"] = time.perf_counter() - started
        if any("error" in r for r in alone):
            raise RuntimeError(f"a request failed alone: {alone}")
        reference = [r["text"] for r in alone]
        out["sequential_tokens"] = sum(r["tokens"] for r in alone)

        started = time.perf_counter()
        together = await asyncio.gather(*(one(client, body) for body in requests))
        out["concurrent_s"] = time.perf_counter() - started
        out["concurrent_tokens"] = sum(r.get("tokens", 0) for r in together)
        out["concurrent_mismatches"] = sum(r.get("text") != ref for r, ref in zip(together, reference))

        deadline = time.monotonic() + args.time_limit
        next_index, results = 0, []

        async def worker() -> None:
            nonlocal next_index
            while next_index < args.requests and time.monotonic() < deadline:
                index = next_index
                next_index += 1
                try:
                    result = await one(client, requests[index % len(requests)])
                except httpx.HTTPError as err:
                    result = {"error": f"{type(err).__name__}: {err}"}
                result["index"] = index
                results.append(result)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(args.clients)))
        out["load_s"] = time.perf_counter() - started
        ok = [r for r in results if "error" not in r]
        out["load_requests"] = len(results)
        out["load_errors"] = [r["error"] for r in results if "error" in r][:5]
        out["load_error_count"] = len(results) - len(ok)
        out["load_mismatches"] = sum(r["text"] != reference[r["index"] % len(reference)] for r in ok)
        out["load_tokens"] = sum(r["tokens"] for r in ok)
        latencies = sorted(r["latency"] for r in ok)
        ttfts = sorted(r["ttft"] for r in ok)
        out["latency_p50"], out["latency_p99"] = _percentile(latencies, 50), _percentile(latencies, 99)
        out["ttft_p50"], out["ttft_p99"] = _percentile(ttfts, 50), _percentile(ttfts, 99)
        out["alone_latency_p50"] = statistics.median(r["latency"] for r in alone)
        return out


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def report(r: dict, args: argparse.Namespace) -> int:
    seq = r["sequential_tokens"] / r["sequential_s"]
    conc = r["concurrent_tokens"] / r["concurrent_s"]
    load = r["load_tokens"] / r["load_s"]
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, server threads {args.threads}, "
          f"Python {platform.python_version()}")
    print("| phase | requests | tokens | seconds | tokens/s | answers differing from alone |")
    print("|---|---|---|---|---|---|")
    print(f"| one at a time | {args.distinct} | {r['sequential_tokens']} | {r['sequential_s']:.1f} | {seq:.0f} | - |")
    print(f"| {args.distinct} concurrent | {args.distinct} | {r['concurrent_tokens']} | {r['concurrent_s']:.1f} | "
          f"{conc:.0f} ({conc / seq:.1f}x) | {r['concurrent_mismatches']} |")
    print(f"| {args.clients} clients | {r['load_requests']} | {r['load_tokens']} | {r['load_s']:.1f} | {load:.0f} | "
          f"{r['load_mismatches']} |")
    print(f"\nload phase: errors {r['load_error_count']}; latency p50 {r['latency_p50']:.2f} s, "
          f"p99 {r['latency_p99']:.2f} s; time to first token p50 {r['ttft_p50']:.2f} s, p99 {r['ttft_p99']:.2f} s "
          f"(a request alone: {r['alone_latency_p50']:.2f} s)")
    if r["load_errors"]:
        print("first errors:", *r["load_errors"], sep="\n  ")
    print(json.dumps(r, indent=1, default=str))
    good = r["load_error_count"] == 0 and r["load_mismatches"] == 0 and r["concurrent_mismatches"] == 0
    return 0 if good else 1


def main(argv: list[str] | None = None) -> int:
    from llavakit.serve.server import spawn_server

    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(Path(tmp) / "model")
        if not args.model:
            build_model(Path(model))
        log = open(Path(tmp) / "server.log", "wb")  # noqa: SIM115 - closed below
        process, url = spawn_server(["--model", model, "--model-name", "bench", "--max-batch-size",
                                     str(args.max_batch_size), "--max-queue", str(4 * args.clients),
                                     "--threads", str(args.threads), "--log-level", "warning"], log=log)
        try:
            results = asyncio.run(run_phases(url, args))
        finally:
            process.terminate()
            process.wait(60)
            log.close()
            tail = (Path(tmp) / "server.log").read_text()[-2000:]
        if "Traceback" in tail:
            print(tail)
    return report(results, args)


if __name__ == "__main__":
    sys.exit(main())
