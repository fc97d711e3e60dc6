"""Scheduled retraining against a real `prefect server start` on 127.0.0.1: the deployment exists
with its cron schedule, a triggered run is executed by the served runner and completes, and its
MLflow run appears in the project's store."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO_ROOT, free_port, make_folder, wait_http_ok

pytestmark = pytest.mark.integration  # real servers / subprocess CLIs

BIN = Path(sys.executable).parent


def _api(http: httpx.Client, method: str, path: str, **kw) -> dict:
    """One REST call, retried while the server answers 429/5xx or drops the connection (as Prefect's
    own client does: its SQLite store can be busy while the served runner writes); anything else
    fails the test with the server's answer."""
    deadline = time.time() + 60
    while True:
        try:
            r = http.request(method, path, **kw)
            if r.status_code != 429 and r.status_code < 500:
                break
        except httpx.TransportError as e:
            r = e
        if time.time() > deadline:
            break
        time.sleep(1)
    assert isinstance(r, httpx.Response) and r.is_success, (
        f"{method} {path}: {r.status_code if isinstance(r, httpx.Response) else r} {getattr(r, 'text', '')[:300]}"
    )
    return r.json()


@pytest.mark.slow
def test_schedule_registers_a_cron_deployment_and_runs_it(project, tmp_path, tracking_env):
    shutil.copy(REPO_ROOT / "params.yaml", project / "params.yaml")
    src = make_folder(tmp_path / "src", classes=("cat", "dog"), per_class=12, size=(16, 16))
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-server-home"), "PREFECT_API_URL": api}
    env.pop("MLFLOW_TRACKING_URI", None)
    server = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    runner = None
    try:
        assert wait_http_ok(f"{api}/health", 120), "prefect server did not start"
        runner = subprocess.Popen([str(BIN / "visionflow"), "schedule", "--cron", "0 3 * * 1", "--profile", "quick", "--source", str(src),
                                   "--set", "packaging.enabled=false"], cwd=project, env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        # The REST API directly: this test process's own Prefect client is bound to the ephemeral
        # server of the other tests.
        with httpx.Client(base_url=api, timeout=30) as http:
            deadline = time.time() + 180
            deployment = None
            while deployment is None and time.time() < deadline:
                r = http.get("/deployments/name/retrain_flow/visionflow-retrain")
                deployment = r.json() if r.status_code == 200 else time.sleep(1)
            assert deployment is not None, "the deployment was not registered"
            assert [s["schedule"]["cron"] for s in deployment["schedules"]] == ["0 3 * * 1"]
            run = _api(http, "POST", f"/deployments/{deployment['id']}/create_flow_run", json={})
            deadline = time.time() + 300
            state = None
            while time.time() < deadline:
                state = _api(http, "GET", f"/flow_runs/{run['id']}")["state"]
                if state and state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                    break
                time.sleep(2)
            assert state is not None and state["type"] == "COMPLETED", f"triggered run ended as {state}"
        import mlflow

        mlflow.set_tracking_uri(f"sqlite:///{project / '.visionflow' / 'mlflow' / 'mlflow.db'}")
        runs = mlflow.search_runs(experiment_names=["visionflow"], filter_string="attributes.status = 'FINISHED'")
        assert any(name.startswith("pipeline-quick") for name in runs["tags.mlflow.runName"])
    finally:
        for proc in (runner, server):
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
