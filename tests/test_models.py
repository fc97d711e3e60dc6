"""Every family builds for any data shape, and learns (loss falls on a tiny overfit set)."""

from pathlib import Path

import pytest
import torch

from components.config import load_config
from components.models import create_model, family_of, kind_of, list_models, model_entry
from components.models.hybrid import DecisionFusion, choose_alpha
from components.models.transfer import load_state_dict

SHAPES = [(1, (28, 28), 10), (3, (32, 32), 3), (3, (45, 61), 2)]
QUICK = load_config(Path(__file__).resolve().parents[1] / "params.yaml", "quick").models


def _small(name: str) -> dict:
    """The quick profile's hparams of the family that uses model `name` (else its registered defaults)."""
    block = next((f for f in QUICK.root.values() if getattr(f, "model", None) == name), None)
    return dict(block.hparams) if block is not None else dict(model_entry(name).defaults.get("hparams", {}))


def test_registry_lists_every_family():
    assert {"cnn", "rnn", "gan", "cnn_lstm", "feature_fusion", "decision_fusion"} <= set(list_models())
    assert family_of("cnn_lstm") == "hybrid" and family_of("torchvision:resnet18") == "cnn"
    assert kind_of("gan") == "generator" and kind_of("decision_fusion") == "fusion" and kind_of("torchvision:resnet18") == "classifier"
    # every model registered in components/models/ is a family of the default config, of its kind
    defaults = load_config(None).models
    for name in list_models(builtin_only=True):
        assert defaults[name].kind == kind_of(name)
    with pytest.raises(ValueError, match="unknown model 'resnet'"):
        create_model("resnet", num_classes=2, in_channels=1, image_size=28)


def _overfit(model, x, y, steps=40, lr=3e-3):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    model.train()
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("name", list_models(kind="classifier"))
@pytest.mark.parametrize("channels,size,classes", SHAPES)
def test_classifier_shapes_and_learning(name, channels, size, classes):
    torch.manual_seed(0)
    model = create_model(name, num_classes=classes, in_channels=channels, image_size=size, **_small(name))
    x = torch.randn(12, channels, *size)
    y = torch.arange(12) % classes
    assert model(x).shape == (12, classes)
    losses = _overfit(model, x, y)
    assert losses[-1] < 0.5 * losses[0], f"{name} did not learn: {losses[0]:.3f} → {losses[-1]:.3f}"


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_small"])
def test_torchvision_arch_adapts_to_data(arch):
    model = create_model(f"torchvision:{arch}", num_classes=3, in_channels=1, image_size=(28, 28))
    model.eval()
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 3)


def test_vit_gets_a_patch_multiple():
    model = create_model("torchvision:vit_b_16", num_classes=2, in_channels=3, image_size=(45, 61))
    model.eval()
    assert model(torch.randn(1, 3, 45, 61)).shape == (1, 2)


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_transfer_loads_local_weights_and_freezes_backbone(tmp_path, fmt):
    import torchvision

    torch.manual_seed(1)
    source = torchvision.models.resnet18(weights=None)  # stands in for pretrained weights
    path = tmp_path / f"w.{fmt}"
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(source.state_dict(), str(path))
    else:
        torch.save(source.state_dict(), path)
    model = create_model("torchvision:resnet18", num_classes=4, in_channels=3, image_size=(32, 32), weights_path=str(path), freeze_backbone=True)
    net = model.net
    assert torch.equal(net.layer1[0].conv1.weight, source.layer1[0].conv1.weight)
    assert torch.equal(net.conv1.weight, source.conv1.weight)
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == {"fc.weight", "fc.bias"}
    assert net.fc.out_features == 4
    gray = create_model("torchvision:resnet18", num_classes=4, in_channels=1, image_size=(32, 32), weights_path=str(path))
    assert torch.allclose(gray.net.conv1.weight[:, 0], source.conv1.weight.mean(1) * 3)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_state_dict(tmp_path / "missing.pt")


@pytest.mark.parametrize("name", list_models(kind="generator"))
@pytest.mark.parametrize("channels,size,classes", SHAPES)
def test_gan_shapes_and_discriminator_learns(name, channels, size, classes):
    torch.manual_seed(0)
    hp = _small(name)
    gan = create_model(name, num_classes=classes, in_channels=channels, image_size=size, **hp)
    z_dim = gan.z_dim
    labels = torch.arange(6) % classes
    imgs = gan.sample(labels)
    assert imgs.shape == (6, channels, *size) and imgs.min() >= 0 and imgs.max() <= 1
    adv, aux = gan.discriminator(imgs * 2 - 1, labels)
    assert adv.shape == (6,) and aux.shape == (6, classes)
    # the discriminator separates a fixed real set from generator output
    real = torch.rand(12, channels, *size) * 2 - 1
    y = torch.arange(12) % classes
    opt = torch.optim.Adam(gan.discriminator.parameters(), lr=2e-3)
    losses = []
    for _ in range(30):
        fake = gan.generator(torch.randn(12, z_dim), y).detach()
        ar, _ = gan.discriminator(real, y)
        af, _ = gan.discriminator(fake, y)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(torch.cat([ar, af]), torch.cat([torch.ones(12), torch.zeros(12)]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_decision_fusion_alpha_is_chosen_on_validation_only():
    y_val = torch.tensor([0, 1, 2, 0, 1, 2])
    good = torch.nn.functional.one_hot(y_val, 3).float() * 0.8 + 0.2 / 3
    bad = torch.roll(good, 1, dims=1)
    alpha, acc = choose_alpha(good, bad, y_val)
    assert alpha > 0.5 and acc == 1.0
    alpha, _ = choose_alpha(bad, good, y_val)
    assert alpha < 0.5
    # the chosen α is applied and recorded in the module
    f1 = torch.nn.Linear(4, 3)
    f2 = torch.nn.Linear(4, 3)
    fused = DecisionFusion(f1, f2, alpha=0.25)
    x = torch.randn(5, 4)
    expected = 0.25 * torch.softmax(f1(x), 1) + 0.75 * torch.softmax(f2(x), 1)
    assert torch.allclose(torch.softmax(fused(x), 1), expected, atol=1e-6)
    assert fused.state_dict()["alpha"].item() == 0.25


def test_fusion_calibrates_members_and_chooses_alpha_by_log_loss():
    from components.models.hybrid import calibrate, fit_temperature

    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (300,), generator=gen)
    logits = torch.nn.functional.one_hot(y, 3).float() * 2 + torch.randn(300, 3, generator=gen)
    overconfident = torch.softmax(logits * 4, 1)  # right ~85 %, sure of everything
    t = fit_temperature(overconfident, y)
    assert t > 2  # the fitted temperature undoes most of the ×4
    fixed = calibrate(overconfident, t)
    assert torch.equal(fixed.argmax(1), overconfident.argmax(1))  # accuracy unchanged
    nll = lambda p: -torch.log(p.gather(1, y[:, None])).mean()  # noqa: E731
    assert nll(fixed) < nll(overconfident)
    # two members with independent errors: the log loss picks a real mixture, not one member
    other = torch.softmax((torch.nn.functional.one_hot(y, 3).float() * 2 + torch.randn(300, 3, generator=gen)), 1)
    alpha, acc = choose_alpha(calibrate(overconfident, t), other, y, criterion="nll")
    assert 0.1 < alpha < 0.9 and acc > 0.8


def test_fusion_by_validation_accuracy_is_never_below_either_member_there():
    gen = torch.Generator().manual_seed(1)
    for _ in range(20):  # members of unequal strength; the better one varies
        y = torch.randint(0, 10, (200,), generator=gen)
        strong, weak = (torch.softmax(torch.nn.functional.one_hot(y, 10).float() * s + torch.randn(200, 10, generator=gen), 1) for s in (2.5, 1.5))
        p1, p2 = (strong, weak) if torch.rand(1, generator=gen) < 0.5 else (weak, strong)
        alpha, acc = choose_alpha(p1, p2, y, criterion="accuracy")
        members = max((p.argmax(1) == y).float().mean().item() for p in (p1, p2))
        assert acc >= members and acc == ((alpha * p1 + (1 - alpha) * p2).argmax(1) == y).float().mean().item()
