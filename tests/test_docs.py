"""The README is a first page (short, the first command early) and the generated references cover the code."""

from __future__ import annotations

import importlib.util
import re
from types import ModuleType

from tests.conftest import REPO_ROOT


def _hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("visionflow_docs_hooks", REPO_ROOT / "docs" / "hooks.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_is_a_first_page() -> None:
    lines = (REPO_ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move detail into docs/"
    first = next(i for i, line in enumerate(lines, 1) if re.match(r"\s*make run\b", line))
    assert first <= 40, f"the first command (make run) is on line {first}"


def test_every_command_is_in_the_generated_cli_reference() -> None:
    import typer.main

    from flows.cli import app

    hooks = _hooks()
    text = hooks.cli_reference_markdown()
    paths = [" ".join(path) for path, _ in hooks.iter_commands(typer.main.get_command(app))]
    assert {"visionflow run", "visionflow rollout start", "visionflow deploy manifests", "visionflow data pull"} <= set(paths)
    for name in paths:
        assert f"`{name}`" in text, name
    assert "`--max-in-flight`" in text  # options with their help, not only names


def test_every_config_section_is_in_the_generated_configuration_reference() -> None:
    from components.config import Config

    text = _hooks().config_reference_markdown()
    for section in Config.model_fields:
        assert f"`{section}`" in text, section
    assert "`selection.rollout`" in text and "`max_window_hours`" in text and "`models.<classifier>.train`" in text
