from pathlib import Path

import pytest

from components.config import Config, ConfigError, load_config, parse_override

REPO_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def test_repo_params_load_in_every_profile():
    for profile in ("quick", "default", "full"):
        cfg = load_config(REPO_PARAMS, profile)
        assert cfg.profile == profile
        assert cfg.data.source == "bundled:mnist_5k"
    assert load_config(REPO_PARAMS, "quick").validation.min_images_per_class_per_split == 1


def test_override_parses_yaml_values():
    cfg = load_config(REPO_PARAMS, "default", ["data.split.seed=7", "validation.pixel_std_min=0.5"])
    assert cfg.data.split.seed == 7 and cfg.validation.pixel_std_min == 0.5
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])


def test_unknown_key_names_key_and_allowed(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(REPO_PARAMS, "default", ["data.split.trian=0.5"])
    msg = str(err.value)
    assert "data.split.trian" in msg and "train, val, test, seed" in msg
    assert "\n" not in msg


def test_bad_value_and_bad_sum(tmp_path):
    with pytest.raises(ConfigError, match="validation.min_images_per_class_per_split"):
        load_config(REPO_PARAMS, "default", ["validation.min_images_per_class_per_split=zero"])
    with pytest.raises(ConfigError, match="sum to 1"):
        load_config(REPO_PARAMS, "default", ["data.split.train=0.9"])


def test_unknown_profile_lists_allowed():
    with pytest.raises(ConfigError, match="allowed: default, full, quick"):
        load_config(REPO_PARAMS, "fast")


def test_bad_yaml_names_line(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("data:\n  split: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_hash_is_stable_and_sensitive():
    a = load_config(REPO_PARAMS, "default")
    assert a.hash() == load_config(REPO_PARAMS, "default").hash()
    assert a.hash() != load_config(REPO_PARAMS, "default", ["data.split.seed=1"]).hash()
    assert Config().hash() == Config().hash()


def test_gan_epochs_auto_follow_the_data_style():
    from components.config import GanTrainConfig, resolve_gan_recipe

    assert resolve_gan_recipe(GanTrainConfig(), channels=1).epochs == 80  # gray (the digits): with the decaying rate, GAN-train ≥ 95 %
    assert resolve_gan_recipe(GanTrainConfig(), channels=3).epochs == 40  # photos: an epoch costs more
    assert resolve_gan_recipe(GanTrainConfig(epochs=7), channels=1).epochs == 7
    assert load_config(REPO_PARAMS, "quick").models.gan.train.epochs == 1
