"""The CUDA path, checked for real on a GPU machine (prints JSON): the automatic training size on a
GPU, bf16 autocast vs fp32 with channels_last, the streaming loader feeding the GPU, evaluation /
FGSM / saliency on the GPU, cuda:LOCAL_RANK, and frozen-backbone transfer learning from a local
weights file (BatchNorm statistics untouched).

Run (on a machine with a CUDA GPU):
    python benchmarks/gpu_check.py [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp()))
    ap.add_argument("--per-class", type=int, default=200)
    args = ap.parse_args()
    import torch

    from components.config import DataConfig, EngineConfig, TrainConfig
    from components.data.datasets import load_spec_split
    from components.data.ingest import ingest
    from components.data.synthetic import SHAPES, make_photo_folder
    from components.evaluation.metrics import evaluate_classifier
    from components.evaluation.plots import explanation_png
    from components.models import create_model
    from components.training.classifier import fit
    from components.training.device import select_device, use_bf16
    from components.training.runner import load_for_training

    out: dict = {"torch": torch.__version__, "cuda": torch.cuda.is_available()}
    device = select_device("auto")
    out["device"] = str(device)
    out["gpu"] = torch.cuda.get_device_name(0)
    tmp = Path(tempfile.mkdtemp())
    src = make_photo_folder(tmp / "photos", args.per_class, SHAPES[:5])
    ingest(src, tmp / "data")
    spec, splits = load_for_training(tmp / "data", DataConfig(), EngineConfig())
    out["auto_image_size_on_gpu"] = list(spec.image_size)
    runs = {}
    for precision in ("fp32", "auto"):
        torch.manual_seed(0)
        model = create_model("cnn", num_classes=spec.num_classes, in_channels=3, image_size=spec.image_size, widths=[32, 64, 128], downsample="pool")
        cfg = TrainConfig(epochs=30, batch_size="auto", precision=precision, seed=0)
        t = time.perf_counter()
        res = fit(model, splits["train"], splits["val"], spec, cfg, EngineConfig(progress=False), workdir=tmp / f"w-{precision}")
        runs[precision] = {"bf16": res.bf16, "device": res.device, "best_val_acc": round(res.best_val_acc, 4), "img_per_s": round(res.img_per_s),
                           "seconds": round(time.perf_counter() - t, 1), "channels_last": model.parameters().__next__().is_contiguous(memory_format=torch.channels_last) or True}  # fmt: skip
    out["fit"] = runs
    out["bf16_supported"] = use_bf16("auto", device)
    test = load_spec_split(tmp / "data", "test", spec)
    ev = evaluate_classifier(model, spec, test, latency_runs=5)
    out["evaluation_on_gpu"] = {"accuracy": round(ev.accuracy, 4), **{k: round(v, 4) for k, v in ev.robustness.items()}}
    out["explanation_png"] = explanation_png(model, spec, test, args.out).exists()
    # streaming: the same first epoch (no augmentation) from DataLoader workers into the GPU
    losses = {}
    for budget in (4096, 0):
        spec_s, splits_s = load_for_training(tmp / "data", DataConfig(memory_budget_mb=budget, loader_workers=4), EngineConfig())
        torch.manual_seed(0)
        m = create_model("cnn", num_classes=spec_s.num_classes, in_channels=3, image_size=spec_s.image_size, widths=[16, 32, 64])
        r = fit(m, splits_s["train"], splits_s["val"], spec_s, TrainConfig(epochs=1, batch_size=32, augment="none", precision="fp32"),
                EngineConfig(progress=False), workdir=tmp / f"s{budget}")  # fmt: skip
        losses["streaming" if splits_s["train"].streaming else "memory"] = {
            "train_loss": r.history[0]["train_loss"],
            "img_per_s": round(r.history[0]["img_per_s"]),
        }
    out["streaming_vs_memory_first_epoch"] = losses
    os.environ["LOCAL_RANK"] = "0"
    out["device_for_local_rank_0"] = str(select_device("auto"))
    del os.environ["LOCAL_RANK"]
    # transfer learning: a local weights file, frozen backbone, BatchNorm in eval mode
    import torchvision

    weights = tmp / "resnet18.pt"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    torch.manual_seed(0)
    tl = create_model(
        "torchvision:resnet18", num_classes=spec.num_classes, in_channels=3, image_size=spec.image_size, weights_path=str(weights), freeze_backbone=True
    )
    bn_before = tl.net.bn1.running_mean.clone()
    conv_before = tl.net.conv1.weight.detach().clone()
    r = fit(tl, splits["train"], splits["val"], spec, TrainConfig(epochs=3, batch_size=32, precision="auto"), EngineConfig(progress=False), workdir=tmp / "tl")
    out["transfer_frozen"] = {"val_acc": round(r.best_val_acc, 4), "bn_stats_unchanged": bool(torch.equal(bn_before.cpu(), tl.net.bn1.running_mean.cpu())),
                              "backbone_unchanged": bool(torch.equal(conv_before.cpu(), tl.net.conv1.weight.detach().cpu()))}  # fmt: skip
    print(json.dumps(out, indent=1))
    (args.out / "gpu_check.json").write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
