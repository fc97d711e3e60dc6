"""Ingest cost per image (target <= 2 ms on the 2-core dev machine) and its linear growth.

Run: .venv/bin/python benchmarks/bench_ingest.py
Prints ms/image for the bundled MNIST-5k (PNG encoding) and for a generated RGB folder at two sizes
(copy + decode for facts), median of 3 runs each.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components.config import BUNDLED_MNIST  # noqa: E402
from components.data.ingest import ingest  # noqa: E402
from tests.conftest import make_folder  # noqa: E402


def timed(source, n_expected: int, repeats: int = 3) -> float:
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats):
            start = time.perf_counter()
            res = ingest(source, Path(tmp) / f"out{i}")
            times.append(time.perf_counter() - start)
            assert res.n_images == n_expected
    return statistics.median(times) * 1000 / n_expected


def main() -> None:
    print(f"bundled mnist_5k (5,000 PNGs, 28x28 gray): {timed(BUNDLED_MNIST, 5000):.3f} ms/image")
    with tempfile.TemporaryDirectory() as tmp:
        for per_class in (100, 400):
            src = make_folder(Path(tmp) / f"src{per_class}", classes=("a", "b", "c", "d", "e"), per_class=per_class, size=(64, 48))
            n = 5 * per_class
            print(f"folder, {n:>5} RGB 64x48 PNG/JPEG/BMP files: {timed(src, n):.3f} ms/image")


if __name__ == "__main__":
    main()
