"""Robustness as a training target: on a small real problem (1,500 of the bundled digits, a tiny
cnn, 6 epochs) Gaussian-noise training raises accuracy under noise σ = 0.3, and FGSM adversarial
training (random start) raises accuracy under an FGSM attack — each against the same model, seed
and data trained without it."""

from __future__ import annotations

import pytest
import torch

from components.config import EngineConfig, TrainConfig
from components.data.datasets import DatasetSpec, ImageTensors
from components.data.ingest import _bundled_mnist_arrays
from components.evaluation.metrics import evaluate_classifier
from components.models import create_model
from components.training.classifier import Batcher, add_noise, adversarial_batch, fit

SPEC = DatasetSpec([str(i) for i in range(10)], 1, (28, 28), [0.13], [0.3])


@pytest.fixture(scope="module")
def digits():
    images, labels = _bundled_mnist_arrays()
    x, y = torch.from_numpy(images).view(-1, 1, 28, 28), torch.from_numpy(labels.astype("int64"))
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))

    def split(idx):
        return ImageTensors(x[idx], y[idx], [str(i) for i in idx.tolist()])

    return split(perm[:1500]), split(perm[1500:1800]), split(perm[1800:2400])


def _robustness(digits, tmp_path, **recipe) -> dict[str, float]:
    train, val, test = digits
    torch.manual_seed(0)
    model = create_model("cnn", num_classes=10, in_channels=1, image_size=(28, 28), widths=[8, 16])
    cfg = TrainConfig(epochs=6, batch_size=64, augment="shift", precision="fp32", **recipe)
    fit(model, train, val, SPEC, cfg, EngineConfig(progress=False), workdir=tmp_path / str(sorted(recipe.items())))
    ev = evaluate_classifier(model, SPEC, test, latency_runs=5, noise=(0.3,), eps=(0.1,))
    return ev.flat_metrics()


@pytest.mark.slow
def test_noise_and_adversarial_training_raise_robustness(digits, tmp_path):
    plain = _robustness(digits, tmp_path, noise_sigma=0.0)
    noisy = _robustness(digits, tmp_path, noise_sigma=0.4, noise_from_val_acc=0.0)
    adversarial = _robustness(digits, tmp_path, noise_sigma=0.0, adversarial="fgsm", adv_eps=0.1)
    assert noisy["acc_noise_0.3"] >= plain["acc_noise_0.3"] + 0.15, (plain, noisy)
    assert adversarial["acc_fgsm_0.1"] >= plain["acc_fgsm_0.1"] + 0.15, (plain, adversarial)


def test_noise_training_waits_for_the_validation_accuracy_it_is_given(digits, tmp_path):
    """noise_from_val_acc: noise starts the epoch after validation accuracy first reaches it; never when out of reach."""
    train, val, _ = digits

    def noise_per_epoch(threshold: float) -> list[float]:
        torch.manual_seed(0)
        model = create_model("cnn", num_classes=10, in_channels=1, image_size=(28, 28), widths=[8, 16])
        cfg = TrainConfig(epochs=3, batch_size=64, augment="shift", precision="fp32", noise_sigma=0.4, noise_from_val_acc=threshold)
        res = fit(model, train, val, SPEC, cfg, EngineConfig(progress=False), workdir=tmp_path / f"gate-{threshold}")
        return [h["noise_training"] for h in res.history], [h["val_acc"] for h in res.history]

    assert noise_per_epoch(0.0)[0] == [1.0, 1.0, 1.0]
    clean, clean_acc = noise_per_epoch(1.0)
    assert clean == [0.0, 0.0, 0.0]  # never reached: the model trains clean
    noise, acc = noise_per_epoch(clean_acc[0])  # reached by the first (clean, identical) epoch
    assert acc[0] == clean_acc[0] and noise == [0.0, 1.0, 1.0], (noise, acc, clean_acc)


def test_noise_and_adversarial_batches_stay_in_range_and_budget():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(64, 1, 8, 8)
    noisy = add_noise(x.clone(), 0.4, 0.5, gen)
    changed = (noisy - x).flatten(1).abs().amax(1) > 0
    assert 0.3 < changed.float().mean() < 0.7 and noisy.min() >= 0 and noisy.max() <= 1  # about half the batch, clamped
    spec = DatasetSpec(["a", "b"], 1, (8, 8), [0.5], [0.25])
    batcher = Batcher(spec, torch.device("cpu"), False, TrainConfig(adversarial="pgd", adv_eps=0.1, adv_fraction=0.5, noise_sigma=0.0))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2))
    xn = batcher.normalize(x)
    y = torch.randint(0, 2, (64,), generator=gen)
    adv = adversarial_batch(model, xn, y, batcher, batcher.cfg, torch.nn.CrossEntropyLoss(), gen, False)
    pixels = adv * 0.25 + 0.5
    assert torch.equal(adv[32:], xn[32:])  # only the first half is attacked
    assert (pixels[:32] - x[:32]).abs().max() <= 0.1 + 1e-5 and pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6
    assert (pixels[:32] - x[:32]).abs().max() > 0.05


class _LabelPainter(torch.nn.Module):
    """A stand-in generator: the image of class k is flat grey at k/10, so a batch shows its labels."""

    def sample(self, labels: torch.Tensor, generator=None) -> torch.Tensor:
        return (labels.float() / 10).view(-1, 1, 1, 1).expand(-1, 1, 8, 8).clone()


def test_gan_augmented_batches_hold_the_ratio_and_the_generators_labels():
    from components.training.classifier import SyntheticMix, train_one_epoch

    spec = DatasetSpec([str(i) for i in range(10)], 1, (8, 8), [0.0], [1.0])
    real = ImageTensors(torch.full((256, 1, 8, 8), 255, dtype=torch.uint8), torch.zeros(256, dtype=torch.long), [str(i) for i in range(256)])
    seen_x, seen_y = [], []

    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(64, 10)

        def forward(self, x):
            seen_x.append(x.detach().clone())
            return self.lin(x.flatten(1))

    def loss_fn(logits, y):
        seen_y.append(y.clone())
        return torch.nn.functional.cross_entropy(logits, y)

    model = Spy()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    batcher = Batcher(spec, torch.device("cpu"), False, TrainConfig(augment="none", noise_sigma=0.0))
    mix = SyntheticMix(_LabelPainter(), 10, 0.25)
    train_one_epoch(model, real, batcher, opt, sched, loss_fn, batch_size=64, bf16=False, grad_clip=None,
                    gen=torch.Generator().manual_seed(0), synthetic=mix)  # fmt: skip
    assert len(seen_x) == 4
    for x, y in zip(seen_x, seen_y):
        k = len(x) - 64
        assert k == mix.count(64) and abs(k / len(x) - 0.25) < 0.02  # 20 of 84 images per batch
        assert torch.all(x[:64] == 1.0) and torch.all(y[:64] == 0)  # the real images, as they were
        painted = (x[64:].flatten(1).mean(1) * 10).round().long()  # the generated images carry their labels
        assert torch.equal(painted, y[64:]) and len(set(y[64:].tolist())) > 3
