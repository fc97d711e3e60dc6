"""GAN recipes (epochs × learning-rate schedule) by GAN-test and GAN-train, as the pipeline computes them.

For each recipe and GAN seed: train the default GAN on the ingested data (`runner.train_gan`), then
evaluate it with the pipeline's own `evaluate_gan_file` (the default profile's `evaluation:` settings):
GAN-test with a judge (the default cnn, trained once on the same data) and GAN-train (a cnn trained on
generated images only, tested on the real test split), evaluation seed = GAN seed.
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

    from components.config import load_config
    from components.evaluation.evaluate import evaluate_gan_file
    from components.training.runner import load_for_training, train_classifier, train_gan

    data_dir = Path(args.data)
    cfg = load_config(REPO / "params.yaml", "default", ["engine.progress=false"])
    loaded = load_for_training(data_dir, cfg.data, cfg.engine)
    print("| GAN recipe | GAN-test, mean (min–max) | GAN-train, mean (min–max) | training s, mean |\n|---|---|---|---|", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        judge = train_classifier("cnn", cfg.models.cnn, cfg.engine, data_dir, out, loaded=loaded, data=cfg.data)["path"]
        for recipe in args.recipes:
            epochs, schedule, *more = recipe.split(":", 2)
            extra = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in more[0].split(","))} if more else {}
            tests, trains, secs = [], [], []
            for seed in args.seeds:
                train_cfg = cfg.models.gan.train.model_copy(update={"epochs": int(epochs), "schedule": schedule, "seed": seed, **extra})
                fam = cfg.models.gan.model_copy(update={"train": train_cfg})
                t = time.perf_counter()
                key = f"gan-{recipe}-{seed}"
                trained = train_gan(fam, cfg.engine, data_dir, out, loaded=loaded, data=cfg.data, key=key)
                secs.append(time.perf_counter() - t)
                metrics = evaluate_gan_file(trained["path"], judge, data_dir, out / key / "evaluation", cfg.evaluation, trained["history"],
                                            seed=seed, cnn_hparams=cfg.models.cnn.hparams)["metrics"]  # fmt: skip
                tests.append(100 * metrics["gan_test"])
                trains.append(100 * metrics["gan_train"])
            print(f"| {epochs} epochs, {schedule}{''.join(f', {k} {v}' for k, v in extra.items())} | {statistics.mean(tests):.2f} % ({min(tests):.2f}–{max(tests):.2f}) | "
                  f"{statistics.mean(trains):.2f} % ({min(trains):.2f}–{max(trains):.2f}) | {statistics.mean(secs):.0f} |", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
