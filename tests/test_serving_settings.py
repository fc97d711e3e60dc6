"""serving/settings.py: the VISIONFLOW_* environment → Settings (no server, no torch)."""

import json
import sys

import pytest
from pydantic import ValidationError

import serving.settings as settings_module
from components.config import DataConfig
from serving.settings import Settings


@pytest.fixture
def env(monkeypatch, tmp_path):
    """A clean VISIONFLOW_* environment and no bento_defaults.json; returns a setter."""
    import os

    for k in [k for k in os.environ if k.startswith("VISIONFLOW_")]:
        monkeypatch.delenv(k)
    monkeypatch.setattr(settings_module, "BENTO_DEFAULTS", tmp_path / "bento_defaults.json")

    def put(**values: str) -> None:
        for k, v in values.items():
            monkeypatch.setenv(f"VISIONFLOW_{k.upper()}", v)

    return put


def test_defaults_and_the_shared_pixel_cap(env):
    s = Settings.from_env()
    assert s.model_uri == "models:/visionflow-classifier@champion" and s.generator_uri == "models:/visionflow-gan@generator"
    assert s.max_pixels == DataConfig().max_pixels and s.batching and not s.access_log and s.rollout and s.api_key is None
    assert "/healthz" in s.open_paths and hash(s) == hash(Settings.from_env())  # frozen, hashable


def test_flags_none_and_open_paths(env):
    env(batching="off", access_log="ON", keep_images="1", rollout="false", generator_uri="none", open_paths=" /a, /b ,", max_pixels="5", api_key="")
    s = Settings.from_env()
    assert (s.batching, s.access_log, s.keep_images, s.rollout) == (False, True, True, False)
    assert s.generator_uri is None and s.open_paths == frozenset({"/a", "/b"}) and s.max_pixels == 5 and s.api_key is None
    env(generator_uri="", batching="", open_paths="")
    s = Settings.from_env()
    assert s.generator_uri is None and s.batching is True and s.open_paths == frozenset()  # empty flag: its default
    env(batching="maybe")
    with pytest.raises(ValidationError, match="on/off"):
        Settings.from_env()


def test_bento_defaults_lie_under_the_environment(env):
    settings_module.BENTO_DEFAULTS.write_text(json.dumps({"VISIONFLOW_MODEL_URI": "models:/m/3", "VISIONFLOW_GENERATOR_URI": "none", "VISIONFLOW_WORKERS": 2}))
    s = Settings.from_env()
    assert (s.model_uri, s.generator_uri, s.workers) == ("models:/m/3", None, 2)
    env(model_uri="models:/m/4")
    assert Settings.from_env().model_uri == "models:/m/4"


def test_settings_module_stays_light():
    import subprocess

    code = "import sys, serving.settings; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
