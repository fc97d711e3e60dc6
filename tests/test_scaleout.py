"""Scale-out: the family trainings on a Dask LocalCluster of 2 worker processes (prefect-dask), the
same results as the sequential run, and concurrent families logging to a real MLflow server backed
by PostgreSQL (Debian's `postgresql`, started on 127.0.0.1 here)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from components.config import load_config
from components.tracking import mlflow_store as store
from flows.runners import shared_prefect_api, task_runner_for
from flows.training_pipeline import training_pipeline
from tests.conftest import REPO_ROOT, free_port, make_folder, wait_http_ok

pytestmark = pytest.mark.integration  # real servers / subprocess CLIs

# two classifier families, two epochs each, one torch thread in every process (Dask workers run one)
FAMILIES = [
    "models.cnn_lstm.enabled=false", "models.gan.enabled=false", "models.decision_fusion.enabled=false",
    "packaging.enabled=false", "engine.threads=1",
    "models.cnn.train.epochs=2", "models.rnn.train.epochs=2",
]  # fmt: skip


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """engine.threads=1 pins this process's torch threads too (the sequential run): put them back."""
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _run(project: Path, source: Path, extra: list[str], force: bool = False):
    shutil.copy(REPO_ROOT / "params.yaml", project / "params.yaml")
    overrides = FAMILIES + extra
    cfg = load_config(project / "params.yaml", "quick", overrides)
    pipeline = training_pipeline.with_options(task_runner=task_runner_for(cfg.orchestration))
    with shared_prefect_api(cfg.orchestration):
        return pipeline(root=str(project), profile="quick", overrides=overrides, source=str(source), force=force)


def _family_runs(res) -> dict:
    c = store.client()
    exp = c.get_run(res.parent_run_id).info.experiment_id
    runs = c.search_runs([exp], f"tags.mlflow.parentRunId = '{res.parent_run_id}'")
    return {r.info.run_name: r for r in runs if r.info.run_name in ("cnn", "rnn")}


def _losses(run) -> list[float]:
    return [m.value for m in sorted(store.client().get_metric_history(run.info.run_id, "train_loss"), key=lambda m: m.step)]


def _overlap(a, b) -> bool:
    return a.info.start_time < b.info.end_time and b.info.start_time < a.info.end_time


@pytest.mark.slow
def test_dask_local_cluster_trains_concurrently_with_sequential_results(project, tmp_path, tracking_env):
    src = make_folder(tmp_path / "src", classes=("cat", "dog", "owl"), per_class=20, size=(20, 24))
    seq = _run(project, src, [])
    seq_runs = _family_runs(seq)
    dsk = _run(project, src, ["orchestration.task_runner=dask", "orchestration.dask_workers=2"], force=True)
    dsk_runs = _family_runs(dsk)
    assert set(seq_runs) == set(dsk_runs) == {"cnn", "rnn"} and dsk.cached == []

    # two worker processes, neither of them this one, training at the same time
    where = {k: r.data.tags["trained_on"] for k, r in dsk_runs.items()}
    pids = {w.rsplit(":", 1)[1] for w in where.values()}
    assert len(pids) == 2 and str(os.getpid()) not in pids, where
    assert all(r.data.tags["trained_on"].endswith(f":{os.getpid()}") for r in seq_runs.values())
    assert _overlap(dsk_runs["cnn"], dsk_runs["rnn"])

    # the same seeds give the same models: identical per-epoch losses and metrics, bit for bit
    for k in ("cnn", "rnn"):
        assert _losses(dsk_runs[k]) == _losses(seq_runs[k]) and len(_losses(seq_runs[k])) == 2
        for m in ("val_acc", "test_accuracy"):
            assert dsk_runs[k].data.metrics[m] == seq_runs[k].data.metrics[m], (k, m)
    assert dsk.champion == seq.champion == "1"


def test_dask_workers_keep_glibc_malloc_and_skip_the_stack_profiler():
    """The runner's LocalCluster workers: no MALLOC_TRIM_THRESHOLD_ (distributed's 65536 made torch train
    at 0.6 of its speed there) and no 10 ms stack profiler; OMP_NUM_THREADS=1 stays (one core each)."""
    import dask
    from distributed import Client, LocalCluster

    from components.config import OrchestrationConfig

    task_runner_for(OrchestrationConfig(task_runner="dask"))  # sets them in this process's Dask config, which the cluster reads
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, Client(cluster) as client:
        env = client.run(lambda: {k: os.environ.get(k) for k in ("MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS")})
        profiling = client.run(lambda: dask.config.get("distributed.worker.profile.enabled"))
    assert list(env.values()) == [{"MALLOC_TRIM_THRESHOLD_": None, "OMP_NUM_THREADS": "1"}], env
    assert list(profiling.values()) == [False], profiling


# --- PostgreSQL-backed MLflow server ---------------------------------------------------------------


def _pg_bin() -> Path | None:
    found = shutil.which("initdb") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)), None)
    return Path(found).resolve().parent if found else None


def _install_postgres() -> str | None:
    """Debian's postgresql, when it is missing and this test may install packages (root + apt)."""
    if _pg_bin():
        return None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "PostgreSQL is not installed and this user cannot install it (needs root and apt-get)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "--no-install-recommends", "postgresql"]):
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            return f"`{' '.join(cmd)}` failed: {(r.stderr or r.stdout).strip().splitlines()[-1:]}"
    return None if _pg_bin() else "apt-get installed postgresql but no initdb was found"


@pytest.fixture(scope="module")
def postgres_url():
    reason = _install_postgres()
    if reason:
        pytest.skip(f"no PostgreSQL server: {reason}")
    bindir = _pg_bin()
    # PostgreSQL refuses to run as root: run it as the `postgres` user the Debian package creates
    as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    datadir = Path(tempfile.mkdtemp(prefix="visionflow-pg-"))
    if as_pg:
        shutil.chown(datadir, "postgres", "postgres")
    port = free_port()
    subprocess.run([*as_pg, str(bindir / "initdb"), "-D", str(datadir / "db"), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
                   check=True, capture_output=True)  # fmt: skip
    opts = f"-p {port} -k {datadir} -c listen_addresses=127.0.0.1"
    subprocess.run([*as_pg, str(bindir / "pg_ctl"), "-D", str(datadir / "db"), "-o", opts, "-l", str(datadir / "log"), "-w", "start"],
                   check=True, capture_output=True)  # fmt: skip
    try:
        import psycopg

        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", autocommit=True) as conn:
            conn.execute("CREATE DATABASE mlflow")
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run([*as_pg, str(bindir / "pg_ctl"), "-D", str(datadir / "db"), "-m", "fast", "stop"], capture_output=True)
        shutil.rmtree(datadir, ignore_errors=True)


@pytest.fixture
def mlflow_on_postgres(postgres_url, tmp_path, tracking_env):
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "2",
         "--backend-store-uri", postgres_url, "--artifacts-destination", (tmp_path / "server-artifacts").as_uri()],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        if not wait_http_ok(f"http://127.0.0.1:{port}/health", 120):
            pytest.fail("mlflow server on PostgreSQL did not become healthy in 120 s")
        uri = f"http://127.0.0.1:{port}"
        os.environ["MLFLOW_TRACKING_URI"] = uri
        yield uri
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.slow
def test_concurrent_families_log_to_mlflow_on_postgresql(project, tmp_path, mlflow_on_postgres):
    src = make_folder(tmp_path / "src", classes=("cat", "dog", "owl"), per_class=20, size=(20, 24))
    t0 = time.time()
    res = _run(project, src, ["orchestration.task_runner=dask", "orchestration.dask_workers=2"])
    assert res.tracking_uri == mlflow_on_postgres and not (project / ".visionflow" / "mlflow" / "mlflow.db").exists()
    runs = _family_runs(res)
    assert set(runs) == {"cnn", "rnn"} and _overlap(runs["cnn"], runs["rnn"])
    for r in runs.values():  # every concurrent write arrived: status, per-epoch metrics, test metrics
        assert r.info.status == "FINISHED" and r.info.start_time >= t0 * 1000 - 1000
        assert len(_losses(r)) == 2 and "test_accuracy" in r.data.metrics
    assert store.client().get_run(res.parent_run_id).info.status == "FINISHED"
    assert res.champion == "1" and store.alias_version(store.CLASSIFIER_MODEL, store.CHAMPION) == "1"


# --- one family on 2 processes: torchrun + DDP (gloo on this CPU) -----------------------------------


@pytest.mark.slow
def test_torchrun_ddp_two_gloo_processes_train_one_family(project, tmp_path):
    import json

    from components.data.datasets import load_dataset
    from components.training.runner import load_trained, split_accuracy

    cli = str(Path(sys.executable).parent / "visionflow")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_HOME", "BENTOML_HOME", "PREFECT_API_URL"))}
    shutil.copy(REPO_ROOT / "params.yaml", project / "params.yaml")
    src = make_folder(tmp_path / "src", classes=("cat", "dog", "owl"), per_class=20, size=(20, 24))
    ing = subprocess.run([cli, "ingest", "--profile", "quick", "--source", str(src)], cwd=project, env=env, capture_output=True, text=True)
    assert ing.returncode == 0, ing.stderr
    out = subprocess.run([cli, "train-ddp", "--family", "cnn", "--nproc-per-node", "2", "--profile", "quick",
                          "--set", "models.cnn.train.epochs=3", "--set", "engine.progress=false"],
                         cwd=project, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((project / ".visionflow" / "ddp" / "cnn" / "ddp.json").read_text())
    assert summary["world_size"] == 2 and summary["backend"] == "gloo"
    # both replicas stayed identical (each scored its own copy on validation every epoch)
    assert summary["replicas_in_sync"] and len(summary["rank_val_losses"]) == 2 and len(summary["rank_val_losses"][0]) == 3
    # each epoch's images were shared out, not duplicated: the two ranks together saw the train split once
    _, splits = load_dataset(project / "data")
    n = len(splits["train"])
    # (one batch per rank here; on a CPU in channels_last a batch is kept even, see train_one_epoch)
    per_rank = n // 2
    assert summary["train_images_per_epoch"] == [2 * (per_rank - per_rank % 2)] * 3
    # rank 0 wrote one self-describing model file that scores as the run said on validation
    model, _ = load_trained(summary["path"])
    assert abs(split_accuracy(summary["path"], splits["val"]) - summary["val_acc"]) < 1e-6 and model is not None
    # a bad family fails once, in one line, before torchrun starts
    bad = subprocess.run([cli, "train-ddp", "--family", "gan", "--profile", "quick"], cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "not an enabled classifier family" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
