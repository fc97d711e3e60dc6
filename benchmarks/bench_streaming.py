"""Data larger than memory: one training epoch of the default cnn on a generated photo set, in memory
vs streamed from disk (DataLoader workers decode each batch), each in its own process so peak RSS
is its own. Prints img/s of each, their ratio, and peak RSS.

Run:
    .venv/bin/python benchmarks/bench_streaming.py [--images 30000] [--side 256] [--workers 2]
    .venv/bin/python benchmarks/bench_streaming.py --data DIR      # reuse an ingested folder
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def one_epoch(data_dir: Path, budget_mb: int, workers: int) -> dict:
    sys.path.insert(0, str(REPO))
    from components.config import DataConfig, EngineConfig, load_config
    from components.data.datasets import load_dataset
    from components.models import create_model
    from components.training.classifier import fit

    cfg = load_config(REPO / "params.yaml", "default")
    t = time.perf_counter()
    spec, splits = load_dataset(data_dir, DataConfig(**{**cfg.data.model_dump(), "memory_budget_mb": budget_mb, "loader_workers": workers}))
    load_s = time.perf_counter() - t
    fam = cfg.models.cnn
    model = create_model(fam.model, num_classes=spec.num_classes, in_channels=spec.in_channels, image_size=spec.image_size, **fam.hparams)
    train_cfg = fam.train.model_copy(update={"epochs": 1})
    res = fit(model, splits["train"], splits["val"], spec, train_cfg, EngineConfig(progress=False), workdir=Path(tempfile.mkdtemp()))
    h = res.history[0]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 + resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"streaming": splits["train"].streaming, "load_s": round(load_s, 1), "epoch_s": round(h["epoch_seconds"], 1), "img_per_s": round(h["img_per_s"], 1),
            "train_images": len(splits["train"]), "image_size": list(spec.image_size), "peak_rss_mb": round(peak_mb)}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=30000)
    ap.add_argument("--classes", type=int, default=5)
    ap.add_argument("--side", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--data", type=Path, help="an ingested data folder to reuse")
    ap.add_argument("--child", choices=["memory", "stream"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(one_epoch(args.data, 1_000_000 if args.child == "memory" else 0, args.workers)))
        return 0
    sys.path.insert(0, str(REPO))
    data = args.data
    if data is None:
        from components.data.ingest import ingest
        from components.data.synthetic import SHAPES, make_photo_folder

        tmp = Path(tempfile.mkdtemp(prefix="visionflow-stream-"))
        t = time.perf_counter()
        src = make_photo_folder(tmp / "photos", args.images // args.classes, SHAPES[: args.classes], min_side=args.side - 16, max_side=args.side + 16)
        print(f"generated {args.images} photos around {args.side} px in {time.perf_counter() - t:.0f}s")
        t = time.perf_counter()
        ingest(src, tmp / "data")
        print(f"ingested in {time.perf_counter() - t:.0f}s: {tmp / 'data'}")
        data = tmp / "data"
    out = {}
    for mode in ("memory", "stream"):
        r = subprocess.run([sys.executable, __file__, "--child", mode, "--data", str(data), "--workers", str(args.workers)], capture_output=True, text=True)
        if r.returncode:
            print(r.stderr[-3000:])
            return r.returncode
        out[mode] = json.loads(r.stdout.strip().splitlines()[-1])
        print(mode, out[mode])
    print(f"streaming / in-memory img/s: {out['stream']['img_per_s'] / out['memory']['img_per_s']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
