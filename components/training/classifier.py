"""The classifier loop: `train_one_epoch` / `evaluate` as plain functions (torchvision-references
style) and `fit` around them (schedule, early stopping on validation, checkpoints, resume, callback).

Determinism: the batch order and the augmentation of epoch e come from generators seeded with
(seed, e), and the global RNG state (dropout) is saved in every checkpoint, so a resumed run
continues exactly where the interrupted one stopped.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from components.config import EngineConfig, TrainConfig, resolve_recipe
from components.data.datasets import DatasetSpec, ImageTensors
from components.process import check_stop
from components.training.device import select_device, set_threads, use_bf16

EpochCallback = Callable[[int, dict[str, float]], None]


@dataclass
class Batcher:
    """Turns uint8 tensors into normalised float batches on the device (augmenting if asked)."""

    spec: DatasetSpec
    device: torch.device
    channels_last: bool
    cfg: TrainConfig | None = None  # None: no augmentation (evaluation)
    noise_on: bool = True  # fit turns noise training on once validation accuracy allows (TrainConfig.noise_from_val_acc)

    @property
    def noising(self) -> bool:
        """Whether this batcher adds training noise to the batches it makes now."""
        return self.cfg is not None and bool(self.cfg.noise_sigma) and self.noise_on

    def __post_init__(self) -> None:
        c = self.spec.in_channels
        self.mean = torch.tensor(self.spec.mean, device=self.device).view(1, c, 1, 1)
        self.std = torch.tensor(self.spec.std, device=self.device).view(1, c, 1, 1)
        if self.cfg is not None:
            self.cfg = resolve_recipe(self.cfg, c)  # `augment: auto` → photo or affine for this data

    def __call__(self, xb: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        x = xb.to(self.device, non_blocking=True).float().div_(255)
        mode = self.cfg.augment if self.cfg is not None else "none"
        if mode == "photo":
            x = photo_augment(x, self.cfg, gen)
        elif mode != "none":
            x = augment(x, self.cfg, gen)
        if self.noising:
            x = add_noise(x, float(self.cfg.noise_sigma), self.cfg.noise_fraction, gen)
        return self.normalize(x)

    def normalize(self, x01: torch.Tensor) -> torch.Tensor:
        x = (x01 - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def add_noise(x: torch.Tensor, sigma_max: float, fraction: float, gen: torch.Generator | None) -> torch.Tensor:
    """Gaussian noise with σ ~ U(0, sigma_max) on a random `fraction` of the batch, clamped to [0, 1]:
    the model learns the clean and the noisy image alike (noise robustness at no clean cost)."""
    n = x.shape[0]
    sigma = torch.rand(n, generator=gen) * sigma_max * (torch.rand(n, generator=gen) < fraction)
    noise = torch.randn(x.shape, generator=gen)  # drawn on the CPU: the same numbers on any device
    return (x + noise.to(x.device) * sigma.view(n, 1, 1, 1).to(x.device)).clamp_(0, 1)


def adversarial_batch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batcher: Batcher, cfg: TrainConfig, loss_fn: nn.Module,
                      gen: torch.Generator | None, bf16: bool) -> torch.Tensor:  # fmt: skip
    """Replace the first adv_fraction of a (normalised, shuffled) batch by its FGSM/PGD adversarial
    version within ε (L∞ in pixel units, random start), staying in the valid pixel range."""
    k = int(len(x) * cfg.adv_fraction) // 2 * 2  # even: see the channels_last note in train_one_epoch
    if k == 0:
        return x
    eps = cfg.adv_eps / batcher.std  # per channel, in normalised units
    lo, hi = (0 - batcher.mean) / batcher.std, (1 - batcher.mean) / batcher.std
    steps = 1 if cfg.adversarial == "fgsm" else cfg.adv_steps
    step = 1.25 * eps if cfg.adversarial == "fgsm" else 2.5 * eps / steps
    xa, ya = x[:k].detach(), y[:k]
    delta = (torch.rand(xa.shape, generator=gen).to(x.device) * 2 - 1) * eps
    for _ in range(steps):
        delta.requires_grad_(True)
        with _autocast(batcher.device, bf16):
            loss = loss_fn(model(torch.max(torch.min(xa + delta, hi), lo)).float(), ya)
        (grad,) = torch.autograd.grad(loss, delta)
        delta = torch.max(torch.min(delta.detach() + step * grad.sign(), eps), -eps)
    adv = torch.max(torch.min(xa + delta, hi), lo).detach()
    out = torch.cat([adv, x[k:]])
    return out.contiguous(memory_format=torch.channels_last) if batcher.channels_last else out


def photo_augment(x: torch.Tensor, cfg: TrainConfig, gen: torch.Generator | None) -> torch.Tensor:
    """Per-sample random resized crop (area cfg.crop_scale..1, aspect 3/4..4/3), horizontal flip and
    brightness/contrast/saturation jitter, batched (one affine_grid, a few tensor ops): the standard
    photo recipe, as fast as the digit one."""
    n, c, h, w = x.shape

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(n, generator=gen).mul_(hi - lo).add_(lo)

    if cfg.crop_scale < 1:
        area = uniform(cfg.crop_scale, 1.0)
        ratio = torch.exp(uniform(math.log(3 / 4), math.log(4 / 3)))
        sx = torch.sqrt(area * ratio).clamp(max=1.0)  # crop width / image width
        sy = torch.sqrt(area / ratio).clamp(max=1.0)
        tx = uniform(-1.0, 1.0) * (1 - sx)  # the crop stays inside the image
        ty = uniform(-1.0, 1.0) * (1 - sy)
    else:  # crop_scale 1: no crop
        sx = sy = torch.ones(n)
        tx = ty = torch.zeros(n)
    flip = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0) if cfg.flip else torch.ones(n)
    zeros = torch.zeros(n)
    theta = torch.stack([torch.stack([sx * flip, zeros, tx], 1), torch.stack([zeros, sy, ty], 1)], 1).to(x.device)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    j = cfg.color_jitter
    if j > 0:
        view = (n, 1, 1, 1)
        b, k, s = (uniform(1 - j, 1 + j).view(view).to(x.device) for _ in range(3))
        x = x * b
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * k + mean
        if c == 3:
            gray = 0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
            x = gray + (x - gray) * s
        x = x.clamp_(0, 1)
    return x


def augment(x: torch.Tensor, cfg: TrainConfig, gen: torch.Generator | None) -> torch.Tensor:
    """Per-sample random affine (rotation, scale, shift in pixels), batched with affine_grid. `shift`
    alone moves by whole pixels, which samples the pixel centres exactly: a fractional shift is a
    bilinear blur the test images never have (docs/benchmarks.md); an affine map interpolates anyway."""
    n, _, h, w = x.shape

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(n, generator=gen).mul_(hi - lo).add_(lo)

    if cfg.augment == "shift":
        s = int(cfg.shift_px)
        tx = torch.randint(-s, s + 1, (n,), generator=gen).float() * 2 / w
        ty = torch.randint(-s, s + 1, (n,), generator=gen).float() * 2 / h
    else:
        tx = uniform(-cfg.shift_px, cfg.shift_px) * 2 / w
        ty = uniform(-cfg.shift_px, cfg.shift_px) * 2 / h
    if cfg.augment == "affine":
        angle = uniform(-cfg.rotate_deg, cfg.rotate_deg) * math.pi / 180
        scale = uniform(1 - cfg.scale, 1 + cfg.scale)
    else:
        angle, scale = torch.zeros(n), torch.ones(n)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1).to(x.device)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    if cfg.elastic_alpha:
        grid = grid + elastic_field(n, h, w, cfg.elastic_alpha, cfg.elastic_sigma, gen).to(x.device)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def elastic_field(n: int, h: int, w: int, alpha: float, sigma: float, gen: torch.Generator | None) -> torch.Tensor:
    """Elastic distortion (Simard et al. 2003): a uniform random displacement field smoothed by a
    Gaussian of `sigma` px and scaled by `alpha` px, as an offset to a sampling grid (n, h, w, 2)."""
    field = torch.rand(n, 2, h, w, generator=gen).mul_(2).sub_(1)
    radius = max(1, int(2 * sigma))
    k = torch.exp(-((torch.arange(-radius, radius + 1, dtype=torch.float32) / sigma) ** 2) / 2)
    k = (k / k.sum()).view(1, 1, 1, -1).repeat(2, 1, 1, 1)  # separable: rows, then columns
    field = F.conv2d(F.conv2d(field, k, padding=(0, radius), groups=2), k.transpose(2, 3), padding=(radius, 0), groups=2)
    scale = torch.tensor([2 * alpha / w, 2 * alpha / h]).view(1, 2, 1, 1)  # px → grid units (x, y)
    return (field * scale).permute(0, 2, 3, 1)


@dataclass
class SyntheticMix:
    """GAN augmentation: class-conditional samples of a trained generator join each training batch,
    `ratio` of the batch (labels uniform over the classes; the generator's images, as uint8, go
    through the same augmentation as the real ones)."""

    generator: nn.Module  # .sample(labels, generator=) → images in [0, 1] (ConditionalDCGAN), or labels → images
    num_classes: int
    ratio: float

    def count(self, n_real: int) -> int:
        return int(round(n_real * self.ratio / (1 - self.ratio))) // 2 * 2  # even: see the channels_last note

    @torch.no_grad()
    def sample(self, k: int, gen: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(0, self.num_classes, (k,), generator=gen)
        sample = getattr(self.generator, "sample", None)
        images = sample(labels, generator=gen) if sample is not None else self.generator(labels)
        return (images.float().clamp(0, 1) * 255).round().to(torch.uint8), labels


def _autocast(device: torch.device, bf16: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16)


def train_one_epoch(
    model: nn.Module,
    data: ImageTensors,
    batcher: Batcher,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loss_fn: nn.Module,
    *,
    batch_size: int,
    bf16: bool,
    grad_clip: float | None,
    gen: torch.Generator,
    synthetic: SyntheticMix | None = None,
) -> dict[str, float]:
    model.train()
    order = torch.randperm(len(data), generator=gen)
    rank, world = dist_rank_world()
    per_rank, batch_size = rank_share(len(order), batch_size, world)
    order = order[: per_rank * world][rank::world]  # DDP: every rank draws the same order, takes its share
    total_loss, correct, seen = 0.0, 0, 0
    start = time.perf_counter()
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if batcher.channels_last and batcher.device.type == "cpu":
        # torch 2.14.1 on CPU: the backward of a 1×1 stride-2 conv (ResNet shortcuts, torchvision's too)
        # in channels_last crashes the process (SIGSEGV in oneDNN) on an odd batch size; an odd batch
        # leaves out its last image this epoch (the order is reshuffled every epoch)
        batches = [b[: len(b) - len(b) % 2] for b in batches]
    batches = [b for b in batches if len(b) >= 2]  # BatchNorm needs 2
    for idx, xb in zip(batches, data.batches(batches)):  # from memory, or decoded from disk by workers
        check_stop()  # SIGTERM / Ctrl-C: a training thread ends within a batch
        y = data.y[idx]
        if synthetic is not None and (k := synthetic.count(len(idx))):
            xs, ys = synthetic.sample(k, gen)
            xb, y = torch.cat([xb, xs.to(xb.device)]), torch.cat([y, ys.to(y.device)])
        x = batcher(xb, gen)
        y = y.to(batcher.device, non_blocking=True)
        if batcher.cfg is not None and batcher.cfg.adversarial != "none":
            x = adversarial_batch(model, x, y, batcher, batcher.cfg, loss_fn, gen, bf16)
        with _autocast(batcher.device, bf16):
            logits = model(x)
            loss = loss_fn(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        scheduler.step()
        total_loss += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(y)
    seconds = time.perf_counter() - start
    if world > 1:  # the epoch's figures over all ranks
        import torch.distributed as dist

        sums = torch.tensor([total_loss, float(correct), float(seen)], dtype=torch.float64, device=batcher.device)  # NCCL: on the GPU
        dist.all_reduce(sums)
        total_loss, correct, seen = sums[0].item(), int(sums[1].item()), int(sums[2].item())
    return {"train_loss": total_loss / max(seen, 1), "train_acc": correct / max(seen, 1), "img_per_s": seen / seconds,
            "epoch_seconds": seconds, "train_images": seen}  # fmt: skip


def _sync_buffers(model: nn.Module) -> None:
    import torch.distributed as dist

    for buf in model.buffers():
        dist.broadcast(buf, 0)


def _from_rank0(flag: bool, device: torch.device) -> bool:
    import torch.distributed as dist

    t = torch.tensor([int(flag)], device=device)
    dist.broadcast(t, 0)
    return bool(t.item())


def rank_share(n: int, batch_size: int, world: int) -> tuple[int, int]:
    """(samples per rank, batch per rank) of an epoch of n samples over `world` DDP ranks: equal,
    disjoint shares in batches of batch_size // world (the same global batch as one process).
    One process: (n, batch_size)."""
    return (n - n % world) // world, max(1, batch_size // world)


def dist_rank_world() -> tuple[int, int]:
    """(rank, world size) inside a torch.distributed process group (torchrun), else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@torch.no_grad()
def predict_proba(model: nn.Module, data: ImageTensors, batcher: Batcher, *, batch_size: int = 512, bf16: bool = False) -> torch.Tensor:
    model.eval()
    out = []
    for xb in data.batches([torch.arange(i, min(i + batch_size, len(data))) for i in range(0, len(data), batch_size)]):
        with _autocast(batcher.device, bf16):
            logits = model(batcher(xb))
        out.append(torch.softmax(logits.float(), 1).cpu())
    return torch.cat(out) if out else torch.empty(0, 0)


@torch.no_grad()
def evaluate(model: nn.Module, data: ImageTensors, batcher: Batcher, *, bf16: bool = False) -> dict[str, float]:
    probs = predict_proba(model, data, batcher, bf16=bf16)
    nll = F.nll_loss(torch.log(probs.clamp_min(1e-12)), data.y).item()
    return {"loss": nll, "acc": (probs.argmax(1) == data.y).float().mean().item()}


@dataclass
class FitResult:
    best_val_acc: float
    best_epoch: int
    epochs_run: int
    best_checkpoint: Path
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    img_per_s: float = 0.0
    bf16: bool = False
    device: str = "cpu"
    stopped_early: bool = False


def _save(obj: dict, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)  # a crash mid-write never leaves a half checkpoint


def _scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    total = cfg.epochs * steps_per_epoch
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total)
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)


def fit(
    model: nn.Module,
    train: ImageTensors,
    val: ImageTensors,
    spec: DatasetSpec,
    cfg: TrainConfig,
    engine: EngineConfig = EngineConfig(),
    *,
    workdir: Path,
    resume: bool = False,
    on_epoch_end: EpochCallback | None = None,
    label: str = "train",
    synthetic: SyntheticMix | None = None,
) -> FitResult:
    """Train with early stopping on val accuracy; `workdir` gets last.pt (resume) and best.pt."""
    cfg = resolve_recipe(cfg, spec.in_channels)  # `auto` epochs / batch size / augmentation for the data's style
    workdir.mkdir(parents=True, exist_ok=True)
    set_threads(engine.threads)
    device = select_device(engine.device)
    bf16 = use_bf16(cfg.precision, device)
    torch.manual_seed(cfg.seed)
    model.to(device)
    if engine.channels_last:
        model.to(memory_format=torch.channels_last)
    if device.type == "cuda" and not train.streaming:  # small datasets: one pinned, non-blocking copy to the GPU
        train = ImageTensors(train.x.pin_memory().to(device, non_blocking=True), train.y.to(device), train.paths)
    rank, world = dist_rank_world()
    step_model = torch.compile(model) if engine.compile else model
    if world > 1:  # DDP (torchrun): gradients averaged across ranks; rank 0 writes the files
        from torch.nn.parallel import DistributedDataParallel

        step_model = DistributedDataParallel(step_model, device_ids=[device.index] if device.type == "cuda" else None)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    per_rank, rank_batch = rank_share(len(train), cfg.batch_size, world)  # the same split as train_one_epoch
    steps = sum(1 for i in range(0, per_rank, rank_batch) if per_rank - i >= 2)
    scheduler = _scheduler(optimizer, cfg, steps)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    train_batcher = Batcher(spec, device, engine.channels_last, cfg)
    eval_batcher = Batcher(spec, device, engine.channels_last)

    last, best_path = workdir / "last.pt", workdir / "best.pt"
    start_epoch, best_acc, best_loss, best_epoch, bad, history = 0, -1.0, math.inf, -1, 0, []
    if resume and last.exists():
        ckpt = torch.load(last, map_location=device, weights_only=False)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        torch.set_rng_state(ckpt["rng"])
        start_epoch, best_acc, best_loss, best_epoch, bad, history = (
            ckpt["epoch"] + 1, ckpt["best_acc"], ckpt["best_loss"], ckpt["best_epoch"], ckpt["bad"], ckpt["history"],
        )  # fmt: skip

    progress = _progress(engine.progress and rank == 0, label, cfg.epochs, start_epoch)
    t0 = time.perf_counter()
    elapsed_before = sum(h.get("epoch_seconds", 0.0) for h in history)
    stopped_early = False
    for epoch in range(start_epoch, cfg.epochs):
        gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        train_batcher.noise_on = cfg.noise_from_val_acc <= 0 or best_acc >= cfg.noise_from_val_acc  # from the checkpoint's best on resume too
        stats = train_one_epoch(step_model, train, train_batcher, optimizer, scheduler, loss_fn,
                                batch_size=cfg.batch_size, bf16=bf16, grad_clip=cfg.grad_clip, gen=gen, synthetic=synthetic)  # fmt: skip
        if world > 1:
            _sync_buffers(model)  # BatchNorm statistics are per rank: rank 0's, so every rank scores the same
        val_stats = evaluate(model, val, eval_batcher, bf16=bf16)
        metrics = {**stats, "val_loss": val_stats["loss"], "val_acc": val_stats["acc"], "lr": optimizer.param_groups[0]["lr"], "epoch": epoch,
                   "noise_training": float(train_batcher.noising)}  # fmt: skip
        history.append(metrics)
        improved = val_stats["acc"] > best_acc or (val_stats["acc"] == best_acc and val_stats["loss"] < best_loss)
        if improved:
            best_acc, best_loss, best_epoch, bad = val_stats["acc"], val_stats["loss"], epoch, 0
            if rank == 0:
                _save({"model": model.state_dict(), "epoch": epoch, "val_acc": best_acc}, best_path)
        else:
            bad += 1
        if rank == 0:
            _save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                   "rng": torch.get_rng_state(), "epoch": epoch, "best_acc": best_acc, "best_loss": best_loss,
                   "best_epoch": best_epoch, "bad": bad, "history": history}, last)  # fmt: skip
        if on_epoch_end is not None and rank == 0:
            on_epoch_end(epoch, metrics)
        progress(epoch, metrics)
        if bad >= cfg.patience:
            stopped_early = True
            break
        out_of_time = bool(cfg.max_seconds and elapsed_before + time.perf_counter() - t0 >= cfg.max_seconds)
        if world > 1:  # a clock differs per rank: rank 0 decides for all
            out_of_time = _from_rank0(out_of_time, device)
        if out_of_time:
            stopped_early = True
            break
    progress(None, None)
    if world > 1:  # every rank waits for rank 0's best.pt
        import torch.distributed as dist

        dist.barrier()
    model.load_state_dict(torch.load(best_path, map_location=device, weights_only=True)["model"])
    train_seconds = sum(h["epoch_seconds"] for h in history)
    n_imgs = sum(h["img_per_s"] * h["epoch_seconds"] for h in history)
    return FitResult(best_acc, best_epoch, len(history), best_path, history, time.perf_counter() - t0 + elapsed_before,
                     n_imgs / max(train_seconds, 1e-9), bf16, str(device), stopped_early)  # fmt: skip


def _progress(enabled: bool, label: str, epochs: int, start: int, stream=None):
    """Progress over epochs: a rich bar on a terminal; elsewhere (CI, a container, nohup, a scheduled
    flow) one logfmt line per epoch on stderr, so a log shows a long training moving; a no-op when disabled."""
    if not enabled:
        return lambda epoch, metrics: None
    stream = stream or sys.stderr
    if not stream.isatty():
        t0, first = time.perf_counter(), start

        def line(epoch, metrics):
            if epoch is None:
                return
            elapsed = time.perf_counter() - t0
            done = epoch + 1 - first
            eta = elapsed / max(done, 1) * (epochs - epoch - 1)
            print(f"epoch family={label} epoch={epoch + 1}/{epochs} loss={metrics['train_loss']:.4f} val_acc={metrics['val_acc']:.4f} "
                  f"img_per_s={metrics['img_per_s']:.0f} elapsed_s={elapsed:.1f} eta_s={eta:.1f}", file=stream, flush=True)  # fmt: skip

        return line
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(), TextColumn("{task.fields[info]}")
    )
    task = bar.add_task(label, total=epochs, completed=start, info="")
    bar.start()

    def update(epoch, metrics):
        if epoch is None:
            bar.stop()
            return
        bar.update(task, completed=epoch + 1, info=f"loss {metrics['train_loss']:.3f}  val acc {metrics['val_acc']:.4f}  {metrics['img_per_s']:.0f} img/s")

    return update
