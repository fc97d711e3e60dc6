"""Issue 5's numbers: serving configurations side by side, an open-loop load, a 200-client flood and
a champion switch under load. Each configuration is a real `visionflow serve` (BentoML) started here
on a free port; the load generator (aiohttp) runs on the same machine, so it shares the cores.

Run (after `make run` registered a champion):
    .venv/bin/python benchmarks/bench_serving.py compare --seconds 10           # configurations × c=1, 8, 32
    .venv/bin/python benchmarks/bench_serving.py open-loop --rate 50 --seconds 60
    .venv/bin/python benchmarks/bench_serving.py flood --clients 200 --seconds 60
    .venv/bin/python benchmarks/bench_serving.py switch --rate 50 --seconds 30 --to visionflow-cnn/1
One 28×28 PNG per request (a digit from the test split when data/ exists).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import aiohttp
import numpy as np
import psutil
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CLI = str(Path(sys.executable).parent / "visionflow")

# name → (environment of `visionflow serve`, endpoint a client posts one image to, form field)
CONFIGS: dict[str, tuple[dict[str, str], str, str]] = {
    "naive (1 worker, no batching, access log)": ({"VISIONFLOW_WORKERS": "1", "VISIONFLOW_BATCHING": "off", "VISIONFLOW_ACCESS_LOG": "on"}, "/classify", "image"),
    "1 worker, no batching": ({"VISIONFLOW_WORKERS": "1", "VISIONFLOW_BATCHING": "off"}, "/classify", "image"),
    "2 workers, no batching": ({"VISIONFLOW_WORKERS": "2", "VISIONFLOW_BATCHING": "off"}, "/classify", "image"),
    "1 worker, batching 32/100 ms": ({"VISIONFLOW_WORKERS": "1", "VISIONFLOW_BATCHING": "on", "VISIONFLOW_MAX_BATCH_SIZE": "32", "VISIONFLOW_MAX_LATENCY_MS": "100"}, "/classify", "image"),
    "1 worker, batching 32/500 ms": ({"VISIONFLOW_WORKERS": "1", "VISIONFLOW_BATCHING": "on", "VISIONFLOW_MAX_BATCH_SIZE": "32", "VISIONFLOW_MAX_LATENCY_MS": "500"}, "/classify", "image"),
    "2 workers, batching 32/500 ms": ({"VISIONFLOW_WORKERS": "2", "VISIONFLOW_BATCHING": "on", "VISIONFLOW_MAX_BATCH_SIZE": "32", "VISIONFLOW_MAX_LATENCY_MS": "500"}, "/classify", "image"),
}  # fmt: skip
DEFAULT = "1 worker, batching 32/500 ms"  # what `visionflow serve` ships (serving/runtime.py Settings)


def sample_png() -> bytes:
    pngs = sorted((REPO / "data" / "test").rglob("*.png"))
    if pngs:
        return pngs[0].read_bytes()
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8), "L").save(buf, format="PNG")
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`visionflow serve` in a subprocess (its own process group), ready when /readyz is 200."""

    def __init__(self, env: dict[str, str], poll: float = 1.0, root: Path = REPO, model: str | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([CLI, "serve", "--port", str(self.port), "--poll", str(poll), "--root", str(root), *(["--model", model] if model else [])],
                                     env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)  # fmt: skip

    def wait_ready(self, timeout: float = 180) -> None:
        import urllib.request

        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                if urllib.request.urlopen(f"{self.url}/readyz", timeout=2).status == 200:
                    return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError("server not ready")

    def memory_mb(self) -> tuple[float, float]:
        """(PSS, RSS) summed over the server's processes. PSS counts a page shared by n processes
        1/n times in each (torch's libraries are mapped by every worker): the tree's real footprint;
        the RSS sum counts shared pages once per process."""
        try:
            procs = [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(recursive=True)]
            infos = [p.memory_full_info() for p in procs if p.is_running()]
        except psutil.Error:
            return 0.0, 0.0
        return sum(i.pss for i in infos) / 2**20, sum(i.rss for i in infos) / 2**20

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)


class Recorder:
    def __init__(self):
        self.latencies: list[float] = []
        self.codes: dict[str, int] = {}
        self.versions: set[str] = set()
        self.retry_after_missing = 0

    def add(self, ms: float, code: str) -> None:
        self.latencies.append(ms)
        self.codes[code] = self.codes.get(code, 0) + 1

    def summary(self, seconds: float) -> dict:
        lat = sorted(self.latencies) or [float("nan")]
        ok = self.codes.get("200", 0)
        return {"req_s": ok / seconds, "p50_ms": statistics.median(lat), "p99_ms": lat[int(0.99 * (len(lat) - 1))],
                "codes": dict(sorted(self.codes.items())), "n": len(self.latencies)}  # fmt: skip


async def _post(session: aiohttp.ClientSession, url: str, field: str, body: bytes, rec: Recorder) -> float:
    """One request; returns the Retry-After seconds of a 503 (0 otherwise)."""
    form = aiohttp.FormData()
    form.add_field(field, body, filename="x.png", content_type="image/png")
    t = time.perf_counter()
    retry_after = 0.0
    try:
        async with session.post(url, data=form) as r:
            await r.read()
            code = str(r.status)
            if r.status == 503:
                if "Retry-After" not in r.headers:
                    rec.retry_after_missing += 1
                retry_after = float(r.headers.get("Retry-After", 0))
            if r.status == 200 and "X-Model-Version" in r.headers:
                rec.versions.add(r.headers["X-Model-Version"])
    except (TimeoutError, aiohttp.ClientError) as exc:
        code = type(exc).__name__
    rec.add((time.perf_counter() - t) * 1000, code)
    return retry_after


def _session(limit: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit), timeout=aiohttp.ClientTimeout(total=60))


async def closed_loop(url: str, field: str, body: bytes, clients: int, seconds: float, honor_retry_after: bool = True) -> dict:
    """`clients` clients, each sending its next request when the last one is answered (after the
    Retry-After of a 503, as a well-behaved client does, unless honor_retry_after is False)."""
    rec, stop = Recorder(), time.perf_counter() + seconds
    async with _session(clients) as s:

        async def client():
            while time.perf_counter() < stop:
                wait = await _post(s, url, field, body, rec)
                if wait and honor_retry_after:
                    await asyncio.sleep(min(wait, max(0.0, stop - time.perf_counter())))

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        return {**rec.summary(time.perf_counter() - t0), "retry_after_missing": rec.retry_after_missing}


async def open_loop(url: str, field: str, body: bytes, rate: float, seconds: float, during=None) -> tuple[dict, Recorder]:
    """A request every 1/rate s whatever the answers (a fixed schedule: latency cannot slow it)."""
    rec = Recorder()
    async with _session(1000) as s:
        tasks, t0 = [], time.perf_counter()
        for i in range(int(rate * seconds)):
            delay = t0 + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if during and i == int(rate * seconds / 3):
                asyncio.get_running_loop().run_in_executor(None, during)
            tasks.append(asyncio.create_task(_post(s, url, field, body, rec)))
        await asyncio.gather(*tasks)
        return rec.summary(time.perf_counter() - t0), rec


def load_profile(server: Server, body: bytes, seconds: float, rate: float, open_seconds: float) -> dict:
    """A short warm-up, `seconds` of c=32 closed loop, `open_seconds` of open loop at `rate`, and the
    server's PSS: the side-by-side figures of bench_delivery.py and bench_rollout.py."""
    url = f"{server.url}/classify"
    asyncio.run(closed_loop(url, "image", body, 8, 2))
    closed = asyncio.run(closed_loop(url, "image", body, 32, seconds))
    opened, _ = asyncio.run(open_loop(url, "image", body, rate, open_seconds))
    errors = {k: v for k, v in {**closed["codes"], **opened["codes"]}.items() if k != "200"}
    return {"closed": closed, "open": opened, "pss_mb": server.memory_mb()[0], "errors": errors}


def _row(name: str, c: int, r: dict) -> str:
    return f"| {name} | {c} | {r['req_s']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['codes']} |"


def compare(args) -> None:
    body = sample_png()
    names = args.configs or list(CONFIGS)
    results: dict[str, dict[int, dict]] = {}
    print("| configuration | concurrency | req/s (200s) | p50 ms | p99 ms | status codes |\n|---|---|---|---|---|---|", flush=True)
    for name in names:
        env, path, field = CONFIGS[name]
        server = Server(env)
        try:
            server.wait_ready()
            asyncio.run(closed_loop(server.url + path, field, body, 4, 2))  # warm-up
            results[name] = {}
            for c in args.concurrency:
                r = asyncio.run(closed_loop(server.url + path, field, body, c, args.seconds))
                results[name][c] = r
                print(_row(name, c, r), flush=True)
        finally:
            server.stop()
    c = max(args.concurrency)
    naive = next(iter(results.values()))[c]["req_s"]
    print(f"\nat concurrency {c}, relative to `{names[0]}`:")
    for name, rows in results.items():
        print(f"- {name}: {rows[c]['req_s'] / naive:.2f}×")


def open_loop_cmd(args) -> None:
    env, path, field = CONFIGS[args.config]
    server = Server(env)
    try:
        server.wait_ready()
        asyncio.run(closed_loop(server.url + path, field, sample_png(), 2, 2))
        r, _ = asyncio.run(open_loop(server.url + path, field, sample_png(), args.rate, args.seconds))
        print(f"open loop {args.rate:.0f} req/s for {args.seconds:.0f} s ({args.config}): {r['n']} requests, "
              f"codes {r['codes']}, p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms")  # fmt: skip
    finally:
        server.stop()


def flood(args) -> None:
    env, path, field = CONFIGS[args.config]
    server = Server(env)
    body = sample_png()
    try:
        server.wait_ready()
        idle_before = asyncio.run(closed_loop(server.url + path, field, body, 1, 5))
        mem: list[tuple[float, float]] = []
        stop = threading.Event()

        def sample():
            while not stop.wait(1.0):
                mem.append(server.memory_mb())

        threading.Thread(target=sample, daemon=True).start()
        r = asyncio.run(closed_loop(server.url + path, field, body, args.clients, args.seconds, not args.ignore_retry_after))
        stop.set()
        time.sleep(2)
        idle_after = asyncio.run(closed_loop(server.url + path, field, body, 1, 5))
        pss, rss = [m[0] for m in mem], [m[1] for m in mem]
        third = max(1, len(pss) // 3)
        print(f"{args.clients} closed-loop clients for {args.seconds:.0f} s ({args.config}; "
              f"{'ignoring' if args.ignore_retry_after else 'honouring'} Retry-After):")  # fmt: skip
        print(f"- answers: {r['codes']} ({r['req_s']:.0f} req/s served), 503s without Retry-After: {r['retry_after_missing']}")
        print(f"- latency p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms")
        print(f"- server memory (PSS, all processes): first third mean {statistics.mean(pss[:third]):.0f} MB, last third mean "
              f"{statistics.mean(pss[-third:]):.0f} MB, max {max(pss):.0f} MB (RSS summed per process: max {max(rss):.0f} MB)")  # fmt: skip
        print(f"- idle latency p50 before {idle_before['p50_ms']:.1f} ms, after {idle_after['p50_ms']:.1f} ms")
    finally:
        server.stop()


def switch(args) -> None:
    """Promote another version while an open-loop load runs: every request must succeed, and the
    answers must move from the old version to the new one."""
    env, path, field = CONFIGS[args.config]
    server = Server(env, poll=1.0)
    name, version = args.to.split("/")
    try:
        server.wait_ready()
        promoted = {}

        def promote():
            out = subprocess.run([CLI, "promote", name, version, "--root", str(REPO)], capture_output=True, text=True)
            promoted["out"] = (out.stdout or out.stderr).strip()

        r, rec = asyncio.run(open_loop(server.url + path, field, sample_png(), args.rate, args.seconds, during=promote))
        print(f"champion switch under {args.rate:.0f} req/s for {args.seconds:.0f} s: {promoted.get('out')}")
        print(f"- answers: {r['codes']}, p99 {r['p99_ms']:.1f} ms; model versions seen: {sorted(rec.versions)}")
    finally:
        server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("compare")
    p.add_argument("--configs", nargs="+", choices=list(CONFIGS))
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--seconds", type=float, default=10)
    p.set_defaults(fn=compare)
    for cmd, fn in (("open-loop", open_loop_cmd), ("switch", switch)):
        p = sub.add_parser(cmd)
        p.add_argument("--rate", type=float, default=50)
        p.add_argument("--seconds", type=float, default=60 if cmd == "open-loop" else 30)
        p.add_argument("--config", default=DEFAULT, choices=list(CONFIGS))
        if cmd == "switch":
            p.add_argument("--to", required=True, help="registered NAME/VERSION to promote, e.g. visionflow-cnn/1")
        p.set_defaults(fn=fn)
    p = sub.add_parser("flood")
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--config", default=DEFAULT, choices=list(CONFIGS))
    p.add_argument("--ignore-retry-after", action="store_true", help="clients retry a 503 at once (a retry storm)")
    p.set_defaults(fn=flood)
    args = ap.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
