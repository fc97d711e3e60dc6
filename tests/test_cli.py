"""The `visionflow` command as a user runs it (subprocesses, real tools)."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT, make_folder

CLI = str(Path(sys.executable).parent / "visionflow")


def _run(args: list[str], cwd: Path, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_HOME", "BENTOML_HOME"))}
    return subprocess.run([CLI, *args], cwd=cwd, capture_output=True, text=True, env=env, **kw)


@pytest.mark.integration  # a subprocess
def test_help_is_fast_and_lists_commands(tmp_path):
    _run(["--help"], tmp_path)  # warm the page cache
    start = time.perf_counter()
    out = _run(["--help"], tmp_path)
    elapsed = time.perf_counter() - start
    assert out.returncode == 0 and "ingest" in out.stdout and "validate" in out.stdout
    assert elapsed < 3.0, f"--help took {elapsed:.2f}s: a heavy import leaked into the CLI's top level"


@pytest.mark.integration  # a subprocess
def test_bad_config_fails_before_work_in_one_line(tmp_path):
    shutil.copy(REPO_ROOT / "params.yaml", tmp_path / "params.yaml")
    out = _run(["ingest", "--set", "validation.min_images_per_clas=3"], tmp_path)
    assert out.returncode == 2
    err = out.stderr.strip()
    assert len(err.splitlines()) == 1 and "validation.min_images_per_clas" in err and "min_images_per_class_per_split" in err
    assert not (tmp_path / ".visionflow" / "staging").exists() and not (tmp_path / "data").exists()
    out = _run(["run", "--profile", "fastest"], tmp_path)
    assert out.returncode == 2 and "allowed: default, full, quick" in out.stderr


@pytest.mark.integration  # a subprocess
def test_global_profile_and_set_reach_every_config_reading_command(tmp_path):
    """`visionflow --profile/--set` (one callback) reach the commands with no options of their own; theirs win when given."""
    shutil.copy(REPO_ROOT / "params.yaml", tmp_path / "params.yaml")
    for args in (["promote", "x", "1"], ["package"], ["deploy", "manifests"], ["rollout", "abort"]):
        out = _run(["--set", "tracking.nope=1", *args], tmp_path)
        assert out.returncode == 2, (args, out.stderr)
        err = out.stderr.strip()
        assert len(err.splitlines()) == 1 and "tracking.nope" in err, (args, err)
    assert not (tmp_path / ".visionflow").exists()  # failed before any work
    out = _run(["--profile", "fastest", "serve"], tmp_path)
    assert out.returncode == 2 and "allowed: default, full, quick" in out.stderr
    out = _run(["--profile", "fastest", "validate", "--profile", "quick"], tmp_path)  # the command's own --profile wins
    assert out.returncode == 1 and "visionflow ingest" in out.stderr


@pytest.mark.integration  # a subprocess
def test_validate_without_data_says_what_to_do(tmp_path):
    out = _run(["validate"], tmp_path)
    assert out.returncode == 1 and "visionflow ingest" in out.stderr


@pytest.mark.integration  # a subprocess
def test_ingest_of_a_bad_folder_exits_nonzero_naming_the_file(project, tmp_path):
    src = make_folder(tmp_path / "src")
    (src / "owl" / "zero.png").write_bytes(b"")
    out = _run(["ingest", "--source", str(src)], project)
    assert out.returncode == 1
    assert "every file decodes" in out.stderr and "owl/zero.png" in out.stderr and "Traceback" not in out.stderr
    assert not (project / "data").exists() and not (project / "data.dvc").exists()


@pytest.mark.slow
def test_bundled_ingest_reproduces_the_committed_data_version(tmp_path):
    """A fresh clone's `visionflow ingest` gives the md5 committed in data.dvc, byte for byte."""
    root = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(REPO_ROOT), str(root)], check=True)
    committed = yaml.safe_load((REPO_ROOT / "data.dvc").read_text())["outs"][0]["md5"].removesuffix(".dir")
    out = _run(["ingest"], root)
    assert out.returncode == 0, out.stderr[-2000:]
    assert committed in out.stdout
    assert "Data Docs" in out.stdout and (root / ".visionflow" / "reports" / "data_docs" / "index.html").exists()
    diff = subprocess.run(["git", "status", "--porcelain", "data.dvc"], cwd=root, capture_output=True, text=True)
    assert diff.stdout == "", "data.dvc changed: ingest is not deterministic"
    status = _run(["data", "status"], root)
    assert status.returncode == 0 and committed in status.stdout and "matches" in status.stdout
    valid = _run(["validate"], root)
    assert valid.returncode == 0 and "validation passed" in valid.stdout


@pytest.mark.integration  # a subprocess
def test_delivery_commands_say_what_to_do_in_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("VISIONFLOW_API_KEY", raising=False)
    shutil.copy(REPO_ROOT / "params.yaml", tmp_path / "params.yaml")
    cases = [
        (["package", "--push", "127.0.0.1:5000/visionflow"], 2, "add --image"),
        (["package", "--image", "--flavour", "tiny"], 2, "use slim or full"),
        (["deploy", "manifests", "--out", str(tmp_path / "deploy")], 1, "has no champion yet"),
        (["deploy", "play", "--out", str(tmp_path / "deploy")], 2, "VISIONFLOW_API_KEY"),
        (["monitor", "--inference-log", str(tmp_path / "nowhere.db")], 2, "no inference log at"),
        (["deploy", "down", "--out", str(tmp_path / "deploy")], 1, "write the manifests first"),  # a PlayError, through the one handler
    ]
    for args, code, words in cases:
        out = _run(args, tmp_path)
        err = out.stderr.strip()
        assert out.returncode == code and len(err.splitlines()) == 1 and words in err and "Traceback" not in err, (args, out.returncode, err)
    assert not (tmp_path / "deploy").exists()


def test_every_error_class_shares_one_base():
    """Each exception class of components/, serving/ and flows/ derives from VisionflowError (the CLI's one handler)."""
    import ast
    import importlib

    from components.errors import VisionflowError

    found = []
    for path in sorted(p for d in ("components", "serving", "flows") for p in (REPO_ROOT / d).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.name.endswith("Error") and node.name != "VisionflowError":
                module = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts)
                found.append(getattr(importlib.import_module(module), node.name))
    assert len(found) >= 11
    assert [c.__name__ for c in found if not issubclass(c, VisionflowError)] == []
    from components.config import ConfigError

    assert ConfigError.exit_code == 2 and issubclass(ConfigError, ValueError)  # old `except ValueError` callers still catch it
