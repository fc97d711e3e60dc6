"""How cheap GAN-train (and GAN-test) can be while the estimate stays within its own noise.

GAN-train trains a cnn on generated images only and tests it on the real test split; its estimate
moves with the seed (which images are generated, the cnn's initialisation). This measures, for one
trained generator, the mean and spread over seeds of each (samples, epochs) setting and its time,
so a cheaper setting can be chosen where its mean is within the seed-to-seed spread of the dearer one.

Run (a trained GAN, e.g. from `make run`: .visionflow/models/*/gan/model.pt; a judge cnn for GAN-test):
    .venv/bin/python benchmarks/bench_gan_metrics.py --gan PATH --judge PATH [--seeds 0 1 2] \\
        [--settings 10000x4 5000x4 10000x2 2000x4]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gan", required=True)
    ap.add_argument("--judge", required=True)
    ap.add_argument("--data", default=str(REPO / "data"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--settings", nargs="+", default=["10000x4", "5000x4", "10000x2", "2000x4"], help="SAMPLESxEPOCHS")
    ap.add_argument("--gan-test-samples", type=int, nargs="+", default=[1000, 500])
    args = ap.parse_args()

    from components.config import EngineConfig, TrainConfig, load_config
    from components.data.datasets import load_spec_split
    from components.evaluation.gan_metrics import gan_test, gan_train
    from components.training.runner import load_trained

    cnn = load_config(REPO / "params.yaml").models.cnn
    gan, spec = load_trained(args.gan)
    judge, _ = load_trained(args.judge)
    test = load_spec_split(Path(args.data), "test", spec)
    print("| figure | setting | mean | min | max | seconds per estimate |\n|---|---|---|---|---|---|")
    for n in args.gan_test_samples:
        t = time.perf_counter()
        vals = [gan_test(gan, judge, spec, n=n, seed=s) for s in args.seeds]
        secs = (time.perf_counter() - t) / len(args.seeds)
        print(f"| GAN-test | {n} samples | {100 * statistics.mean(vals):.2f} % | {100 * min(vals):.2f} % | {100 * max(vals):.2f} % | {secs:.1f} |", flush=True)
    for setting in args.settings:
        n, epochs = (int(v) for v in setting.split("x"))
        vals, secs = [], []
        for s in args.seeds:
            with tempfile.TemporaryDirectory() as tmp:
                t = time.perf_counter()
                cfg = TrainConfig(epochs=epochs, augment="shift", noise_sigma=0.0, patience=10_000, seed=s)
                vals.append(gan_train(gan, spec, test, n=n, cfg=cfg, workdir=Path(tmp), engine=EngineConfig(progress=False), seed=s, cnn_hparams=cnn.hparams))
                secs.append(time.perf_counter() - t)
        print(f"| GAN-train | {n} × {epochs} epochs | {100 * statistics.mean(vals):.2f} % | {100 * min(vals):.2f} % | {100 * max(vals):.2f} % | "
              f"{statistics.mean(secs):.1f} |", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
