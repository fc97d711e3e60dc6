"""Does `torch.compile` (engine.compile) pay on this machine? Each family trained a few epochs with
and without it on the checked-out data: the first epoch (compilation included) and the mean of the
others, and when compiling would break even over a default run.

Run (after `visionflow ingest`):
    .venv/bin/python benchmarks/bench_compile.py [--families cnn rnn cnn_lstm] [--epochs 4]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def epochs_seconds(key: str, compile_: bool, epochs: int) -> tuple[list[float], float]:
    from components.config import load_config
    from components.training.runner import load_for_training, train_classifier

    cfg = load_config(
        REPO / "params.yaml", "default", ["engine.progress=false", f"engine.compile={str(compile_).lower()}", f"models.{key}.train.epochs={epochs}"]
    )
    loaded = load_for_training(REPO / "data", cfg.data, cfg.engine)
    seen: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        res = train_classifier(key, cfg.models[key], cfg.engine, REPO / "data", Path(tmp), loaded=loaded, data=cfg.data,
                               on_epoch_end=lambda e, m: seen.append(m["epoch_seconds"]))  # fmt: skip
        return seen, res["val_acc"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", nargs="+", default=["cnn", "rnn", "cnn_lstm"])
    ap.add_argument("--epochs", type=int, default=4)
    args = ap.parse_args()
    from components.config import load_config, resolve_recipe

    models = load_config(REPO / "params.yaml").models
    print("| family | compile | first epoch | later epochs (mean) | break-even after |\n|---|---|---|---|---|")
    for key in args.families:
        base, _ = epochs_seconds(key, False, args.epochs)
        comp, _ = epochs_seconds(key, True, args.epochs)
        later_base, later_comp = statistics.mean(base[1:]), statistics.mean(comp[1:])
        saving = later_base - later_comp
        epochs = resolve_recipe(models[key].train, 1).epochs
        even = f"{(comp[0] - base[0]) / saving:.0f} epochs (a default run has {epochs})" if saving > 0 else "never (no faster per epoch)"
        print(f"| {key} | off | {base[0]:.1f} s | {later_base:.2f} s | |")
        print(f"| {key} | on | {comp[0]:.1f} s | {later_comp:.2f} s | {even} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
