"""The GAN loop: class-conditional DCGAN with an auxiliary-classifier term, one-sided label
smoothing and a generator EMA (calibration recipe B). Checkpoints every epoch; `resume` continues.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from components.config import EngineConfig, GanTrainConfig, resolve_gan_recipe
from components.data.datasets import ImageTensors
from components.models.gan import ConditionalDCGAN
from components.process import check_stop
from components.training.classifier import EpochCallback, _autocast, _progress, _save
from components.training.device import select_device, set_threads, use_bf16


@dataclass
class GanFitResult:
    epochs_run: int
    checkpoint: Path
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    device: str = "cpu"


def train_gan_epoch(gan: ConditionalDCGAN, data: ImageTensors, opt_g, opt_d, cfg: GanTrainConfig, device: torch.device, bf16: bool,
                    gen: torch.Generator, step0: int = 0) -> dict[str, float]:  # fmt: skip
    G, D = gan.generator, gan.discriminator
    G.train(), D.train()
    order = torch.randperm(len(data), generator=gen)
    sums = {"d_loss": 0.0, "g_loss": 0.0, "d_real": 0.0, "d_fake": 0.0}
    steps, start = 0, time.perf_counter()
    batches = [b for b in (order[i : i + cfg.batch_size] for i in range(0, len(order) - 1, cfg.batch_size)) if len(b) >= 2]
    for idx, xb in zip(batches, data.batches(batches)):  # from memory, or decoded from disk by workers
        check_stop()
        real = xb.to(device).float().div_(127.5).sub_(1)
        y = data.y[idx].to(device)
        z = torch.randn(len(idx), gan.z_dim, generator=gen).to(device)
        y_fake = torch.randint(0, gan.num_classes, (len(idx),), generator=gen).to(device)
        with _autocast(device, bf16):
            fake = G(z, y_fake)
            adv_r, aux_r = D(real, y)
            adv_f, aux_f = D(fake.detach(), y_fake)
            d_loss = (
                F.binary_cross_entropy_with_logits(adv_r.float(), torch.full_like(adv_r.float(), cfg.real_label))
                + F.binary_cross_entropy_with_logits(adv_f.float(), torch.zeros_like(adv_f.float()))
                + cfg.aux_weight * (F.cross_entropy(aux_r.float(), y) + F.cross_entropy(aux_f.float(), y_fake))
            )
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        with _autocast(device, bf16):
            adv_g, aux_g = D(fake, y_fake)
            g_loss = F.binary_cross_entropy_with_logits(adv_g.float(), torch.ones_like(adv_g.float())) + cfg.aux_weight * F.cross_entropy(aux_g.float(), y_fake)
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        gan.update_ema(cfg.ema_decay, step0 + steps)
        sums["d_loss"] += d_loss.item()
        sums["g_loss"] += g_loss.item()
        sums["d_real"] += torch.sigmoid(adv_r.float()).mean().item()
        sums["d_fake"] += torch.sigmoid(adv_f.float()).mean().item()
        steps += 1
    out = {k: v / max(steps, 1) for k, v in sums.items()}
    out["steps"] = steps
    out["epoch_seconds"] = time.perf_counter() - start
    out["img_per_s"] = steps * cfg.batch_size / out["epoch_seconds"]
    return out


def _lr_factor(cfg: GanTrainConfig, epoch: int) -> float:
    """linear_decay: 1 for the first half of the epochs, then a straight line towards 0 at the end."""
    if cfg.schedule == "constant":
        return 1.0
    half = cfg.epochs / 2
    return 1.0 if epoch < half else (cfg.epochs - epoch) / (cfg.epochs - half + 1)


def fit_gan(
    gan: ConditionalDCGAN,
    train: ImageTensors,
    cfg: GanTrainConfig,
    engine: EngineConfig = EngineConfig(),
    *,
    workdir: Path,
    resume: bool = False,
    on_epoch_end: EpochCallback | None = None,
    label: str = "gan",
) -> GanFitResult:
    cfg = resolve_gan_recipe(cfg, gan.in_channels)  # `auto` epochs for the data's style
    workdir.mkdir(parents=True, exist_ok=True)
    set_threads(engine.threads)
    device = select_device(engine.device)
    bf16 = use_bf16(cfg.precision, device)
    torch.manual_seed(cfg.seed)
    gan.to(device)
    betas = (cfg.beta1, cfg.beta2)
    opt_g = torch.optim.Adam(gan.generator.parameters(), lr=cfg.lr, betas=betas)
    opt_d = torch.optim.Adam(gan.discriminator.parameters(), lr=cfg.lr, betas=betas)
    last = workdir / "last.pt"
    start_epoch, history = 0, []
    if resume and last.exists():
        ckpt = torch.load(last, map_location=device, weights_only=False)
        gan.load_state_dict(ckpt["gan"])
        opt_g.load_state_dict(ckpt["opt_g"])
        opt_d.load_state_dict(ckpt["opt_d"])
        torch.set_rng_state(ckpt["rng"])
        start_epoch, history = ckpt["epoch"] + 1, ckpt["history"]
    progress = _progress(engine.progress, label, cfg.epochs, start_epoch)
    elapsed = sum(h["epoch_seconds"] for h in history)
    for epoch in range(start_epoch, cfg.epochs):
        for opt in (opt_g, opt_d):  # from the epoch alone, so a resumed run needs no scheduler state
            for group in opt.param_groups:
                group["lr"] = cfg.lr * _lr_factor(cfg, epoch)
        gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        step0 = sum(h.get("steps", 0) for h in history)
        stats = train_gan_epoch(gan, train, opt_g, opt_d, cfg, device, bf16, gen, step0)
        stats["epoch"], stats["lr"] = epoch, opt_g.param_groups[0]["lr"]
        history.append(stats)
        elapsed += stats["epoch_seconds"]
        _save({"gan": gan.state_dict(), "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
               "rng": torch.get_rng_state(), "epoch": epoch, "history": history}, last)  # fmt: skip
        if on_epoch_end is not None:
            on_epoch_end(epoch, stats)
        progress(epoch, {"train_loss": stats["g_loss"], "val_acc": stats["d_real"], "img_per_s": stats["img_per_s"]})
        if cfg.max_seconds and elapsed >= cfg.max_seconds:
            break
    progress(None, None)
    return GanFitResult(len(history), last, history, elapsed, str(device))
