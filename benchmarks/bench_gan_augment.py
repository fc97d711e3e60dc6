"""Issue 12's GAN-augmentation figures: does mixing a class-conditional GAN's samples into the
training batches help the default cnn? Real-only vs real + synthetic, same seeds, on the full
training split and on a low-data regime (10 % of the training split per class, the GAN trained on
those same images: no extra real data reaches the classifier). The synthetic ratio is chosen on the
validation split from --ratios (0 = real only is one of the candidates, as in the pipeline); test
accuracy is only measured.

Run (after `make run` has ingested data/):
    .venv/bin/python benchmarks/bench_gan_augment.py --seeds 0 1 2 [--ratios 0.25 0.5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from components.workspace import Workspace  # noqa: E402


def subset(data, fraction: float, seed: int):
    """`fraction` of each class (at least 1), drawn with a fixed generator."""
    from components.data.datasets import ImageTensors

    gen = torch.Generator().manual_seed(1000 + seed)
    keep = []
    for c in data.y.unique().tolist():
        idx = (data.y == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        keep += idx[: max(1, round(len(idx) * fraction))].tolist()
    keep = torch.tensor(sorted(keep))
    return ImageTensors(data.x[keep], data.y[keep], [data.paths[i] for i in keep.tolist()])


def run(cfg, spec, splits, out: Path, ratios: list[float], seed: int) -> dict:
    from components.training.runner import split_accuracy, train_classifier, train_gan

    t = time.perf_counter()
    gan = train_gan(cfg.models.gan, cfg.engine, Path("."), out, loaded=(spec, splits))
    gan_s = time.perf_counter() - t
    fam = cfg.models.cnn
    fam = fam.model_copy(update={"train": fam.train.model_copy(update={"synthetic_ratio": [0.0, *ratios], "synthetic_generator": gan["path"], "seed": seed})})
    t = time.perf_counter()
    res = train_classifier("cnn", fam, cfg.engine, Path("."), out, loaded=(spec, splits))
    cnn_s = time.perf_counter() - t
    # every candidate (ratio 0 = real only) rebuilt from its best checkpoint and tested too: the gain
    # of each ratio is measured, not only the one validation chose
    from components.training.runner import _seeded_model, save_trained

    test = {}
    for r in [0.0, *ratios]:
        m = _seeded_model(fam.model, spec, fam.hparams, seed)
        m.load_state_dict(torch.load(out / "cnn" / f"checkpoints-synthetic-{r:g}" / "best.pt", weights_only=False)["model"])
        test[f"{r:g}"] = split_accuracy(save_trained(m, fam.model, fam.hparams, spec, out / f"ratio-{r:g}" / "model.pt"), splits["test"])
    return {"real_only": test["0"], "augmented": split_accuracy(res["path"], splits["test"]), "test_by_ratio": test,
            "chosen_ratio": res["synthetic_ratio"], "val_acc": res["synthetic_val_acc"], "gan_seconds": gan_s, "cnn_seconds": cnn_s,
            "n_train": len(splits["train"])}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.25, 0.5])
    ap.add_argument("--regimes", nargs="+", default=["full", "low"], choices=["full", "low"])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    ws = Workspace.at(".")
    ws.activate()
    from components.config import load_config
    from components.data.datasets import load_dataset

    spec, splits = load_dataset(ws.data_dir())
    rows = []
    for seed in args.seeds:
        cfg = load_config("params.yaml", "default", [f"models.gan.train.seed={seed}", "engine.progress=false"])
        for regime in args.regimes:
            data = dict(splits, train=subset(splits["train"], 0.1, seed)) if regime == "low" else splits
            with tempfile.TemporaryDirectory() as tmp:
                row = {"seed": seed, "regime": regime, **run(cfg, spec, data, Path(tmp), args.ratios, seed)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\ncnn (default profile) test accuracy, real only vs with GAN samples (ratio chosen on validation from {[0.0, *args.ratios]}); seeds {args.seeds}")
    print("| regime | training images | real only | chosen on validation | gain (pp) | ratios chosen | "
          + " | ".join(f"ratio {r:g} forced" for r in args.ratios) + " |\n|---|---|---|---|---|---|" + "---|" * len(args.ratios))  # fmt: skip
    for regime in args.regimes:
        rs = [r for r in rows if r["regime"] == regime]
        real, aug = [r["real_only"] * 100 for r in rs], [r["augmented"] * 100 for r in rs]
        gains = [a - b for a, b in zip(aug, real)]
        print(f"| {regime} | {rs[0]['n_train']} | {statistics.mean(real):.2f} ({min(real):.2f}–{max(real):.2f}) | "
              f"{statistics.mean(aug):.2f} ({min(aug):.2f}–{max(aug):.2f}) | {statistics.mean(gains):+.2f} ({min(gains):+.2f}…{max(gains):+.2f}) | "
              f"{[r['chosen_ratio'] for r in rs]} | "
              + " | ".join(f"{statistics.mean(r['test_by_ratio'][f'{q:g}'] * 100 for r in rs):.2f}" for q in args.ratios) + " |")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
