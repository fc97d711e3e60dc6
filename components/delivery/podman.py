"""Run the generated manifests on this machine with `podman kube play`: a real engine for Kubernetes
YAML (not a cluster: no Service routing, HPA or PDB), to see the pod start, become ready and answer
before the same files go to a cluster. It plays `podman.yaml`, the podman-compatible copy that
`visionflow deploy manifests` writes beside the real files (manifests.podman_compatible says what
differs and why).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from components.delivery.manifests import API_KEY_SECRET, GRACE_PERIOD_S, podman_secret_json
from components.errors import VisionflowError

PODMAN_FILE = "podman.yaml"


class PlayError(VisionflowError, RuntimeError):
    pass


def _podman(*args: str, input_text: str | None = None, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    try:
        done = subprocess.run(["podman", *args], input=input_text, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise PlayError("podman is not installed: sudo apt-get install podman runc catatonit (or apply the manifests to a cluster with kubectl)") from None
    if check and done.returncode != 0:
        last = next((line for line in reversed(done.stderr.strip().splitlines()) if line.strip()), f"exit code {done.returncode}")
        raise PlayError(f"podman {args[0]} {args[1] if len(args) > 1 else ''} failed: {last.strip()[:300]}")
    return done


def _file(folder: Path) -> Path:
    path = folder / PODMAN_FILE
    if not path.is_file():
        raise PlayError(f"{path} is missing: write the manifests first (visionflow deploy manifests --out {folder})")
    return path


def ensure_api_key_secret(api_key: str) -> None:
    """The Secret the Deployment references, in podman's form (replaced when it exists)."""
    _podman("secret", "rm", API_KEY_SECRET, check=False)
    _podman("secret", "create", API_KEY_SECRET, "-", input_text=podman_secret_json(api_key))


def yaml_docs(path: Path) -> list[dict]:
    import yaml

    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def pod_names(folder: Path) -> list[str]:
    names = []
    for doc in yaml_docs(_file(folder)):
        if doc.get("kind") == "Deployment":
            names.append(f"{doc['metadata']['name']}-pod-0")
    return names


def play(folder: Path, api_key: str, *, ready_url: str | None = None, timeout: float = 120) -> tuple[list[str], float]:
    """`podman kube play` the folder's podman.yaml; with `ready_url`, wait until it answers 200.
    Returns (pod names, seconds from play to ready)."""
    import httpx

    from components.packaging.image import is_loopback, registry_host

    path = _file(folder)
    ensure_api_key_secret(api_key)
    images = [c["image"] for d in yaml_docs(path) if d.get("kind") == "Deployment" for c in d["spec"]["template"]["spec"]["containers"]]
    tls = "false" if images and all(is_loopback(registry_host(i)) for i in images) else "true"  # plain HTTP only to this machine's own registry
    pods = pod_names(folder)
    running = [p for p in pods if _podman("pod", "exists", p, check=False).returncode == 0]
    if running:
        raise PlayError(f"pod {running[0]} already exists: visionflow deploy down --out {folder} first")
    t0 = time.perf_counter()
    try:
        _podman("kube", "play", f"--tls-verify={tls}", str(path))
    except PlayError:
        _podman("kube", "down", str(path), check=False)  # a half-made pod would block the next play
        raise
    if ready_url:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(ready_url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                logs = "".join(_podman("logs", f"{p}-{c}", check=False).stderr[-300:] for p in pods for c in ("visionflow",))
                raise PlayError(f"the pod did not answer {ready_url} within {timeout:.0f} s; podman pod logs {pods[0] if pods else ''}: {logs.strip()[-200:]}")
            time.sleep(0.5)
    return pods, time.perf_counter() - t0


def down(folder: Path) -> None:
    """Stop the pods gracefully (SIGTERM, then the grace period: `kube down` alone stops at once),
    then `podman kube down`. The inference-log volume stays, as a claim would."""
    for pod in pod_names(folder):
        _podman("pod", "stop", "-t", str(GRACE_PERIOD_S), pod, check=False, timeout=GRACE_PERIOD_S + 30)
    _podman("kube", "down", str(_file(folder)))
