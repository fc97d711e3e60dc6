"""Training throughput of the engine vs a minimal hand-written PyTorch loop, side by side in one run.

Same model (the configured cnn), batch size, precision, data and memory format; augmentation off in
both (the bare loop has none). Epochs alternate between the two so machine noise hits both alike.
Run: .venv/bin/python benchmarks/bench_engine_vs_bare.py [--epochs 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from components.config import (
    load_config,  # noqa: E402
    resolve_recipe,  # noqa: E402
)
from components.data.datasets import load_dataset  # noqa: E402
from components.models import create_model  # noqa: E402
from components.training.classifier import Batcher, _scheduler, train_one_epoch  # noqa: E402
from components.training.device import select_device, use_bf16  # noqa: E402


def bare_epoch(model, x_u8, y, mean, std, opt, sched, loss_fn, bs, bf16, gen, device):
    model.train()
    order = torch.randperm(len(y), generator=gen)
    start, seen = time.perf_counter(), 0
    for i in range(0, len(order), bs):
        idx = order[i : i + bs]
        if len(idx) < 2:
            continue
        x = ((x_u8[idx].to(device).float() / 255 - mean) / std).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(model(x).float(), y[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        seen += len(idx)
    return seen / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()
    cfg = load_config("params.yaml", "default", ["models.cnn.train.augment=none", f"models.cnn.train.epochs={args.epochs}"])
    spec, splits = load_dataset(Path("data"), cfg.data)
    fam = cfg.models.cnn.model_copy(update={"train": resolve_recipe(cfg.models.cnn.train, spec.in_channels)})  # `auto` → numbers
    train = splits["train"]
    device = select_device(cfg.engine.device)
    bf16 = use_bf16(fam.train.precision, device)

    def setup():
        torch.manual_seed(0)
        m = create_model(fam.model, num_classes=spec.num_classes, in_channels=spec.in_channels, image_size=spec.image_size, **fam.hparams)
        m = m.to(device).to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(m.parameters(), lr=fam.train.lr, weight_decay=fam.train.weight_decay)
        steps = sum(1 for i in range(0, len(train), fam.train.batch_size) if len(train) - i >= 2)
        return m, opt, _scheduler(opt, fam.train, steps)

    loss_fn = nn.CrossEntropyLoss(label_smoothing=fam.train.label_smoothing)
    engine_m, engine_opt, engine_sched = setup()
    bare_m, bare_opt, bare_sched = setup()
    batcher = Batcher(spec, device, True, fam.train)
    mean, std = batcher.mean, batcher.std
    engine_ips, bare_ips = [], []
    for epoch in range(args.epochs):
        gen = torch.Generator().manual_seed(epoch)
        engine_ips.append(train_one_epoch(engine_m, train, batcher, engine_opt, engine_sched, loss_fn, batch_size=fam.train.batch_size,
                                          bf16=bf16, grad_clip=fam.train.grad_clip, gen=gen)["img_per_s"])  # fmt: skip
        gen = torch.Generator().manual_seed(epoch)
        bare_ips.append(bare_epoch(bare_m, train.x, train.y, mean, std, bare_opt, bare_sched, loss_fn, fam.train.batch_size, bf16, gen, device))
    e, b = statistics.median(engine_ips), statistics.median(bare_ips)
    print(f"model {fam.model} {fam.hparams}, batch {fam.train.batch_size}, {'bf16' if bf16 else 'fp32'}, {device}, {args.epochs} epochs each")
    print(f"engine: {e:.0f} img/s   bare loop: {b:.0f} img/s   ratio engine/bare: {e / b:.3f}")


if __name__ == "__main__":
    main()
