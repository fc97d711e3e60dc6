"""Which recipe holds across data: the default cnn recipe against alternatives and a plain PyTorch
loop, on the bundled digits, on a gray set that is not digits (the generated photos, converted to
gray at ingest) and on the generated photos in colour (`photos`). Every choice is made on validation; test and noise figures are reported.

Run (after `make run` or `visionflow ingest` has put the digits in data/):
    .venv/bin/python benchmarks/bench_recipes.py [--epochs 30] [--recipes default shift shift-flip ...] [--json out.json]

Recipes (visionflow's training loop, the default cnn otherwise):
    default      what `augment: auto` / `noise_sigma: auto` resolve to for gray data today
    affine+noise affine (±10°, scale 0.1, ±2 px) + Gaussian-noise training σ~U(0, 0.4) on half of each batch from the first epoch
    affine       affine, no noise training
    shift        ±2 px shifts only, no noise training
    shift+noise  ±2 px shifts + noise training from the first epoch
    shift-fp32   shift, in fp32 where `precision: auto` would use bf16 autocast
plain: a hand-written loop (the same cnn, AdamW one-cycle, batch 128, ±2 px shifts, no noise, no
early stopping, the last epoch's weights), the issue's reference point. `--plain-time same` gives it
the wall time the default recipe took on the same data (as many epochs as fit), instead of --epochs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
VISIONFLOW = str(Path(sys.executable).with_name("visionflow"))

RECIPES = {
    "default": {},
    "affine+noise": {"augment": "affine", "noise_sigma": 0.4, "noise_from_val_acc": 0.0},
    "affine": {"augment": "affine", "noise_sigma": 0.0},
    "shift": {"augment": "shift", "noise_sigma": 0.0},
    "shift+noise": {"augment": "shift", "noise_sigma": 0.4, "noise_from_val_acc": 0.0},
    "shift-fp32": {"augment": "shift", "noise_sigma": 0.0, "precision": "fp32"},
}


def photos(tmp: Path, per_class: int, side: int, channels: str = "gray") -> Path:
    """The generated photos, ingested at `side` px as gray images (a gray set that is not digits) or RGB."""
    from components.data.synthetic import SHAPES, make_photo_folder

    src = make_photo_folder(tmp / "photos", per_class, SHAPES[:5], seed=0)
    return _ingest(tmp / "project", src, ["--set", f"data.channels={channels}", "--set", f"data.image_size={side}"])


def _ingest(project: Path, src: Path, sets: list[str]) -> Path:
    """A fresh project (params.yaml, git) at `project` with `src` ingested; its data folder."""
    project.mkdir()
    shutil.copy(REPO / "params.yaml", project / "params.yaml")
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    done = subprocess.run([VISIONFLOW, "ingest", "--source", str(src), *sets], cwd=project, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"visionflow ingest of {src} failed:\n{(done.stdout + done.stderr)[-2000:]}")
    return project / "data"


TEXTURE_PICTURES = ["brick", "grass", "gravel", "camera", "moon", "coins", "chelsea", "hubble_deep_field", "astronaut", "coffee"]


def textures(tmp: Path, per_class: int, side: int) -> Path:
    """A gray set from a library's data, neither digits nor generated: 32-64 px patches of ten pictures
    that scikit-image ships (textures, a camera man, the moon, coins, a cat, galaxies, ...), gray at `side`
    px, one class per picture (blank patches drawn again). Train, val and test patches come from disjoint horizontal bands of each
    picture (the top 70 %, the next 15 %, the last 15 %), so a test patch shares no pixel with training."""
    try:
        import skimage.data
        from skimage.color import rgb2gray
    except ImportError:
        raise SystemExit('textures: needs scikit-image (pip install -e ".[bench]")') from None
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    src = tmp / "textures"
    counts = {"train": int(per_class * 0.7), "val": int(per_class * 0.15), "test": per_class - int(per_class * 0.7) - int(per_class * 0.15)}
    for name in TEXTURE_PICTURES:
        pic = getattr(skimage.data, name)()
        pic = (rgb2gray(pic) * 255).astype(np.uint8) if pic.ndim == 3 else pic
        h, w = pic.shape
        bands = {"train": (0, int(0.7 * h)), "val": (int(0.7 * h), int(0.85 * h)), "test": (int(0.85 * h), h)}
        for split, (top, bottom) in bands.items():
            out = src / split / name
            out.mkdir(parents=True)
            taken: set[tuple[int, int, int]] = set()
            for i in range(counts[split]):
                patch, tries, where = np.zeros((1, 1), np.uint8), 0, None
                while patch.std() < 8 or not 8 <= patch.mean() <= 247 or where in taken:  # blank (the moon's sky, a black backdrop) or drawn before
                    if (tries := tries + 1) > 1000:
                        raise SystemExit(f"textures: no patch with detail in the {split} band of {name}")
                    s = int(rng.integers(32, min(64, bottom - top) + 1))
                    y, x = int(rng.integers(top, bottom - s + 1)), int(rng.integers(0, w - s + 1))
                    patch, where = pic[y : y + s, x : x + s], (y, x, s)
                taken.add(where)
                Image.fromarray(patch).resize((side, side), Image.BILINEAR).save(out / f"{i:04d}.png")
    return _ingest(tmp / "project", src, ["--set", "data.channels=gray"])


def _scores(path: str, splits) -> dict[str, float]:
    from components.evaluation.metrics import robustness
    from components.training.runner import load_trained, split_accuracy

    model, spec = load_trained(path)
    noisy = robustness(model, splits["test"].x.float() / 255, splits["test"].y, spec, noise=(0.3,), eps=())
    return {"val": split_accuracy(path, splits["val"]), "test": split_accuracy(path, splits["test"]), "noise_0.3": noisy["acc_noise_0.3"]}


def visionflow_recipe(name: str, data_dir: Path, epochs: int | None, out: Path, sets: list[str]) -> dict:
    from components.config import load_config
    from components.training.runner import load_for_training, train_classifier

    cfg = load_config(REPO / "params.yaml", "default", ["engine.progress=false", *sets])
    loaded = load_for_training(data_dir, cfg.data, cfg.engine)
    fam = cfg.models.cnn
    update = {**RECIPES[name], **({"epochs": epochs} if epochs else {})}  # no --epochs: the recipe's own (`auto`)
    fam = fam.model_copy(update={"train": fam.train.model_copy(update=update)})
    t = time.perf_counter()
    res = train_classifier("cnn", fam, cfg.engine, data_dir, out / name, loaded=loaded, data=cfg.data)
    return {"seconds": time.perf_counter() - t, "epochs_run": res["epochs_run"], **_scores(res["path"], loaded[1])}


def plain_loop(data_dir: Path, epochs: int, out: Path, sets: list[str], seconds: float | None = None) -> dict:
    import torch
    import torch.nn as nn

    from components.config import load_config
    from components.models import create_model
    from components.training.runner import load_for_training, save_trained

    cfg = load_config(REPO / "params.yaml", "default", ["engine.progress=false", *sets])
    spec, splits = load_for_training(data_dir, cfg.data, cfg.engine)
    fam = cfg.models.cnn
    x, y = splits["train"].x, splits["train"].y
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(spec.std).view(1, -1, 1, 1)
    bs = 128

    def train(epochs: int):
        torch.manual_seed(0)
        model = create_model("cnn", num_classes=spec.num_classes, in_channels=spec.in_channels, image_size=spec.image_size, **fam.hparams)
        steps = epochs * ((len(x) + bs - 1) // bs)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=5e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
        loss_fn = nn.CrossEntropyLoss()
        for _ in range(epochs):
            model.train()
            for idx in torch.randperm(len(x)).split(bs):
                xb = (x[idx].float() / 255 - mean) / std
                dx, dy = (int(v) for v in torch.randint(-2, 3, (2,)))
                xb = torch.roll(xb, shifts=(dy, dx), dims=(2, 3))  # ±2 px shifts (one per batch, as a simple loop would)
                loss = loss_fn(model(xb), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
        return model

    if seconds is not None:  # the same wall time: as many epochs as one timed epoch says fit
        t = time.perf_counter()
        train(1)
        epochs = max(1, round(seconds / (time.perf_counter() - t)))
    t = time.perf_counter()
    model = train(epochs)
    seconds = time.perf_counter() - t
    path = save_trained(model.eval(), "cnn", fam.hparams, spec, out / "plain" / "model.pt")
    return {"seconds": seconds, "epochs_run": epochs, **_scores(str(path), splits)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=None, help="every recipe and the plain loop (default: each recipe's own; the plain loop 30)")
    ap.add_argument("--recipes", nargs="+", default=[*RECIPES, "plain"])
    ap.add_argument("--datasets", nargs="+", choices=["digits", "gray-photos", "photos", "textures"], default=["digits", "gray-photos"])
    ap.add_argument("--per-class", type=int, default=None, help="photos (5 classes): images per class, default 300; textures (10 classes): default 500")
    ap.add_argument("--side", type=int, default=32, help="photos: training side in px (data.image_size)")
    ap.add_argument(
        "--plain-time",
        choices=["epochs", "same"],
        default="epochs",
        help="the plain loop trains --epochs (epochs), or for the default recipe's wall time on the same data (same)",
    )
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.plain_time == "same" and "plain" in args.recipes and "default" not in args.recipes[: args.recipes.index("plain")]:
        ap.error("--plain-time same: list the default recipe before plain (plain gets the time it took)")
    tmp = Path(tempfile.mkdtemp(prefix="visionflow-recipes-"))
    rows = []
    try:
        for ds in args.datasets:
            channels = "rgb" if ds == "photos" else "gray"
            if ds == "digits":
                data_dir = REPO / "data"
            elif ds == "textures":
                data_dir = textures(tmp / ds, args.per_class or 500, args.side)
            else:
                data_dir = photos(tmp / ds, args.per_class or 300, args.side, channels)
            sets = [] if ds == "digits" else [f"data.image_size={args.side}"]
            seconds = None
            for name in args.recipes:
                if name == "plain":
                    fig = plain_loop(data_dir, args.epochs or 30, tmp / ds, sets, seconds if args.plain_time == "same" else None)
                else:
                    fig = visionflow_recipe(name, data_dir, args.epochs, tmp / ds, sets)
                    seconds = fig["seconds"] if name == "default" else seconds
                rows.append({"dataset": ds, "recipe": name, **fig})
                print(json.dumps(rows[-1]), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("\n| dataset | recipe | val acc | test acc | test acc, noise σ 0.3 | epochs | seconds |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['dataset']} | {r['recipe']} | {100 * r['val']:.2f} % | {100 * r['test']:.2f} % | {100 * r['noise_0.3']:.2f} % | {r['epochs_run']} | {r['seconds']:.0f} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
