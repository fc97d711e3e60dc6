"""Issues 3 and 12's numbers: test accuracy of every family (mean/min/max over seeds), its robustness
(Gaussian noise σ 0.3, FGSM ε 0.05 and 0.1, on the test split), the decision fusion's α (and how
often it is 1.0 or 0.0: not fusing), the champion (best on validation) and its figures,
GAN-test/GAN-train, wall time of training all families together, peak resident memory, and which
test images the classifiers miss (how many of them miss each: the data's ceiling).

Run (after `make run` has ingested data/):
    .venv/bin/python benchmarks/bench_families.py --profile default --seeds 0 1 2
Every choice (early stopping, best epoch, decision-fusion α) is made on the validation split; the
test split is only measured. Prints a markdown table; --json writes the raw figures.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components.workspace import Workspace  # noqa: E402

ROBUST = ("acc_noise_0.3", "acc_fgsm_0.05", "acc_fgsm_0.1")


def _robustness(path: str, test) -> dict[str, float]:
    from components.evaluation.metrics import robustness
    from components.training.runner import load_trained

    model, spec = load_trained(path)
    return robustness(model, test.x.float() / 255, test.y, spec, noise=(0.3,), eps=(0.05, 0.1))


def _missed(path: str, test) -> list[int]:
    """Indices of the test images the model gets wrong (where the last tenths of a percent go)."""
    import torch

    from components.training.classifier import Batcher, predict_proba
    from components.training.runner import load_trained

    model, spec = load_trained(path)
    probs = predict_proba(model, test, Batcher(spec, torch.device("cpu"), channels_last=False))
    return torch.nonzero(probs.argmax(1) != test.y).flatten().tolist()


def resplit(loaded, split_cfg, seed: int):
    """The ingested images split again with another seed by the project's own stratified splitter
    (`assign_splits`, keyed by file name), the normalisation recomputed from the new train split:
    several test splits separate a recipe's effect from one split's few hard images."""
    import dataclasses

    import torch

    from components.data.datasets import ImageTensors, normalisation
    from components.data.ingest import assign_splits

    spec, splits = loaded
    parts = [splits[s] for s in ("train", "val", "test")]
    if any(p.streaming for p in parts):
        raise SystemExit("--split-seeds needs a dataset that fits in memory")
    x, y = torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts])
    paths = [q for p in parts for q in p.paths]
    keys = [(spec.classes[label], Path(path).name) for label, path in zip(y.tolist(), paths)]
    keys_by_class: dict[str, list[str]] = {}
    for class_name, name in keys:
        keys_by_class.setdefault(class_name, []).append(name)
    where = assign_splits(keys_by_class, split_cfg.model_copy(update={"seed": seed}))
    out = {}
    for s in ("train", "val", "test"):
        idx = torch.tensor([i for i, key in enumerate(keys) if where[key] == s])
        out[s] = ImageTensors(x[idx], y[idx], [paths[i] for i in idx])
    mean, std = normalisation(out["train"])
    return dataclasses.replace(spec, mean=mean, std=std), out


def run_seed(cfg, data_dir: Path, out: Path, loaded) -> dict:
    from components.config import TrainConfig
    from components.evaluation.gan_metrics import gan_test, gan_train
    from components.training.runner import fuse, load_trained, split_accuracy, train_classifier, train_gan

    spec, splits = loaded
    row: dict = {"seconds": {}}
    t_all = time.perf_counter()
    trained = {}
    for key, fam in cfg.models.classifiers().items():
        t = time.perf_counter()
        trained[key] = train_classifier(key, fam, cfg.engine, data_dir, out, loaded=loaded)
        row["seconds"][key] = time.perf_counter() - t
        row[key] = split_accuracy(trained[key]["path"], splits["test"])
        row[f"{key}_epochs"] = trained[key]["epochs_run"]
        row[f"{key}_val"] = trained[key]["val_acc"]
    if cfg.models.decision_fusion.enabled:
        t = time.perf_counter()
        fused = fuse(cfg.models.decision_fusion, {k: v["path"] for k, v in trained.items()}, data_dir, out, loaded=loaded)
        row["seconds"]["decision_fusion"] = time.perf_counter() - t
        row["decision_fusion"] = split_accuracy(fused["path"], splits["test"])
        row["alpha"] = fused["alpha"]
        row["decision_fusion_val"] = fused["val_acc"]
        trained["decision_fusion"] = fused
    if cfg.models.gan.enabled:
        t = time.perf_counter()
        g = train_gan(cfg.models.gan, cfg.engine, data_dir, out, loaded=loaded)
        row["seconds"]["gan"] = time.perf_counter() - t
    row["train_all_seconds"] = time.perf_counter() - t_all
    for key, t in trained.items():  # robustness on the test split, measured (chosen on nothing)
        for metric, value in _robustness(t["path"], splits["test"]).items():
            row[f"{key}_{metric}"] = value
        row[f"{key}_missed"] = _missed(t["path"], splits["test"])
    row["champion"] = max(trained, key=lambda k: trained[k]["val_acc"])  # as the pipeline chooses: validation only
    if cfg.models.gan.enabled and "cnn" in trained:
        gan, _ = load_trained(g["path"])
        judge, _ = load_trained(trained["cnn"]["path"])
        row["gan_test"] = gan_test(gan, judge, spec, n=1000)
        t = time.perf_counter()
        row["gan_train"] = gan_train(gan, spec, splits["test"], workdir=out / "gan_train", cnn_hparams=cfg.models.cnn.hparams,
                                     n=cfg.evaluation.gan_train_samples,
                                     cfg=TrainConfig(epochs=cfg.evaluation.gan_train_epochs, augment="shift", noise_sigma=0.0, patience=10_000))  # fmt: skip
        row["seconds"]["gan_train_metric"] = time.perf_counter() - t
    return row


def _print_missed(split_seed: int, missed: list[list[int]]) -> None:
    counts = Counter(i for wrong in missed for i in wrong)
    print(f"\nsplit {split_seed}: test images missed, out of {len(missed)} trained classifiers (families × seeds): "
          + ", ".join(f"#{i} by {c}" for i, c in counts.most_common(16) if c > len(missed) // 3))  # fmt: skip
    print(f"errors per classifier: {sorted(len(w) for w in missed)}; by ≥ 2/3 of them: {sum(c >= 2 * len(missed) / 3 for c in counts.values())} images")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="default")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--split-seeds", type=int, nargs="+", default=None,
                    help="also split the images again with these seeds (the ingested split is data.split.seed); every seed runs on every split")  # fmt: skip
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    ws = Workspace.at(".")
    ws.activate()
    from components.config import load_config
    from components.data.datasets import load_dataset

    data_dir = ws.data_dir()
    loaded = load_dataset(data_dir)
    rows = []
    ingested = load_config("params.yaml", args.profile, args.overrides).data.split
    for split_seed in args.split_seeds or [ingested.seed]:
        data = loaded if split_seed == ingested.seed else resplit(loaded, ingested, split_seed)
        for seed in args.seeds:
            keys = ["cnn", "rnn", "cnn_lstm", "feature_fusion", "gan"]
            cfg = load_config("params.yaml", args.profile, [*args.overrides, *[f"models.{k}.train.seed={seed}" for k in keys], "engine.progress=false"])
            with tempfile.TemporaryDirectory() as tmp:
                row = run_seed(cfg, data_dir, Path(tmp), data)
            row["seed"], row["split_seed"] = seed, split_seed
            rows.append(row)
            print(json.dumps(row), flush=True)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    families = [m for m in ("cnn", "rnn", "cnn_lstm", "feature_fusion", "decision_fusion") if m in rows[0]]
    splits_seen = sorted({r["split_seed"] for r in rows})
    print(f"\nprofile {args.profile}, seeds {args.seeds}, split seeds {splits_seen}, test split of {len(loaded[1]['test'])} images; "
          "mean (min–max) over seeds and splits")  # fmt: skip

    def cell(vals: list[float]) -> str:
        return f"{statistics.mean(vals):.2f} ({min(vals):.2f}–{max(vals):.2f})"

    print("| model | clean | noise σ 0.3 | FGSM ε 0.05 | FGSM ε 0.1 |\n|---|---|---|---|---|")
    for m in families:
        cols = [[r[m] * 100 for r in rows]] + [[r[f"{m}_{k}"] * 100 for r in rows] for k in ROBUST]
        print(f"| {m} | " + " | ".join(cell(c) for c in cols) + " |")
    champ = [[r[r["champion"]] * 100 for r in rows]] + [[r[f"{r['champion']}_{k}"] * 100 for r in rows] for k in ROBUST]
    print(f"| champion (best on validation: {', '.join(r['champion'] for r in rows)}) | " + " | ".join(cell(c) for c in champ) + " |")
    if len(splits_seen) > 1:  # the same recipe on different test splits: how much one split's hard images move it
        print("\n| model | " + " | ".join(f"split {k}" for k in splits_seen) + " |\n|---|" + "---|" * len(splits_seen))
        for m in families:
            print(f"| {m} | " + " | ".join(cell([r[m] * 100 for r in rows if r["split_seed"] == k]) for k in splits_seen) + " |")
    if "alpha" in rows[0]:
        alphas = [r["alpha"] for r in rows]
        print(f"\ndecision fusion α per seed: {alphas}; not fusing (α = 0 or 1) in {sum(a in (0.0, 1.0) for a in alphas)} of {len(alphas)}")
    for k in splits_seen:  # image indices mean something within one split only
        missed = [r[f"{m}_missed"] for r in rows if r["split_seed"] == k for m in families if m != "decision_fusion"]
        _print_missed(k, missed)

    print("\n| metric | mean | min | max |\n|---|---|---|---|")
    for m in [m for m in ("gan_test", "gan_train") if m in rows[0]]:
        vals = [r[m] * 100 for r in rows]
        print(f"| {m} | {statistics.mean(vals):.2f} % | {min(vals):.2f} % | {max(vals):.2f} % |")
    times = [r["train_all_seconds"] for r in rows]
    print(f"| train all families (wall) | {statistics.mean(times):.0f} s | {min(times):.0f} s | {max(times):.0f} s |")
    for k in rows[0]["seconds"]:
        vals = [r["seconds"][k] for r in rows]
        print(f"| {k} time | {statistics.mean(vals):.0f} s | {min(vals):.0f} s | {max(vals):.0f} s |")
    print(f"| peak resident memory | {peak_gb:.2f} GB | | |")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "peak_rss_gb": peak_gb}, indent=2))


if __name__ == "__main__":
    main()
