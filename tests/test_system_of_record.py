"""Faults never move the registry, runs are reproducible, processes stop cleanly: real MLflow
servers behind a fault-injecting proxy, real `visionflow` processes killed and run concurrently."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from components.tracking import mlflow_store as store
from components.workspace import Workspace
from tests.conftest import free_port, make_folder, start_mlflow_server
from tests.faultproxy import FaultProxy

VISIONFLOW = str(Path(sys.executable).parent / "visionflow")

# one small classifier, nothing else: the registry policy is what is under test
SMALL = """
data: {split: {train: 0.6, val: 0.2, test: 0.2, seed: 0}}
validation: {min_images_per_class_per_split: 1, split_tolerance: 0.1}
engine: {progress: false}
models:
  cnn: {model: cnn, hparams: {widths: [8, 16]}, train: {epochs: 2, batch_size: 32}}
  rnn: {model: rnn, enabled: false}
  cnn_lstm: {model: cnn_lstm, enabled: false}
  gan: {enabled: false}
  decision_fusion: {enabled: false}
evaluation: {latency_runs: 5, saliency_per_class: 1}
"""


def _cli(root: Path, *args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([VISIONFLOW, *args], cwd=root, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout)


def _popen(root: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    # its own process group: a kill -9 below takes the group, as systemd or docker kill a service
    # (a kill -9 of the CLI alone would leave its children, Prefect's ephemeral API server, running)
    return subprocess.Popen([VISIONFLOW, *args], cwd=root, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # fmt: skip


def _small_project(project: Path) -> Path:
    (project / "params.yaml").write_text(SMALL)
    return project


def _versions(name: str) -> list[str]:
    try:
        return sorted((mv.version for mv in store.client().search_model_versions(f"name='{name}'")), key=int)
    except Exception:  # noqa: BLE001 - no such model yet
        return []


@pytest.mark.slow
def test_registry_faults_move_no_alias_and_make_no_duplicates(project, tmp_path, tracking_env):
    """A real `mlflow server` behind a proxy: a packaging failure, then 503s on alias look-ups
    during selection. Each run fails with a clear message; aliases stay where they were."""
    root = _small_project(project)
    src = make_folder(tmp_path / "src", per_class=12, size=(24, 20))
    server, port = start_mlflow_server(tmp_path)
    proxy = FaultProxy(port)
    env = {"MLFLOW_TRACKING_URI": proxy.url}
    try:
        store.use_tracking_uri(proxy.url)
        # 1. packaging fails (the model files cannot be downloaded): registered, never promoted
        proxy.faults = [("GET", "/mlflow-artifacts/artifacts", "503")]
        r = _cli(root, "run", "--source", str(src), env=env)
        assert r.returncode == 1, r.stdout + r.stderr
        assert proxy.hits, "the fault was never hit"
        assert store.alias_version(store.CLASSIFIER_MODEL, store.CHAMPION) is None
        assert _versions(store.CLASSIFIER_MODEL) == ["1"] and _versions("visionflow-cnn") == ["1"]  # retries found their versions

        # 2. healthy: the new model becomes champion, its Bento is built first
        proxy.faults = []
        r = _cli(root, "run", env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "training on data version" in r.stdout + r.stderr  # the checked-out version, no re-ingest
        champion = store.alias_version(store.CLASSIFIER_MODEL, store.CHAMPION)
        assert champion == "2" and "bento        : visionflow:" in r.stdout

        # 3. registry outage during selection: fails closed, nothing moves, no duplicate versions
        proxy.hits.clear()
        proxy.faults = [("GET", "registered-models/alias", "503")]
        r = _cli(root, "run", "--force", env=env)
        assert r.returncode == 1
        last = r.stderr.strip().splitlines()[-1]  # the CLI's one line, after Prefect's own task log
        assert last.startswith("error: RegistryError: registry at") and "look up visionflow-classifier@champion" in last, r.stderr[-3000:]
        assert proxy.hits
        proxy.faults = []
        assert store.alias_version(store.CLASSIFIER_MODEL, store.CHAMPION) == champion
        assert store.alias_version(store.CLASSIFIER_MODEL, store.CHALLENGER) is None
        assert _versions(store.CLASSIFIER_MODEL) == ["1", "2", "3"] and _versions("visionflow-cnn") == ["1", "2", "3"]
    finally:
        proxy.close()
        server.terminate()
        server.wait(timeout=30)


def test_alias_lookup_tells_not_found_from_an_outage(tmp_path, tracking_env, monkeypatch):
    ws = Workspace.at(tmp_path, home=tmp_path / ".visionflow")
    store.configure(ws)
    assert store.alias_version("no-such-model", store.CHAMPION) is None  # an answer: there is none
    store.client().create_registered_model("m")
    assert store.alias_version("m", store.CHAMPION) is None
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    store.use_tracking_uri(f"http://127.0.0.1:{free_port()}")  # nothing listens there
    with pytest.raises(store.RegistryError, match="look up m@champion"):
        store.alias_version("m", store.CHAMPION)


def _lock_holder(root: Path) -> dict:
    path = root / ".visionflow" / "lock"
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


@pytest.mark.slow
def test_two_ingests_at_once_keep_data_and_version_consistent(project, tmp_path):
    a = make_folder(tmp_path / "a", classes=("cat", "dog", "owl"), per_class=40)
    b = make_folder(tmp_path / "b", classes=("ant", "bee"), per_class=10)
    first = _popen(project, "ingest", "--source", str(a))
    deadline = time.time() + 60
    while _lock_holder(project).get("pid") != first.pid and time.time() < deadline:
        time.sleep(0.1)
    assert _lock_holder(project).get("pid") == first.pid, "the first ingest never took the lock"
    loser = _cli(project, "ingest", "--source", str(b))
    assert loser.returncode == 1
    assert "in use by `visionflow ingest`" in loser.stderr and f"pid {first.pid}" in loser.stderr and "--wait" in loser.stderr
    assert first.wait(timeout=300) == 0, first.stdout.read()
    st = _cli(project, "data", "status")
    assert st.returncode == 0 and "matches" in st.stdout
    assert json.loads((project / "data" / "dataset.json").read_text())["classes"] == ["cat", "dog", "owl"]

    # with --wait the second one queues behind the first, then versions its own data
    first = _popen(project, "ingest", "--source", str(a), "--set", "data.split.seed=1")
    while _lock_holder(project).get("pid") != first.pid and first.poll() is None:
        time.sleep(0.1)
    second = _cli(project, "ingest", "--source", str(b), "--wait")
    assert first.wait(timeout=300) == 0
    assert second.returncode == 0, second.stderr
    assert "waiting for the workspace lock" in second.stderr
    st = _cli(project, "data", "status")
    assert st.returncode == 0 and "matches" in st.stdout
    assert json.loads((project / "data" / "dataset.json").read_text())["classes"] == ["ant", "bee"]
    assert not list((project / ".visionflow" / "staging").glob("incoming-*")), "a staging folder was left behind"


def _checkpoint(root: Path) -> Path | None:
    found = list((root / ".visionflow" / "models").glob("*/cnn/checkpoints/last.pt"))
    return found[0] if found else None


def _wait_for_epoch(root: Path, proc: subprocess.Popen, epoch: int, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        ck = _checkpoint(root)
        if ck is not None:
            try:
                if torch.load(ck, map_location="cpu", weights_only=False)["epoch"] >= epoch:
                    return
            except Exception:  # noqa: BLE001 - being written
                pass
        time.sleep(0.2)
    pytest.fail(f"training never reached epoch {epoch}: {proc.stdout.read() if proc.poll() is not None else 'timeout'}")


@pytest.mark.slow
def test_sigterm_kill9_resume_and_reproduce(project, tracking_env):
    """SIGTERM stops a run like Ctrl-C; after kill -9 the next run resumes the interrupted family from
    its checkpoint; `visionflow reproduce` re-trains from scratch and gets the same metrics and weights."""
    root = _small_project(project)
    sets = ["--set", "models.cnn.train.epochs=6", "--set", "models.cnn.hparams.widths=[16, 32]", "--set", "packaging.enabled=false"]
    # bundled digits (3,500 training images): epochs long enough to interrupt
    run = _popen(root, "run", *sets)
    _wait_for_epoch(root, run, 0)
    t0 = time.time()
    run.send_signal(signal.SIGTERM)
    out = run.communicate(timeout=60)[0]
    assert run.returncode == 130 and time.time() - t0 < 30, out[-3000:]
    assert "stopped" in out and "KILLED" in out
    assert _lock_holder(root) == {}  # released
    ws = Workspace.at(root)
    store.configure(ws)
    killed = store.client().search_runs(["1"], "attributes.status = 'KILLED'")
    assert killed, "the stopped run was not marked KILLED"
    assert store.alias_version(store.CLASSIFIER_MODEL, store.CHAMPION) is None

    run = _popen(root, "run", *sets)
    _wait_for_epoch(root, run, 2)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait(timeout=30)
    reached = torch.load(_checkpoint(root), map_location="cpu", weights_only=False)["epoch"]

    resumed = _cli(root, "run", *sets)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = resumed.stdout + resumed.stderr
    assert f"cnn: resuming from the checkpoint of an interrupted run (epoch {reached + 1} done" in log
    assert "took over the workspace lock" in log
    parent = next(line.split("parent run ")[1].split(";")[0] for line in resumed.stdout.splitlines() if "parent run" in line)
    model_file = next((root / ".visionflow" / "models").glob("*/cnn/model.pt"))
    resumed_weights = torch.load(model_file, map_location="cpu", weights_only=True)["state_dict"]
    stale = [r for r in store.client().search_runs(["1"], "attributes.status = 'KILLED'") if r.data.tags.get("killed_reason")]
    assert stale, "the kill -9'd run was not marked KILLED by the next run"

    rep = _cli(root, "reproduce", parent, "--check")
    assert rep.returncode == 0, rep.stdout[-3000:] + rep.stderr[-3000:]
    assert "code         : matches" in rep.stdout and "every metric equal" in rep.stdout
    fresh = torch.load(model_file, map_location="cpu", weights_only=True)["state_dict"]
    assert all(torch.equal(resumed_weights[k], fresh[k]) for k in fresh), "the resumed model differs from an uninterrupted one"
    assert store.alias_version(store.CLASSIFIER_MODEL, store.CHAMPION) == "1"  # reproduce registers nothing


def test_code_version_is_part_of_the_cache_key(monkeypatch):
    from components.config import Config
    from flows import training_pipeline as tp

    cfg = Config()
    before = tp.family_cache_key("cnn", cfg.models.cnn, cfg, "a" * 32)
    monkeypatch.setattr(tp, "code_version", lambda *parts: "changed-code")
    assert tp.family_cache_key("cnn", cfg.models.cnn, cfg, "a" * 32) != before


def _port_free(port: int) -> bool:
    """A new server could listen there (SO_REUSEADDR, as servers set it: our own probes leave TIME_WAIT)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
@pytest.mark.parametrize("command", ["ui", "serve"])
def test_sigterm_to_a_server_command_leaves_nothing_behind(project, command):
    import psutil

    port = free_port()
    proc = subprocess.Popen([VISIONFLOW, command, "--port", str(port)], cwd=project, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not _port_open(port) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.3)
    assert _port_open(port), f"visionflow {command} never listened on {port}"
    family = [proc.pid] + [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    assert len(family) > 1
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=15)
    deadline = time.time() + 10
    while time.time() < deadline and (any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in family) or not _port_free(port)):
        time.sleep(0.2)
    alive = [p for p in family if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"left running after SIGTERM: {alive}"
    assert _port_free(port)


@pytest.mark.slow
def test_a_shared_remote_is_the_clones_default(project, tmp_path):
    from flows.data_flow import data_flow

    remote = tmp_path / "shared-remote"
    (project / "params.yaml").write_text((project / "params.yaml").read_text() + f"  dvc_remote: {remote}\n".replace("  dvc", "data:\n  dvc") if False else
                                         (project / "params.yaml").read_text().replace("data:\n", f"data:\n  dvc_remote: {remote}\n"))  # fmt: skip
    data_flow(root=str(project), source=str(make_folder(tmp_path / "src")))
    config = (project / ".dvc" / "config").read_text()
    assert str(remote) in config and "remote = visionflow" in config
    assert str(remote) not in (project / ".dvc" / "config.local").read_text()
    subprocess.run(["git", "add", "-A"], cwd=project, check=True)
    subprocess.run(["git", "commit", "-qm", "data"], cwd=project, check=True)
    clone = tmp_path / "teammate"
    subprocess.run(["git", "clone", "-q", str(project), str(clone)], check=True)
    r = subprocess.run([str(Path(sys.executable).parent / "dvc"), "pull"], cwd=clone, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (clone / "data" / "manifest.csv").read_bytes() == (project / "data" / "manifest.csv").read_bytes()


def test_ddp_ranks_use_their_own_gpu(monkeypatch):
    from components.training import device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert device.select_device("auto") == torch.device("cuda", 1)
    assert device.select_device("cuda") == torch.device("cuda", 1)
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert device.select_device("auto") == torch.device("cuda", 0)
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(RuntimeError, match="LOCAL_RANK=2"):
        device.select_device("auto")
    monkeypatch.delenv("LOCAL_RANK")
    assert device.select_device("auto") == torch.device("cuda", 0)


@pytest.mark.integration  # a subprocess
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
def test_ddp_on_two_gpus(project, tmp_path):
    from flows.data_flow import data_flow

    root = _small_project(project)
    data_flow(root=str(root), source=str(make_folder(tmp_path / "src", per_class=20)))
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "components.training.ddp",
                        "--family", "cnn", "--root", str(root)], capture_output=True, text=True, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((root / ".visionflow" / "ddp" / "cnn" / "ddp.json").read_text())
    assert summary["world_size"] == 2 and summary["backend"] == "nccl" and summary["replicas_in_sync"]
