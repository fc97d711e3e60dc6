"""Issue 13's numbers: what the inference log and the metrics cost the served figures, and the
production drift scenario (2,000 in-distribution requests, then 2,000 shifted ones, `visionflow
monitor` after each). Real `visionflow serve` processes on this machine, clients on the same cores.

Run (after `make run` registered a champion):
    .venv/bin/python benchmarks/bench_monitoring.py overhead [--baseline-root /tmp/before]
    .venv/bin/python benchmarks/bench_monitoring.py drift [--retrain]

`overhead` runs the shipped serving configuration with the inference log on (the default) and off
(`VISIONFLOW_INFERENCE_LOG=off`; the metrics are always on), and, with --baseline-root, the serving
code of another checkout (e.g. `git worktree add /tmp/before <commit>`) over the same champion:
c=32 closed-loop throughput, p99 of an open loop at 50 req/s, memory under a 200-client flood.
`drift` gives each scenario its own inference log (VISIONFLOW_INFERENCE_LOG) and prints the monitor's
decision and scores; with --retrain the shifted scenario lets the monitor start the retrain.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures as cf
import io
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).parent))
from bench_serving import CLI, CONFIGS, DEFAULT, REPO, Server, closed_loop, open_loop, sample_png  # noqa: E402


def code_server(env: dict[str, str], code_root: Path) -> Server:
    """`visionflow serve` whose service code comes from `code_root` (another checkout), over this repo's workspace."""
    return Server({**env, "VISIONFLOW_HOME": str(REPO / ".visionflow"), "MLFLOW_TRACKING_URI": f"sqlite:///{REPO / '.visionflow' / 'mlflow' / 'mlflow.db'}"},
                  root=code_root)  # fmt: skip


def overhead(args) -> None:
    env, path, field = CONFIGS[DEFAULT]
    body = sample_png()
    runs = [("inference log + metrics (shipped)", lambda: Server({**env, "VISIONFLOW_INFERENCE_LOG": str(Path(tempfile.mkdtemp()) / "inference.db")})),
            ("metrics only (VISIONFLOW_INFERENCE_LOG=off)", lambda: Server({**env, "VISIONFLOW_INFERENCE_LOG": "off"}))]  # fmt: skip
    if args.baseline_root:
        runs.append((f"before: serving code of {args.baseline_root}", lambda: code_server(env, Path(args.baseline_root))))
    print("| serving | c=32 req/s (p50 / p99 ms) | open loop 50 req/s: p99 ms | 200 clients: req/s served, max PSS MB |\n|---|---|---|---|", flush=True)
    for _ in range(args.rounds):
        for name, make in runs:
            server = make()
            try:
                server.wait_ready()
                asyncio.run(closed_loop(server.url + path, field, body, 4, 2))  # warm-up
                c32 = asyncio.run(closed_loop(server.url + path, field, body, 32, args.seconds))
                ol, _ = asyncio.run(open_loop(server.url + path, field, body, 50, args.seconds * 3))
                mem: list[float] = []
                stop = threading.Event()

                def sample(server=server, mem=mem, stop=stop):
                    while not stop.wait(1.0):
                        mem.append(server.memory_mb()[0])

                threading.Thread(target=sample, daemon=True).start()
                fl = asyncio.run(closed_loop(server.url + path, field, body, 200, args.seconds * 3))
                stop.set()
                print(f"| {name} | {c32['req_s']:.0f} ({c32['p50_ms']:.0f} / {c32['p99_ms']:.0f}) | {ol['p99_ms']:.1f} ({ol['codes']}) | "
                      f"{fl['req_s']:.0f}, {max(mem):.0f} |", flush=True)  # fmt: skip
            finally:
                server.stop()


def _digits() -> list[tuple[bytes, str]]:
    files = sorted((REPO / "data" / "test").rglob("*.png"))
    if not files:
        sys.exit("no data/test: run `make run` first")
    random.Random(0).shuffle(files)
    return [(f.read_bytes(), f.parent.name) for f in files]


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _shift(data: bytes, how: str, rng: np.random.Generator) -> bytes:
    img = Image.open(io.BytesIO(data)).convert("L")
    if how == "inverted":
        return _png(ImageOps.invert(img))
    arr = np.asarray(img, np.float32) / 255 + rng.normal(0, 0.3, (img.height, img.width))  # the report's noise σ = 0.3
    return _png(Image.fromarray((arr.clip(0, 1) * 255).round().astype(np.uint8)))


def drift(args) -> None:
    import httpx

    env, path, field = CONFIGS[DEFAULT]
    digits = _digits()
    rng = np.random.default_rng(0)
    scenarios = [("in-distribution (test split)", [d for d, _ in digits], False)]
    scenarios += [(f"{how} digits", [_shift(d, how, rng) for d, _ in digits], args.retrain and how == "inverted") for how in ("noisy σ=0.3", "inverted")]
    print(
        "| 2,000 requests of | sent in s | monitor decision | drift score | pixel-mean shift | class TV | mean confidence | monitor s |\n|---|---|---|---|---|---|---|---|"
    )
    for name, images, retrain in scenarios:
        log = Path(tempfile.mkdtemp()) / "inference.db"
        server = Server({**env, "VISIONFLOW_INFERENCE_LOG": str(log)})
        try:
            server.wait_ready()
            t = time.perf_counter()
            url = server.url + path
            with httpx.Client(timeout=30) as http, cf.ThreadPoolExecutor(8) as pool:
                codes = list(pool.map(lambda i, url=url, images=images: http.post(url, files={field: ("x.png", images[i % len(images)])}).status_code,
                                      range(2000)))  # fmt: skip
            sent = time.perf_counter() - t
            assert set(codes) == {200}, statistics.multimode(codes)
            t = time.perf_counter()
            out = subprocess.run([CLI, "monitor", "--root", str(REPO), "--retrain" if retrain else "--no-retrain"], env={**os.environ, "VISIONFLOW_INFERENCE_LOG": str(log)},
                                 capture_output=True, text=True)  # fmt: skip
            took = time.perf_counter() - t
            if out.returncode:
                sys.exit(out.stdout + out.stderr)
            vals = {ln.split()[0]: ln.split()[1] for ln in out.stdout.splitlines() if ln.startswith("  prod_")}
            decision = next(ln for ln in out.stdout.splitlines() if ln.startswith("decision")).split(":", 1)[1].strip().replace(" (monitor.retrain is off)", "")
            print(f"| {name} | {sent:.1f} | {decision} | {vals.get('prod_drift_score')} | {vals.get('prod_drift_pixel_mean_shift')} | "
                  f"{vals.get('prod_drift_class_tv')} | {vals.get('prod_mean_confidence')} | {took:.0f} |", flush=True)  # fmt: skip
            if retrain:
                print("\n" + "\n".join(ln for ln in out.stdout.splitlines() if ln.startswith(("retrained", "selection", "report"))))
        finally:
            server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("overhead")
    p.add_argument("--baseline-root", help="a checkout whose serving code serves this repo's champion for comparison")
    p.add_argument("--seconds", type=float, default=10, help="c=32 cell; the open loop and the flood run 3× as long")
    p.add_argument("--rounds", type=int, default=1)
    p.set_defaults(fn=overhead)
    p = sub.add_parser("drift")
    p.add_argument("--retrain", action="store_true", help="let the inverted scenario start the retrain (a full pipeline run)")
    p.set_defaults(fn=drift)
    args = ap.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
