"""The service during a rollout, with a real `bentoml serve` and a real registry: shadow answers logged
under the client's request ids and never returned, a failing challenger that fails no request,
canary routing stable by client key and near its share, and stage changes under a stream of requests
with none failed."""

from __future__ import annotations

import threading
import time
from collections import Counter

import httpx
import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from components.data.datasets import DatasetSpec
from components.models import create_model
from components.monitoring.inference_log import InferenceLog
from components.tracking import mlflow_store as store
from tests.conftest import workspace_store
from tests.test_serving import SPEC, _png, _register, _serve

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def _broken_challenger(exp: str, lineage: dict) -> str:
    """A cnn that loads and warms up but fails every answer: it always picks class 2 while its spec
    names one class (the answer's class lookup raises)."""
    run = store.start_run(exp, "cnn", lineage)
    model = create_model("cnn", num_classes=3, in_channels=3, image_size=(20, 24), widths=[4, 8])
    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        head.bias[2] = 1e4
    bad = DatasetSpec(["cat"], 3, (20, 24), SPEC.mean, SPEC.std)
    uri = store.log_model(run, model, np.zeros((2, 3, 20, 24), np.float32), bad.to_json(), extra_metadata={"task": "classification"})
    return store.register_version(uri, store.CLASSIFIER_MODEL, {**lineage, "task": "classification", "evaluated": "true"})


def _stage(version: str | None, stage: str | None = None, percent: float = 0) -> None:
    c = MlflowClient()
    if version is None:
        c.delete_registered_model_alias(store.CLASSIFIER_MODEL, store.CHALLENGER)
        return
    store.set_alias(store.CLASSIFIER_MODEL, store.CHALLENGER, version)
    c.set_model_version_tag(store.CLASSIFIER_MODEL, version, "rollout.stage", stage)
    c.set_model_version_tag(store.CLASSIFIER_MODEL, version, "rollout.percent", str(percent))


def _wait_stage(base: str, stage: str | None, version: str | None = None, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        r = httpx.get(f"{base}/metadata", timeout=5).json().get("rollout")
        if (r is None and stage is None) or (r and r["stage"] == stage and (version is None or r["challenger"]["version"] == version)):
            return
        time.sleep(0.2)
    pytest.fail(f"the service did not reach stage {stage} v{version} in {timeout} s")


def _classify(base: str, seed: int, client: str | None = None) -> httpx.Response:
    headers = {"X-Client-Id": client} if client else {}
    return httpx.post(f"{base}/classify", files={"image": ("x.png", _png(seed=seed), "image/png")}, headers=headers, timeout=30)


@pytest.fixture(scope="module")
def rollout_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("rollout-project")
    with workspace_store(root) as (ws, uri, exp):
        lineage = {"data_version": "a" * 32, "params_hash": "b" * 16, "git_commit": "c" * 40}
        torch.manual_seed(0)
        v1 = _register(exp, "cnn", 1, lineage)
        v2 = _register(exp, "cnn", 2, lineage)
        bad = _broken_challenger(exp, lineage)
        store.set_alias(store.CLASSIFIER_MODEL, store.CHAMPION, v1)
        log_path = root / "inference.db"
        proc, base = _serve(root, uri, VISIONFLOW_INFERENCE_LOG=str(log_path), VISIONFLOW_GENERATOR_URI="none", VISIONFLOW_ROLLOUT_METRICS_SECONDS="0")
        try:
            yield {"base": base, "v1": v1, "v2": v2, "bad": bad, "log": log_path}
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def test_shadow_logs_the_challenger_under_the_clients_request_ids_and_returns_only_the_champion(rollout_server):
    base, v1, v2 = rollout_server["base"], rollout_server["v1"], rollout_server["v2"]
    _stage(v2, "shadow")
    _wait_stage(base, "shadow", v2)
    ids = []
    for i in range(12):
        r = _classify(base, i)
        assert r.status_code == 200, r.text
        a = r.json()
        assert a["model"]["version"] == v1 and a["rollout"] == {"stage": "shadow", "served_by": "champion"}
        assert r.headers["X-Model-Version"].endswith(f"/{v1}")
        ids.append(a["request_id"])
    time.sleep(1.0)  # the shadow thread answers after the response
    log = InferenceLog(rollout_server["log"])
    shadow = {r[0]: r for r in log._con.execute("SELECT request_id, mode, model_version, predicted, error FROM rollout_log WHERE mode = 'shadow'")}
    assert set(ids) <= set(shadow), "every shadowed request has the challenger's prediction under the same id"
    assert all(shadow[i][2] == v2 and shadow[i][3] in SPEC.classes and shadow[i][4] is None for i in ids)
    served = {r[0]: r[1] for r in log._con.execute("SELECT request_id, model_version FROM predictions")}
    assert all(served[i] == v1 for i in ids), "the served answer logged is the champion's"
    log.close()
    time.sleep(1.0)  # a poll refreshes the rollout series
    text = httpx.get(f"{base}/metrics", timeout=5).text
    assert f'visionflow_rollout_stage{{model_version="{v2}",stage="shadow"}} 1.0' in text, text[-3000:]
    challenger_requests = [line for line in text.splitlines() if line.startswith("visionflow_rollout_requests") and 'role="challenger"' in line]
    assert challenger_requests and float(challenger_requests[0].split()[-1]) >= len(ids)
    assert "visionflow_rollout_agreement" in text
    # a challenger that raises: requests still answered by the champion, the failures are evidence
    bad = rollout_server["bad"]
    _stage(bad, "shadow")
    _wait_stage(base, "shadow", bad)
    rids = [_classify(base, 100 + i).json()["request_id"] for i in range(5)]
    time.sleep(1.0)
    log = InferenceLog(rollout_server["log"])
    errs = {r[0]: r[1] for r in log._con.execute("SELECT request_id, error FROM rollout_log WHERE model_version = ?", (bad,))}
    assert all(errs.get(i) for i in rids), errs
    log.close()
    _stage(None)
    _wait_stage(base, None)


def test_canary_routes_a_stable_share_by_client_key_and_survives_stage_changes(rollout_server):
    base, v1, v2 = rollout_server["base"], rollout_server["v1"], rollout_server["v2"]
    _stage(v2, "canary", 30)
    _wait_stage(base, "canary", v2)
    first = {}
    for i in range(150):
        r = _classify(base, i, client=f"client-{i}")
        assert r.status_code == 200, r.text
        first[i] = r.json()["model"]["version"]
        assert r.json()["rollout"]["served_by"] == ("challenger" if first[i] == v2 else "champion")
    share = Counter(first.values())[v2] / len(first)
    assert 0.18 <= share <= 0.42, f"canary share {share:.2f}, asked 30 %"
    for i in range(0, 150, 10):  # the same key always gets the same version
        assert _classify(base, 1000 + i, client=f"client-{i}").json()["model"]["version"] == first[i]
    # a failing canary challenger: the routed clients still get an answer (the champion's)
    _stage(rollout_server["bad"], "canary", 100)
    _wait_stage(base, "canary", rollout_server["bad"])
    r = _classify(base, 7, client="anyone")
    assert r.status_code == 200 and r.json()["model"]["version"] == v1
    assert httpx.post(f"{base}/classify_canary", files={"image": ("x.png", _png(), "image/png")}, timeout=10).status_code == 404
    # stage changes under a stream of requests: none fails
    _stage(v2, "canary", 50)
    _wait_stage(base, "canary", v2)
    codes: Counter = Counter()
    stop = threading.Event()

    def stream():
        i = 0
        while not stop.is_set():
            codes[_classify(base, i, client=f"s-{i % 40}").status_code] += 1
            i += 1

    threads = [threading.Thread(target=stream) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(2)
    _stage(v2, "shadow")
    time.sleep(2)
    store.set_alias(store.CLASSIFIER_MODEL, store.CHAMPION, v2)  # promoted
    _stage(None)
    _wait_stage(base, None)
    time.sleep(2)
    stop.set()
    for t in threads:
        t.join()
    assert set(codes) == {200} and codes[200] > 20, codes
    assert _classify(base, 5).json()["model"]["version"] == v2
    store.set_alias(store.CLASSIFIER_MODEL, store.CHAMPION, v1)
