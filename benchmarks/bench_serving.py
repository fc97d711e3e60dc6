"""Serving throughput and latency: req/s, p50, p99 at several concurrency levels (closed loop),
against a running `visionflow serve` (or any URL). One image per request (a 28x28 PNG by default).

Run: .venv/bin/visionflow serve --port 3000 &   then
     .venv/bin/python benchmarks/bench_serving.py --url http://127.0.0.1:3000 --seconds 15 --concurrency 1 8 32
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import time

import httpx
import numpy as np
from PIL import Image


def png(size: int) -> bytes:
    arr = np.random.default_rng(0).integers(0, 256, (size, size), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, "L").save(buf, format="PNG")
    return buf.getvalue()


async def closed_loop(url: str, concurrency: int, seconds: float, body: bytes) -> dict:
    latencies, codes = [], {}
    stop = time.perf_counter() + seconds
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=concurrency)) as client:

        async def worker():
            while time.perf_counter() < stop:
                t = time.perf_counter()
                try:
                    r = await client.post(f"{url}/classify", files={"image": ("x.png", body)})
                    code = r.status_code
                except httpx.HTTPError as exc:
                    code = type(exc).__name__
                latencies.append((time.perf_counter() - t) * 1000)
                codes[code] = codes.get(code, 0) + 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "concurrency": concurrency, "req_s": len(latencies) / elapsed, "p50_ms": statistics.median(latencies),
        "p99_ms": latencies[int(0.99 * (len(latencies) - 1))], "codes": codes,
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:3000")
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--size", type=int, default=28)
    args = ap.parse_args()
    body = png(args.size)
    print("| concurrency | req/s | p50 ms | p99 ms | status codes |\n|---|---|---|---|---|")
    for c in args.concurrency:
        r = asyncio.run(closed_loop(args.url, c, args.seconds, body))
        print(f"| {c} | {r['req_s']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['codes']} |")


if __name__ == "__main__":
    main()
