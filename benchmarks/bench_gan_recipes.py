"""GAN recipes (epochs × learning-rate schedule) by GAN-test and GAN-train, as the pipeline computes them.

For each recipe and GAN seed: train the default GAN on the ingested data (`runner.train_gan`), then
GAN-test with a judge (the default cnn, trained once on the same data) and GAN-train (a cnn trained on
10,000 generated images × 4 epochs, tested on the real test split), evaluation seed = GAN seed.
Prints a markdown table: mean (min–max) over the seeds, and the mean training seconds.

Run (after `make run` has ingested data/):
    .venv/bin/python benchmarks/bench_gan_recipes.py [--recipes 120:constant 80:linear_decay] [--seeds 0 1 2]
A recipe may set more of the GAN's train config: 40:linear_decay:batch_size=32,lr=0.0006
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
    ap.add_argument("--data", default=str(REPO / "data"))
    ap.add_argument("--recipes", nargs="+", default=["120:constant", "80:linear_decay", "60:linear_decay"], help="EPOCHS:SCHEDULE[:KEY=VALUE,...]")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()

    import yaml

    from components.config import EngineConfig, TrainConfig, load_config
    from components.data.datasets import load_spec_split
    from components.evaluation.gan_metrics import gan_test, gan_train
    from components.training.runner import load_for_training, load_trained, train_classifier, train_gan

    data_dir = Path(args.data)
    cfg = load_config(REPO / "params.yaml", "default", ["engine.progress=false"])
    loaded = load_for_training(data_dir, cfg.data, cfg.engine)
    print("| GAN recipe | GAN-test, mean (min–max) | GAN-train, mean (min–max) | training s, mean |\n|---|---|---|---|", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        judge, _ = load_trained(train_classifier("cnn", cfg.models.cnn, cfg.engine, data_dir, out, loaded=loaded, data=cfg.data)["path"])
        for recipe in args.recipes:
            epochs, schedule, *more = recipe.split(":", 2)
            extra = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in more[0].split(","))} if more else {}
            tests, trains, secs = [], [], []
            for seed in args.seeds:
                train_cfg = cfg.models.gan.train.model_copy(update={"epochs": int(epochs), "schedule": schedule, "seed": seed, **extra})
                fam = cfg.models.gan.model_copy(update={"train": train_cfg})
                t = time.perf_counter()
                gan, spec = load_trained(train_gan(fam, cfg.engine, data_dir, out, loaded=loaded, data=cfg.data, key=f"gan-{recipe}-{seed}")["path"])
                secs.append(time.perf_counter() - t)
                test = load_spec_split(data_dir, "test", spec)
                tests.append(100 * gan_test(gan, judge, spec, n=1000, seed=seed))
                gt_cfg = TrainConfig(epochs=4, augment="shift", noise_sigma=0.0, patience=10_000, seed=seed)
                trains.append(100 * gan_train(gan, spec, test, n=10_000, cfg=gt_cfg, workdir=out / f"gan-train-{recipe}-{seed}",
                                              engine=EngineConfig(progress=False), seed=seed, cnn_hparams=cfg.models.cnn.hparams))  # fmt: skip
            print(f"| {epochs} epochs, {schedule}{''.join(f', {k} {v}' for k, v in extra.items())} | {statistics.mean(tests):.2f} % ({min(tests):.2f}–{max(tests):.2f}) | "
                  f"{statistics.mean(trains):.2f} % ({min(trains):.2f}–{max(trains):.2f}) | {statistics.mean(secs):.0f} |", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
