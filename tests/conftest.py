"""Shared fixtures: small generated image folders and throw-away project roots.

Every tool's state goes to a per-session temp folder (never the user's home), set before any tool
is imported.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

_SESSION_HOME = Path(tempfile.mkdtemp(prefix="visionflow-tests-"))
from components.workspace import Workspace  # noqa: E402

Workspace.at(_SESSION_HOME, home=_SESSION_HOME / ".visionflow").activate()
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

REPO_ROOT = Path(__file__).resolve().parents[1]

QUICK_PARAMS = """
data:
  split: {train: 0.6, val: 0.2, test: 0.2, seed: 0}
validation:
  min_images_per_class_per_split: 1
  split_tolerance: 0.1
"""


def make_image(path: Path, seed: int, size=(45, 61), mode="RGB", fmt=None) -> None:
    """A random but reproducible image (distinct per seed, so sha256s differ)."""
    rng = np.random.default_rng(seed)
    w, h = size
    shape = (h, w, 3) if mode == "RGB" else (h, w)
    pixels = rng.integers(0, 256, size=shape, dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode=mode).save(path, format=fmt)


def make_folder(
    root: Path,
    classes=("cat", "dog", "owl"),
    per_class: int = 10,
    size=(45, 61),
    mode="RGB",
    splits: dict[str, int] | None = None,
) -> Path:
    """Class sub-folders of PNG/JPEG/BMP files; with `splits`, train/val/test folders (counts per class)."""
    seed = 0
    exts = [".png", ".jpg", ".bmp"]
    if splits is None:
        for c in classes:
            for i in range(per_class):
                seed += 1
                ext = exts[i % 3]
                make_image(root / c / f"img_{i:03d}{ext}", seed, size, mode)
    else:
        for split, n in splits.items():
            for c in classes:
                for i in range(n):
                    seed += 1
                    make_image(root / split / c / f"{split}_{i:03d}.png", seed, size, mode)
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return make_folder(tmp_path / "source")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """An empty project root: a git repo with a small params.yaml (its own .visionflow inside)."""
    root = tmp_path / "project"
    root.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run(["git", "config", "user.email", "t@example.com"], cwd=root, check=True)
    subprocess.run(["git", "config", "user.name", "t"], cwd=root, check=True)
    (root / "params.yaml").write_text(QUICK_PARAMS)
    (root / ".gitignore").write_text("/.visionflow/\n/data/\n")
    return root


@pytest.fixture
def tracking_env():
    """MLflow's configure() exports MLFLOW_TRACKING_URI for workers; undo it after each test."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


@contextmanager
def workspace_store(root: Path):
    """A project's own MLflow store for a module-scoped fixture: (workspace, tracking uri, experiment id);
    MLFLOW_TRACKING_URI (exported by configure for workers) is put back afterwards, as tracking_env does per test."""
    from components.tracking import mlflow_store as store

    before = os.environ.get("MLFLOW_TRACKING_URI")
    ws = Workspace.at(root, home=root / ".visionflow")
    uri, exp = store.configure(ws)
    try:
        yield ws, uri, exp
    finally:
        if before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http_ok(url: str, timeout: float = 120) -> bool:
    """Poll `url` until it answers 200 (a server started by a test), or give up after `timeout`."""
    import time

    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    return False


def start_mlflow_server(folder: Path):
    """A real `mlflow server` (sqlite backend, local artifacts under `folder`) on a free port: (process, port)."""
    import sys

    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{folder / 'server.db'}", "--artifacts-destination", (folder / "server-artifacts").as_uri()],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    if not wait_http_ok(f"http://127.0.0.1:{port}/health", 90):
        proc.terminate()
        pytest.fail("mlflow server did not become healthy in 90 s")
    return proc, port


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`integration`: marked so (by module or test), or slow, or containers; every other test is `unit` (`make test-fast`)."""
    for item in items:
        if any(item.get_closest_marker(m) for m in ("integration", "slow", "containers")):
            if not item.get_closest_marker("integration"):
                item.add_marker(pytest.mark.integration)
        else:
            item.add_marker(pytest.mark.unit)
