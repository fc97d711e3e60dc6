"""Families one at a time with every core, or several at once with one thread each: which is faster
on this machine? (`orchestration.task_runner: dask` with `dask_workers` processes of one thread each
is the second; the default thread runner the first.)

Each family trains in its own process in both modes (the same start-up cost), on the checked-out
data (`data/`), for a few epochs of its default recipe.

Run:
    .venv/bin/python benchmarks/bench_concurrency.py [--families cnn rnn cnn_lstm] [--epochs 3] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

TRAIN = """
import sys, tempfile, time
from pathlib import Path
sys.path.insert(0, {repo!r})
from components.config import load_config
from components.training.runner import train_classifier, train_gan
cfg = load_config({params!r}, "default", ["engine.progress=false", "engine.threads={threads}", "models.{key}.train.epochs={epochs}"])
fam = cfg.models[{key!r}]
with tempfile.TemporaryDirectory() as tmp:
    t = time.perf_counter()
    if fam.kind == "generator":
        res = train_gan(fam, cfg.engine, Path({data!r}), Path(tmp), data=cfg.data, key={key!r})
        print(f"{key} {{time.perf_counter() - t:.1f}} s")
    else:
        res = train_classifier({key!r}, fam, cfg.engine, Path({data!r}), Path(tmp), data=cfg.data)
        print(f"{key} {{time.perf_counter() - t:.1f}} s, {{res['img_per_s']:.0f}} img/s, val {{res['val_acc']:.4f}}")
"""


def _train(key: str, epochs: int, threads: int) -> str:
    code = TRAIN.format(repo=str(REPO), params=str(REPO / "params.yaml"), threads=threads, key=key, epochs=epochs, data=str(REPO / "data"))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", nargs="+", default=["cnn", "rnn", "cnn_lstm"])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args()
    cores = os.cpu_count() or 2
    t = time.perf_counter()
    for key in args.families:
        print("  one at a time:", _train(key, args.epochs, cores), flush=True)
    serial = time.perf_counter() - t
    t = time.perf_counter()
    with ThreadPoolExecutor(args.workers) as pool:
        for line in pool.map(lambda k: _train(k, args.epochs, 1), args.families):
            print("  at once:", line, flush=True)
    parallel = time.perf_counter() - t
    print(f"\n| mode | wall time |\n|---|---|\n| one at a time, {cores} threads | {serial:.1f} s |")
    print(f"| {args.workers} at once, 1 thread each | {parallel:.1f} s ({serial / parallel:.2f}× the speed) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
