"""Issue 19's numbers: the delivery images (build from a warm wheelhouse, size, start to ready) and the
slim (ONNX on onnxruntime) vs eager (PyTorch) serving side by side, in one run.

    .venv/bin/python benchmarks/bench_delivery.py images [--full]        # after `make run` (a champion, data/ on disk)
    .venv/bin/python benchmarks/bench_delivery.py serving --seconds 15   # needs nothing registered

`images` builds with podman (`--no-cache`: every layer is built again; the wheelhouse and the base
image are warm, as on a build machine) and starts each image three times with `podman run`, timing
the first 200 from /readyz. `serving` registers two untrained models of the default cnn's widths in
a throw-away workspace — 28×28 gray (the bundled digits' shape) and 64×64 RGB (a photo-size model) —
imports each as a PyTorch and as an ONNX BentoML model, and serves each with `visionflow serve` of
the same process shape (the shipped defaults: 1 worker, batching 32/500 ms, 1 thread); the load
generator shares the machine's cores. Weights do not change the compute, so untrained models measure
the same as trained ones.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serving import REPO, Server, free_port, load_profile  # noqa: E402


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def _wait(url: str, timeout: float = 120) -> float:
    import urllib.request

    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        try:
            if urllib.request.urlopen(url, timeout=2).status == 200:
                return time.perf_counter() - t0
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready in {timeout} s")


def start_to_ready(ref: str, runs: int = 3) -> list[float]:
    times = []
    for _ in range(runs):
        port = free_port()
        name = f"vf-bench-{port}"
        t0 = time.perf_counter()
        subprocess.run(["podman", "run", "-d", "--name", name, "--network", "host", "--read-only", "--tmpfs", "/tmp", "-e", f"BENTOML_PORT={port}", ref],
                       check=True, capture_output=True)  # fmt: skip
        try:
            _wait(f"http://127.0.0.1:{port}/readyz")
            times.append(time.perf_counter() - t0)
        finally:
            subprocess.run(["podman", "rm", "-f", "-v", name], capture_output=True)
    return times


def images(args) -> None:
    from components.config import load_config
    from components.packaging.bento import RUNTIME_PACKAGES
    from components.packaging.image import choose_builder, debian_base_image, release_image, wheelhouse
    from components.tracking import mlflow_store as store
    from components.workspace import Workspace

    root = Path(args.root).resolve()
    cfg = load_config(root / "params.yaml")
    ws = Workspace.for_config(root, cfg)
    ws.activate()
    store.configure(ws, cfg.tracking.uri, cfg.tracking.experiment)
    builder = choose_builder("podman")
    t0 = time.perf_counter()
    base = debian_base_image(builder, cache=ws.home / "images")
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores; builder {builder}; base {base} ready in {time.perf_counter() - t0:.1f} s (cached when ~0)")
    print("| image | wheelhouse (warm) | build, no layer cache | whole command | size | start → ready (3 runs) |")
    print("|---|---|---|---|---|---|")
    for flavour in ("slim", "full") if args.full else ("slim",):
        t0 = time.perf_counter()
        house, pins = wheelhouse(RUNTIME_PACKAGES[flavour], ws.home / "images" / "wheelhouse")
        warm = time.perf_counter() - t0
        t0 = time.perf_counter()
        rel = release_image(ws, flavour=flavour, builder=builder, no_cache=True)
        whole = time.perf_counter() - t0
        ready = start_to_ready(rel.build.ref)
        print(f"| {flavour} ({len(pins)} packages) | {warm:.1f} s | {rel.build.seconds:.0f} s | {whole:.0f} s | {rel.build.size_bytes / 1e6:,.0f} MB | "
              f"{statistics.median(ready):.1f} s (min {min(ready):.1f}, max {max(ready):.1f}) |", flush=True)  # fmt: skip


def _png(shape: tuple[int, int, int]) -> bytes:
    c, h, w = shape
    arr = np.random.default_rng(0).integers(0, 256, (h, w) if c == 1 else (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, "L" if c == 1 else "RGB").save(buf, format="PNG")
    return buf.getvalue()


def _register_both(ws, experiment: str, key: str, shape: tuple[int, int, int]) -> dict[str, str]:
    """An untrained default-widths cnn of `shape`, registered, imported as PyTorch and as ONNX: {runtime: bento model uri}."""
    import torch

    from components.config import load_config
    from components.data.preprocess import DatasetSpec
    from components.models import create_model
    from components.packaging.bento import import_onnx_version, import_version
    from components.tracking import mlflow_store as store

    c, h, w = shape
    hparams = dict(load_config(REPO / "params.yaml").models["cnn"].hparams)
    torch.manual_seed(0)
    model = create_model("cnn", num_classes=10, in_channels=c, image_size=(h, w), **hparams).eval()
    spec = DatasetSpec([str(i) for i in range(10)], c, (h, w), [0.5] * c, [0.25] * c)
    run = store.start_run(experiment, key, {"data_version": "bench", "params_hash": "bench", "git_commit": "bench"})
    uri = store.log_model(run, model, np.zeros((2, c, h, w), np.float32), spec.to_json(), extra_metadata={"task": "classification"})
    store.end_run(run, True)
    name = f"bench-{key}"
    ver = store.register_version(uri, name, {"task": "classification", "run_id": run})
    x = np.random.default_rng(1).normal(0, 1, (64, c, h, w)).astype(np.float32)
    torch_tag, _ = import_version(name, ver)
    onnx_tag, _, _ = import_onnx_version(ws, name, ver, test_x=x)
    return {"torch": f"bento:{torch_tag}", "onnxruntime": f"bento:{onnx_tag}"}


def serving(args) -> None:
    home = Path(tempfile.mkdtemp(prefix="bench-delivery-"))
    os.environ["VISIONFLOW_HOME"] = str(home)
    from components.tracking import mlflow_store as store
    from components.workspace import Workspace

    ws = Workspace.at(REPO, home=home)
    ws.activate()
    _, experiment = store.configure(ws)
    models = {"cnn 28×28 gray": (1, 28, 28), "cnn 64×64 RGB": (3, 64, 64)}
    print(
        f"machine: {cpu_name()}, {os.cpu_count()} cores; {args.seconds:.0f} s at c=32 closed loop, {args.open_seconds:.0f} s open loop at {args.rate:.0f} req/s"
    )
    print("| model | runtime | c=32 req/s (p50 / p99 ms) | open loop p50 / p99 ms | errors | server PSS MB |")
    print("|---|---|---|---|---|---|")
    results: dict[tuple[str, str], dict] = {}
    for label, shape in models.items():
        uris = _register_both(ws, experiment, f"cnn-{shape[1]}-{'gray' if shape[0] == 1 else 'rgb'}", shape)
        body = _png(shape)
        for _round in range(args.rounds):
            for runtime in ("torch", "onnxruntime"):
                server = Server({"VISIONFLOW_HOME": str(home), "VISIONFLOW_INFERENCE_LOG": "off"}, poll=3600, model=uris[runtime])
                try:
                    server.wait_ready()
                    run = load_profile(server, body, args.seconds, args.rate, args.open_seconds)
                finally:
                    server.stop()
                closed, opened, pss, errors = run["closed"], run["open"], run["pss_mb"], run["errors"]
                key = (label, runtime)
                prev = results.get(key)
                results[key] = {"req_s": closed["req_s"] + (prev["req_s"] if prev else 0), "p99": max(opened["p99_ms"], prev["p99"] if prev else 0)}
                print(f"| {label} | {runtime} | {closed['req_s']:.0f} ({closed['p50_ms']:.0f} / {closed['p99_ms']:.0f}) | "
                      f"{opened['p50_ms']:.1f} / {opened['p99_ms']:.1f} | {errors or 0} | {pss:.0f} |", flush=True)  # fmt: skip
    print()
    for label in models:
        t, o = results[(label, "torch")], results[(label, "onnxruntime")]
        print(
            f"{label}: slim/eager c=32 throughput {o['req_s'] / t['req_s']:.2f}×; open-loop p99 (worst round) eager {t['p99']:.1f} ms, slim {o['p99']:.1f} ms"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("images", help="build time, size and start to ready of the delivery images")
    a.add_argument("--full", action="store_true", help="also the full (PyTorch) image: several GB")
    a.add_argument("--root", default=str(REPO))
    b = sub.add_parser("serving", help="slim (onnxruntime) vs eager (PyTorch) serving, side by side")
    b.add_argument("--seconds", type=float, default=15)
    b.add_argument("--open-seconds", type=float, default=30)
    b.add_argument("--rate", type=float, default=50)
    b.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    {"images": images, "serving": serving}[args.cmd](args)


if __name__ == "__main__":
    main()
