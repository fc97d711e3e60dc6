"""Train one configured family from `data/` and save it as a self-describing file.

A saved model (`model.pt`) holds the registry name, the hyper-parameters, the dataset spec (the
preprocessing contract) and the weights, so `load_trained(path)` rebuilds it anywhere. The functions
take and return small values (paths, numbers), which is what crosses a Prefect task boundary.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from components.config import ClassifierFamily, DataConfig, DecisionFusionFamily, EngineConfig, GanFamily
from components.data.datasets import DatasetSpec, ImageTensors, load_dataset, load_spec_split
from components.models import create_model, family_of, import_family_module
from components.models.hybrid import calibrate, choose_alpha, fit_temperature
from components.models.transfer import expected_input
from components.training.classifier import Batcher, EpochCallback, SyntheticMix, dist_rank_world, evaluate, fit, predict_proba
from components.training.device import select_device
from components.training.gan import fit_gan

MODEL_FILE = "model.pt"


def save_trained(model: nn.Module, name: str, hparams: dict[str, Any], spec: DatasetSpec, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"model_name": name, "hparams": hparams, "spec": spec.to_json(), "state_dict": state}, path)
    return path


def _build(blob: dict, device: str | torch.device = "cpu") -> tuple[nn.Module, DatasetSpec]:
    spec = DatasetSpec.from_json(blob["spec"])
    model = create_model(blob["model_name"], num_classes=spec.num_classes, in_channels=spec.in_channels, image_size=spec.image_size, **blob["hparams"])
    model.load_state_dict(blob["state_dict"])
    return model.to(device).eval(), spec


def load_trained(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, DatasetSpec]:
    return _build(torch.load(path, map_location="cpu", weights_only=True), device)


def load_for_training(data_dir: Path, data: DataConfig | None, engine: EngineConfig) -> tuple[DatasetSpec, dict[str, ImageTensors]]:
    """The dataset at the training size: `data.max_side` caps an automatic size on a CPU, `max_side_gpu` on a GPU."""
    data = data or DataConfig()
    gpu = select_device(engine.device).type == "cuda"
    return load_dataset(data_dir, data, max_side=data.max_side_gpu if gpu else data.max_side)


def _seeded_model(name: str, spec: DatasetSpec, hparams: dict, seed: int) -> nn.Module:
    torch.manual_seed(seed)  # model initialisation is part of the seed's determinism
    return create_model(name, num_classes=spec.num_classes, in_channels=spec.in_channels, image_size=spec.image_size, **hparams)


def _ensure_registered(fam: ClassifierFamily | GanFamily) -> None:
    """A family from outside components/models/ registers itself on import; in a worker process too."""
    if fam.module:
        import_family_module(fam.module)


def train_classifier(
    key: str,
    fam: ClassifierFamily,
    engine: EngineConfig,
    data_dir: Path,
    out_dir: Path,
    *,
    resume: bool = False,
    on_epoch_end: EpochCallback | None = None,
    loaded: tuple[DatasetSpec, dict[str, ImageTensors]] | None = None,
    data: DataConfig | None = None,
) -> dict[str, Any]:
    _ensure_registered(fam)
    spec, splits = loaded or load_for_training(data_dir, data, engine)
    spec = expected_input(fam.model, fam.hparams, spec)  # pretrained weights bring their own normalisation
    ratios = fam.train.synthetic_ratio if isinstance(fam.train.synthetic_ratio, list) else [fam.train.synthetic_ratio]
    generator = load_generator(fam.train.synthetic_generator, spec) if any(r > 0 for r in ratios) else None
    tried: dict[float, tuple[nn.Module, Any]] = {}
    for ratio in ratios:  # GAN augmentation: each ratio trained, the best on validation kept (0 = real only)
        model = _seeded_model(fam.model, spec, fam.hparams, fam.train.seed)
        mix = SyntheticMix(generator, spec.num_classes, ratio) if ratio > 0 else None
        workdir = out_dir / key / ("checkpoints" if len(ratios) == 1 else f"checkpoints-synthetic-{ratio:g}")
        tried[ratio] = model, fit(model, splits["train"], splits["val"], spec, fam.train, engine, workdir=workdir,
                                  resume=resume, on_epoch_end=on_epoch_end, label=key, synthetic=mix)  # fmt: skip
    ratio = max(tried, key=lambda r: (tried[r][1].best_val_acc, -r))  # ties: less synthetic data
    model, res = tried[ratio]
    model_path = out_dir / key / MODEL_FILE
    if dist_rank_world()[0] == 0:  # under DDP every rank holds the same weights; one writes them
        save_trained(model, fam.model, fam.hparams, spec, model_path)
    return {
        "key": key, "model": fam.model, "family": family_of(fam.model), "path": str(model_path),
        "val_acc": res.best_val_acc, "best_epoch": res.best_epoch, "epochs_run": res.epochs_run,
        "train_seconds": sum(r.seconds for _, r in tried.values()), "img_per_s": res.img_per_s, "bf16": res.bf16, "device": res.device,
        "history": res.history, "synthetic_ratio": ratio, "synthetic_val_acc": {f"{r:g}": t[1].best_val_acc for r, t in tried.items()},
    }  # fmt: skip


def load_generator(source: str | None, spec: DatasetSpec) -> nn.Module:
    """The generator of GAN augmentation: a registered one (models:/NAME@ALIAS or /VERSION) or a trained GAN's model.pt."""
    if not source:
        raise ValueError("synthetic_ratio > 0 needs train.synthetic_generator: models:/visionflow-gan@generator or a GAN's model.pt")
    if source.startswith("models:/"):
        from components.tracking.mlflow_store import load_logged_model

        gen, gspec = load_logged_model(source)
    else:
        gen, gspec = load_trained(source)
    if (gspec.num_classes, gspec.in_channels, tuple(gspec.image_size)) != (spec.num_classes, spec.in_channels, tuple(spec.image_size)):
        raise ValueError(f"synthetic_generator {source} makes {gspec.in_channels}×{tuple(gspec.image_size)} images of {gspec.num_classes} classes; "
                         f"this data is {spec.in_channels}×{tuple(spec.image_size)}, {spec.num_classes} classes")  # fmt: skip
    return gen.eval()


def train_gan(
    fam: GanFamily,
    engine: EngineConfig,
    data_dir: Path,
    out_dir: Path,
    *,
    resume: bool = False,
    on_epoch_end: EpochCallback | None = None,
    loaded: tuple[DatasetSpec, dict[str, ImageTensors]] | None = None,
    data: DataConfig | None = None,
    key: str = "gan",
) -> dict[str, Any]:
    _ensure_registered(fam)
    spec, splits = loaded or load_for_training(data_dir, data, engine)
    gan = _seeded_model(fam.model, spec, fam.hparams, fam.train.seed)
    res = fit_gan(gan, splits["train"], fam.train, engine, workdir=out_dir / key / "checkpoints", resume=resume, on_epoch_end=on_epoch_end)
    path = save_trained(gan, fam.model, fam.hparams, spec, out_dir / key / MODEL_FILE)
    return {"key": key, "model": fam.model, "family": family_of(fam.model), "path": str(path), "epochs_run": res.epochs_run,
            "train_seconds": res.seconds, "device": res.device, "history": res.history}  # fmt: skip


def fuse(
    fam: DecisionFusionFamily,
    member_paths: dict[str, str],
    data_dir: Path,
    out_dir: Path,
    *,
    loaded: tuple[DatasetSpec, dict[str, ImageTensors]] | None = None,
    key: str = "decision_fusion",
) -> dict[str, Any]:
    """Decision fusion of two trained classifiers; α chosen on the validation split only. Each member
    sees the validation split through its own spec (pretrained members normalise differently)."""
    device = select_device("auto")
    blobs = [torch.load(member_paths[k], map_location="cpu", weights_only=True) for k in fam.members]
    (m1, s1), (m2, s2) = (_build(b, device) for b in blobs)
    if s1 != s2:  # y = α·f1(x) + (1−α)·f2(x) needs one x: the same size, channels and normalisation
        raise ValueError(f"decision_fusion: members {fam.members} were trained with different preprocessing ({s1} vs {s2})")
    spec = s1
    val = loaded[1]["val"] if loaded else load_spec_split(data_dir, "val", spec)
    batcher = Batcher(spec, device, channels_last=False)
    p1, p2 = (predict_proba(m, val, batcher) for m in (m1, m2))
    t1, t2 = (fit_temperature(p, val.y) for p in (p1, p2)) if fam.calibrate else (1.0, 1.0)
    alpha, val_acc = choose_alpha(calibrate(p1, t1), calibrate(p2, t2), val.y, fam.alpha_steps, fam.criterion)
    hparams = {"members": [b["model_name"] for b in blobs], "alpha": alpha, "temperatures": [t1, t2],
               "member_hparams": {b["model_name"]: b["hparams"] for b in blobs}}  # fmt: skip
    if blobs[0]["model_name"] == blobs[1]["model_name"] and blobs[0]["hparams"] != blobs[1]["hparams"]:
        raise ValueError("decision_fusion: two members of the same model need the same hparams")
    fused = create_model("decision_fusion", num_classes=spec.num_classes, in_channels=spec.in_channels, image_size=spec.image_size, **hparams)
    fused.f1.load_state_dict(blobs[0]["state_dict"])
    fused.f2.load_state_dict(blobs[1]["state_dict"])
    path = save_trained(fused, "decision_fusion", hparams, spec, out_dir / key / MODEL_FILE)
    return {"key": key, "model": "decision_fusion", "family": "hybrid", "path": str(path),
            "val_acc": val_acc, "alpha": alpha, "temperatures": [t1, t2], "members": list(fam.members)}  # fmt: skip


def split_accuracy(model_path: str | Path, data: ImageTensors) -> float:
    """Accuracy on a split (for benchmarks; the full evaluation lives in components/evaluation)."""
    device = select_device("auto")
    model, spec = load_trained(model_path, device)
    return evaluate(model, data, Batcher(spec, device, channels_last=False))["acc"]
