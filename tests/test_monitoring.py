"""Production monitoring: the inference log (rows, feedback, bounds), the production drift decision,
feedback → an image folder, and against a real `bentoml serve`: the request ids clients got in the
log, feedback and live accuracy in /metrics (read with Prometheus' own text parser), the API key,
the JSON access log, and the CLI's refusal to bind publicly without a key."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from components.data.datasets import DatasetSpec, ImageTensors
from components.evaluation.drift import data_stats
from components.monitoring.inference_log import FeedbackError, InferenceLog
from components.monitoring.production import decide, feedback_source, production_stats
from components.tracking import mlflow_store as store
from tests.conftest import workspace_store
from tests.test_serving import _png, _register, _serve

CLASSES = ["cat", "dog", "owl"]


def _row(i: int, predicted: str = "cat", version: str = "1", **extra) -> dict:
    return {"request_id": f"r{i}", "ts": time.time(), "endpoint": "/classify", "model_name": "m", "model_version": version,
            "data_version": "d", "predicted": predicted, "confidence": 0.9, "width": 8, "height": 8, "channels": 1,
            "brightness": 0.5, "contrast": 0.2, "latency_ms": 1.0, **extra}  # fmt: skip


def test_inference_log_feedback_and_its_bounds(tmp_path):
    log = InferenceLog(tmp_path / "log" / "inference.db", keep_images=True, keep_images_mb=0.01, max_rows=1500)
    log.record([_row(0, "cat"), _row(1, "dog")], [(b"x" * 100, "png"), None], CLASSES)
    fb = log.feedback("r0", "cat")
    assert (fb.correct, fb.live_accuracy, fb.n_feedback, fb.model_version) == (True, 1.0, 1, "1")
    fb = log.feedback("r1", "owl")
    assert (fb.correct, fb.live_accuracy, fb.n_feedback, fb.predicted) == (False, 0.5, 2, "dog")
    with pytest.raises(FeedbackError, match="unknown request_id 'nope'"):
        log.feedback("nope", "cat")
    with pytest.raises(FeedbackError, match="unknown label 'zebra'.*cat, dog, owl"):
        log.feedback("r0", "zebra")
    assert (tmp_path / "log" / log.rows()[0]["image_path"]).read_bytes() == b"x" * 100
    assert log.labelled_images() == [{"request_id": "r0", "label": "cat", "image_path": log.rows()[0]["image_path"]}]
    # 2,000 more rows with a 1 kB image each: the table keeps max_rows, the images ~90 % of 10 kB
    for start in range(2, 2002, 100):
        log.record([_row(i) for i in range(start, start + 100)], [(b"y" * 1000, "png")] * 100, CLASSES)
    log.prune()
    rows = log.rows()
    assert len(rows) == 1500 and rows[-1]["request_id"] == "r2001"
    kept = [r for r in rows if r["image_path"]]
    on_disk = list((tmp_path / "log" / "images").rglob("*.png"))
    assert len(on_disk) == len(kept) and sum(f.stat().st_size for f in on_disk) <= 0.01 * 1024 * 1024
    assert kept and kept[-1]["request_id"] == "r2001"  # the newest images stay


def test_inference_log_stores_a_models_classes_after_a_write_without_them(tmp_path):
    log = InferenceLog(tmp_path / "inference.db")
    log.record([_row(0)])  # no classes known for this write
    assert log.classes("m", "1") is None
    log.record([_row(1)], classes=CLASSES)
    assert log.classes("m", "1") == CLASSES


def _reference(rng, n=600, invert=False) -> tuple[dict, list[dict], torch.Tensor]:
    """data_stats of 'training' images, and inference-log rows of fresh images from the same (or inverted) source."""
    spec = DatasetSpec(CLASSES, 1, (12, 12), [0.5], [0.25])

    def images(k):
        x = (rng.random((k, 1, 12, 12)) < 0.2) * 255 * rng.uniform(0.6, 1.0, (k, 1, 1, 1))
        return torch.from_numpy(x.astype(np.uint8))

    train = ImageTensors(images(n), torch.from_numpy(rng.integers(0, 3, n)), [f"{i}.png" for i in range(n)])
    ref = data_stats(spec, train)
    x = images(n).float() / 255
    if invert:
        x = 1 - x
    flat = x.flatten(1)
    preds = rng.integers(0, 3, n)
    rows = [_row(i, CLASSES[int(p)], brightness=float(b), contrast=float(c)) for i, (p, b, c) in enumerate(zip(preds, flat.mean(1), flat.std(1, correction=0)))]
    return ref, rows, x


def test_production_drift_decision():
    rng = np.random.default_rng(0)
    kw = dict(model_name="m", model_version="1", since=0.0, threshold=0.1, min_requests=200, accuracy_floor=0.9, min_feedback=20)
    ref, rows, x = _reference(rng)
    stats = production_stats(rows, CLASSES)  # from per-image mean/std: the pooled mean and std of all pixels
    assert math.isclose(stats["pixel_mean"], float(x.mean()), rel_tol=1e-4) and math.isclose(stats["pixel_std"], float(x.std()), rel_tol=1e-3)
    same = decide(ref, rows, CLASSES, **kw)
    assert not same.retrain and same.drift.score <= 0.1, same
    ref, inverted, _ = _reference(rng, invert=True)
    shifted = decide(ref, inverted, CLASSES, **kw)
    assert shifted.retrain and shifted.drift.pixel_mean_shift > 1 and "production drift score" in shifted.reason
    few = decide(ref, inverted[:50], CLASSES, **kw)
    assert not few.retrain and "only 50" in few.reason
    wrong = [dict(r, label="owl" if r["predicted"] != "owl" else "cat") for r in rows[:30]]  # live accuracy 0
    bad = decide(ref, wrong + rows[30:], CLASSES, **kw)
    assert bad.retrain and bad.live_accuracy == 0.0 and "live accuracy" in bad.reason


def test_feedback_source_adds_each_labelled_image_once(tmp_path):
    data = tmp_path / "data"
    for split in ("train", "val", "test"):
        for c in CLASSES:
            (data / split / c).mkdir(parents=True)
            (data / split / c / f"{split}.png").write_bytes(f"{split}{c}".encode())
    (data / "manifest.csv").write_text("not an image")
    logdir = tmp_path / "log"
    (logdir / "images").mkdir(parents=True)
    for name, content in (("a.png", b"new"), ("b.png", b"new"), ("c.png", b"trainowl")):  # b duplicates a; c is in the data
        (logdir / "images" / name).write_bytes(content)
    labelled = [{"label": "dog", "image_path": f"images/{n}"} for n in ("a.png", "b.png", "c.png", "gone.png")]
    out = tmp_path / "src"
    assert feedback_source(data, logdir, labelled, out) == 1
    assert (out / "train" / "dog" / "feedback" / "a.png").read_bytes() == b"new"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == sorted(
        [f"{s}/{c}/{s}.png" for s in ("train", "val", "test") for c in CLASSES] + ["train/dog/feedback/a.png"]
    )


@pytest.fixture(scope="module")
def monitored(tmp_path_factory):
    """A served champion with the inference log at a known path, images kept, access log on, stderr captured."""
    root = tmp_path_factory.mktemp("monitored")
    with workspace_store(root) as (ws, uri, exp):
        v1 = _register(exp, "cnn", 1, {"data_version": "a" * 32, "params_hash": "b" * 16, "git_commit": "c" * 40})
        store.set_alias(store.CLASSIFIER_MODEL, store.CHAMPION, v1)
        log_path = root / "inference.db"
        stderr = root / "serve.stderr"
        with stderr.open("w") as err:
            proc, base = _serve(root, uri, VISIONFLOW_INFERENCE_LOG=str(log_path), VISIONFLOW_KEEP_IMAGES="on", VISIONFLOW_ACCESS_LOG="on",
                                VISIONFLOW_GENERATOR_URI="none", _stderr=err)  # fmt: skip
        try:
            yield {"base": base, "log": log_path, "v1": v1, "stderr": stderr, "root": root, "uri": uri}
        finally:
            proc.terminate()
            proc.wait(timeout=30)


@pytest.mark.slow
def test_log_rows_carry_the_request_ids_clients_got(monitored):
    base = monitored["base"]
    one = httpx.post(f"{base}/classify", files={"image": ("x.png", _png((30, 20)))})
    assert one.status_code == 200 and one.headers["x-request-id"] == one.json()["request_id"]
    many = httpx.post(f"{base}/classify_batch", files=[("images", ("a.png", _png(seed=1))), ("images", ("b.png", _png(seed=2, mode="L")))])
    ids = [a["request_id"] for a in many.json()]
    assert many.status_code == 200 and len(set(ids)) == 2 and many.headers["x-request-id"] not in ids  # the request's own id
    log = InferenceLog(monitored["log"])
    rows = {r["request_id"]: r for r in log.rows()}
    first = rows[one.json()["request_id"]]
    assert (first["endpoint"], first["width"], first["height"], first["channels"], first["predicted"]) == ("/classify", 30, 20, 3, one.json()["class_name"])
    assert first["model_version"] == monitored["v1"] and first["data_version"] == "a" * 32 and 0 < first["brightness"] < 1 and first["contrast"] > 0
    assert math.isclose(first["confidence"], one.json()["confidence"]) and first["latency_ms"] > 0
    assert (monitored["log"].parent / first["image_path"]).read_bytes() == _png((30, 20))  # kept: VISIONFLOW_KEEP_IMAGES=on
    assert [rows[i]["endpoint"] for i in ids] == ["/classify_batch"] * 2 and rows[ids[1]]["channels"] == 1
    # the JSON access log: one line per request, with the id the client got
    time.sleep(0.5)
    lines = [json.loads(line) for line in monitored["stderr"].read_text().splitlines() if line.startswith("{")]
    mine = [e for e in lines if e.get("request_id") == one.headers["x-request-id"]]
    assert len(mine) == 1 and mine[0]["path"] == "/classify" and mine[0]["status"] == 200 and mine[0]["model_version"].endswith(f"/{monitored['v1']}")


@pytest.mark.slow
def test_feedback_and_live_accuracy_in_metrics(monitored):
    from prometheus_client.parser import text_string_to_metric_families

    base, v = monitored["base"], monitored["v1"]
    answers = [httpx.post(f"{base}/classify", files={"image": ("x.png", _png(seed=10 + i))}).json() for i in range(4)]
    for a in answers[:3]:  # three right, one wrong
        r = httpx.post(f"{base}/feedback", json={"request_id": a["request_id"], "label": a["class_name"]})
        assert r.status_code == 200 and r.json()["correct"] is True
    wrong = next(c for c in CLASSES if c != answers[3]["class_name"])
    r = httpx.post(f"{base}/feedback", json={"request_id": answers[3]["request_id"], "label": wrong})
    assert r.status_code == 200 and r.json()["correct"] is False and r.json()["live_accuracy"] == 0.75
    bad_id = httpx.post(f"{base}/feedback", json={"request_id": "no-such-id", "label": "cat"})
    assert bad_id.status_code == 400 and "no-such-id" in bad_id.json()["error"]
    bad_class = httpx.post(f"{base}/feedback", json={"request_id": answers[0]["request_id"], "label": "zebra"})
    assert bad_class.status_code == 400 and "zebra" in bad_class.json()["error"] and "cat, dog, owl" in bad_class.json()["error"]
    assert httpx.post(f"{base}/feedback", content=b"{not json").status_code == 400
    assert httpx.post(f"{base}/classify", files={"image": ("x.png", _png())}).status_code == 200  # still serving
    samples = {}
    for family in text_string_to_metric_families(httpx.get(f"{base}/metrics").text):
        for s in family.samples:
            samples.setdefault(s.name, []).append(s)

    def value(name, **labels):
        return sum(s.value for s in samples.get(name, []) if all(s.labels.get(k) == w for k, w in labels.items()))

    assert value("visionflow_live_accuracy", model_version=v) == 0.75
    assert value("visionflow_live_accuracy_feedback", model_version=v) == 4
    assert value("visionflow_feedback_total", model_version=v, correct="true") == 3
    assert value("visionflow_feedback_total", model_version=v, correct="false") == 1
    assert value("visionflow_request_errors_total", endpoint="/feedback", status="400") == 3
    assert value("visionflow_requests_total", endpoint="/classify", status="200", model_version=v) >= 6
    assert value("visionflow_predictions_total", model_version=v) >= 6
    assert value("visionflow_confidence_count", model_version=v) >= 6
    assert value("visionflow_batch_size_count") >= 1 and value("visionflow_request_duration_seconds_count", endpoint="/classify") >= 6
    assert any(name.startswith("bentoml_") for name in samples)  # BentoML's own series on the same page


@pytest.mark.slow
def test_api_key_guards_every_endpoint_but_the_probes(monitored):
    proc, base = _serve(monitored["root"], monitored["uri"], VISIONFLOW_API_KEY="s3cret-key", VISIONFLOW_GENERATOR_URI="none",
                        VISIONFLOW_INFERENCE_LOG="off")  # fmt: skip
    try:
        files = {"image": ("x.png", _png())}
        assert httpx.post(f"{base}/classify", files=files).status_code == 401
        wrong = httpx.post(f"{base}/classify", files=files, headers={"Authorization": "Bearer s3cret-kez"})
        assert wrong.status_code == 401 and "API key" in wrong.json()["error"] and wrong.headers["www-authenticate"].startswith("Bearer")
        ok = httpx.post(f"{base}/classify", files=files, headers={"Authorization": "Bearer s3cret-key"})
        assert ok.status_code == 200 and ok.json()["class_name"] in CLASSES
        assert httpx.get(f"{base}/metadata").status_code == 401
        assert httpx.post(f"{base}/feedback", json={}).status_code == 401
        for open_path in ("/healthz", "/livez", "/readyz", "/metrics", "/"):
            assert httpx.get(f"{base}{open_path}").status_code == 200, open_path
        off = httpx.post(f"{base}/feedback", json={"request_id": ok.json()["request_id"], "label": "cat"}, headers={"Authorization": "Bearer s3cret-key"})
        assert off.status_code == 409 and "inference log is off" in off.json()["error"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.integration  # a subprocess
def test_public_bind_needs_an_api_key(tmp_path):
    cli = str(Path(sys.executable).parent / "visionflow")
    env = {k: v for k, v in os.environ.items() if k != "VISIONFLOW_API_KEY"}
    out = subprocess.run([cli, "serve", "--host", "0.0.0.0", "--root", str(tmp_path)], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "VISIONFLOW_API_KEY" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    out = subprocess.run([cli, "ui", "--host", "0.0.0.0", "--root", str(tmp_path)], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "loopback only" in out.stderr


def test_pod_logs_merge_into_the_workspace_log_once(tmp_path):
    """`visionflow monitor --inference-log`: each pod's file (copied from its volume) joins the workspace's log, feedback included, idempotently."""

    def row(rid: str, ts: float) -> dict:
        return {"request_id": rid, "ts": ts, "endpoint": "/classify", "model_name": "m", "model_version": "1", "predicted": "cat", "confidence": 0.9}

    pods = []
    for i in range(2):
        pod = InferenceLog(tmp_path / f"inference-pod-{i}.db")
        pod.record([row(f"p{i}-a", 1.0 + i), row(f"p{i}-b", 2.0 + i)], classes=["cat", "dog"])
        pods.append(pod)
    pods[1].feedback("p1-b", "dog")
    for pod in pods:
        pod.close()
    ws_log = InferenceLog(tmp_path / "workspace" / "inference.db")
    assert ws_log.absorb(tmp_path / "inference-pod-0.db") == 2
    assert ws_log.absorb(tmp_path / "inference-pod-1.db") == 2
    assert ws_log.absorb(tmp_path / "inference-pod-1.db") == 0, "merging the same file again changes nothing"
    rows = {r["request_id"]: r for r in ws_log.rows()}
    assert sorted(rows) == ["p0-a", "p0-b", "p1-a", "p1-b"] and rows["p1-b"]["label"] == "dog"
    assert ws_log.classes("m", "1") == ["cat", "dog"]
    later = InferenceLog(tmp_path / "inference-pod-0.db")
    later.feedback("p0-a", "dog")  # feedback given to a pod after the first merge
    later.close()
    assert ws_log.absorb(tmp_path / "inference-pod-0.db") == 1 and {r["request_id"]: r for r in ws_log.rows()}["p0-a"]["label"] == "dog"
