"""The delivery step with the real tools: a champion trained by `visionflow run`, its slim image built
by podman with no network, run as a container, pushed to a real registry (Debian's docker-registry on
127.0.0.1) and pulled back by digest, and started from the generated Kubernetes manifests with
`podman kube play`. Slow (an image build), and needs podman, runc and docker-registry:
`make container-tools` installs them (as root, as CI does)."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import free_port, make_folder, wait_http_ok

pytestmark = [pytest.mark.slow, pytest.mark.containers, pytest.mark.integration]
VF = str(Path(sys.executable).parent / "visionflow")
TOOLS = ("podman", "docker-registry")


def _missing_tools() -> list[str]:
    return [t for t in TOOLS if shutil.which(t) is None and not Path(f"/usr/bin/{t}").exists()]


if _missing_tools():
    pytest.skip(f"needs {', '.join(_missing_tools())}: run `make container-tools` (root)", allow_module_level=True)


def _cli(root: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "VISIONFLOW_HOME")}  # the project's own workspace
    return subprocess.run([VF, *args, "--root", str(root)], cwd=root, env=env, capture_output=True, text=True, timeout=timeout)


def _podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    done = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed: {done.stderr.strip()[-500:]}")
    return done


def _field(out: str, key: str) -> str:
    line = next(line for line in out.splitlines() if line.startswith(key))
    return line.split(":", 1)[1].strip()


def _png(seed: int) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def delivered(tmp_path_factory):
    """`visionflow run --profile quick` on a small photo folder, then `visionflow package --image --push`."""
    from tests.conftest import REPO_ROOT

    root = tmp_path_factory.mktemp("delivery-project")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    shutil.copy(REPO_ROOT / "params.yaml", root / "params.yaml")
    source = make_folder(tmp_path_factory.mktemp("photos"), per_class=20, size=(24, 20))
    done = _cli(root, "run", "--profile", "quick", "--source", str(source), "--set", "models.gan.enabled=false")
    assert done.returncode == 0, done.stderr[-2000:]
    port = free_port()
    from components.delivery.registry import start_registry

    registry = start_registry(tmp_path_factory.mktemp("registry"), port)
    assert wait_http_ok(f"http://127.0.0.1:{port}/v2/", 30), "docker-registry did not start"
    repo = f"127.0.0.1:{port}/visionflow"
    t0 = time.perf_counter()
    done = _cli(root, "package", "--image", "--base-image-from-debian", "--push", repo)
    seconds = time.perf_counter() - t0
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    info = {"root": root, "repo": repo, "port": port, "out": out, "seconds": seconds, "ref": _field(out, "image        ").split()[0],
            "image_id": _field(out, "image id"), "pushed": _field(out, "pushed")}  # fmt: skip
    try:
        yield info
    finally:
        registry.terminate()
        registry.wait(timeout=10)
        _podman("rmi", "-f", info["ref"], check=False)


def _champion(root: Path) -> tuple[str, dict]:
    from mlflow import MlflowClient

    uri = f"sqlite:///{root / '.visionflow' / 'mlflow' / 'mlflow.db'}"
    c = MlflowClient(tracking_uri=uri, registry_uri=uri)
    mv = c.get_model_version_by_alias("visionflow-classifier", "champion")
    return str(mv.version), {"run_id": mv.run_id, **(mv.tags or {})}


def test_the_slim_image_serves_the_champion_as_non_root(delivered, tmp_path):
    ref, (version, tags) = delivered["ref"], _champion(delivered["root"])
    assert tags["image.slim.id"] == delivered["image_id"], "the image id is recorded on the champion's version"
    inspect = json.loads(_podman("image", "inspect", ref).stdout)[0]
    labels = inspect["Config"]["Labels"] if "Config" in inspect else inspect["Labels"]
    assert labels["io.visionflow.model-version"] == version and labels["io.visionflow.run-id"] == tags["run_id"]
    assert labels["io.visionflow.data-version"] == tags["data_version"] and labels["io.visionflow.params-hash"] == tags["params_hash"]
    health = _podman("image", "inspect", "--format", "{{json .Config.Healthcheck}}", ref).stdout
    assert "readyz" in health, health
    assert _podman("run", "--rm", "--network", "none", "--entrypoint", "python3", ref, "-c", "import torch", check=False).returncode != 0, (
        "no torch in the slim image"
    )
    port = free_port()
    name = f"vf-test-{port}"
    volume = f"vf-log-{port}"
    run = [
        "run",
        "-d",
        "--name",
        name,
        "--network",
        "host",
        "--read-only",
        "--tmpfs",
        "/tmp",
        "-v",
        f"{volume}:/var/lib/visionflow",
        "-e",
        f"BENTOML_PORT={port}",
        ref,
    ]
    _podman(*run)
    try:
        base = f"http://127.0.0.1:{port}"
        assert wait_http_ok(f"{base}/readyz", 60), _podman("logs", name, check=False).stderr[-2000:]
        r = httpx.post(f"{base}/classify", files={"image": ("x.png", _png(1), "image/png")}, timeout=30)
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["model"] == {"name": "visionflow-classifier", "version": version, "run_id": tags["run_id"]}
        assert answer["data_version"] == tags["data_version"] and answer["class_name"] in ("cat", "dog", "owl")
        meta = httpx.get(f"{base}/metadata", timeout=10).json()
        assert meta["runtime"] == "onnxruntime" and meta["inference_log"]["persistent"] is True
        r = httpx.post(f"{base}/explain", files={"image": ("x.png", _png(2), "image/png")}, timeout=30)
        assert r.status_code == 501 and "full image" in r.json()["error"]
        assert _podman("exec", name, "id", "-u").stdout.strip() == "10001", "the server runs as uid 10001, not root"
        ps = _podman("top", name, "user", "args").stdout
        assert "root" not in ps.split("\n", 1)[1], ps
        # the inference log is on the volume: a restarted container still takes feedback on an earlier answer
        _podman("restart", "-t", "30", name, timeout=90)
        assert wait_http_ok(f"{base}/readyz", 60)
        fb = httpx.post(f"{base}/feedback", json={"request_id": answer["request_id"], "label": "cat"}, timeout=10)
        assert fb.status_code == 200, fb.text
        # SIGTERM: the server stops by itself, well inside the grace period
        t0 = time.perf_counter()
        _podman("stop", "-t", "30", name, timeout=60)
        stopped_in = time.perf_counter() - t0
        state = json.loads(_podman("inspect", name).stdout)[0]["State"]
        assert stopped_in < 25 and state["ExitCode"] != 137, (stopped_in, state)
        # the monitor reads what the container logged: the volume's file merged into the workspace's log
        mount = Path(_podman("volume", "inspect", "--format", "{{.Mountpoint}}", volume).stdout.strip())
        merged = _cli(delivered["root"], "monitor", "--no-retrain", "--inference-log", str(mount))
        assert merged.returncode == 0, merged.stderr[-1500:]
        assert "inference.db (1 predictions new or with newer feedback)" in merged.stdout, merged.stdout
    finally:
        _podman("rm", "-f", name, check=False)
        _podman("volume", "rm", "-f", volume, check=False)


def test_pushed_digest_pulls_back_the_same_image(delivered):
    pushed = delivered["pushed"]
    assert pushed.startswith(delivered["repo"] + "@sha256:")
    version, tags = _champion(delivered["root"])
    assert tags["image.slim.digest"] == pushed
    manifest = httpx.get(f"http://127.0.0.1:{delivered['port']}/v2/visionflow/manifests/{pushed.split('@')[1]}",
                         headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json"})  # fmt: skip
    assert manifest.status_code == 200
    assert manifest.json()["config"]["digest"] == delivered["image_id"], "the registry holds the image that was built (same config digest)"
    _podman("rmi", "-f", pushed, check=False)
    pulled = _podman("pull", "-q", "--tls-verify=false", pushed).stdout.strip().splitlines()[-1]
    assert f"sha256:{pulled}" == delivered["image_id"] or pulled == delivered["image_id"]


def test_manifests_play_with_podman_ready_classify_and_leave_nothing(delivered, tmp_path):
    root, out, port = delivered["root"], tmp_path / "deploy", free_port()
    bad = _cli(root, "deploy", "manifests", "--image", delivered["repo"] + ":v1-slim", "--out", str(out))
    assert bad.returncode == 2 and "sha256" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    done = _cli(root, "deploy", "manifests", "--out", str(out), "--replicas", "1", "--podman-port", str(port))
    assert done.returncode == 0, done.stderr
    assert delivered["pushed"] in done.stdout, "by default the manifests run the champion's pushed image"
    from components.delivery.manifests import validate_manifests

    assert validate_manifests(out) == []
    assert delivered["pushed"] in (out / "deployment.yaml").read_text()
    _podman("rmi", "-f", delivered["pushed"], check=False)  # the pod pulls it from the registry by digest
    env_key = {**os.environ, "VISIONFLOW_API_KEY": "k" * 32}
    play = subprocess.run([VF, "deploy", "play", "--out", str(out), "--port", str(port)], env=env_key, capture_output=True, text=True, timeout=300)
    try:
        assert play.returncode == 0, play.stderr
        base = f"http://127.0.0.1:{port}"
        assert httpx.post(f"{base}/classify", files={"image": ("x.png", _png(3), "image/png")}, timeout=30).status_code == 401, "the API key is required"
        r = httpx.post(f"{base}/classify", files={"image": ("x.png", _png(3), "image/png")}, headers={"Authorization": "Bearer " + "k" * 32}, timeout=30)
        assert r.status_code == 200, r.text
        version, tags = _champion(root)
        assert r.json()["model"]["version"] == version and r.json()["model"]["run_id"] == tags["run_id"]
    finally:
        down = subprocess.run([VF, "deploy", "down", "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert down.returncode == 0, down.stderr
    assert "visionflow-pod-0" not in _podman("pod", "ps", "--format", "{{.Name}}").stdout
    assert _podman("ps", "-a", "--filter", "pod=visionflow-pod-0", "--format", "{{.Names}}").stdout.strip() == ""
    _podman("volume", "rm", "-f", "visionflow-inference-log", check=False)
