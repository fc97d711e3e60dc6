"""Real HTTP against `bentoml serve` in a subprocess on a free port: every endpoint, every bad input,
lineage matching the registry, and a champion switch under a stream of requests with none lost."""

import io
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from components.data.datasets import DatasetSpec
from components.models import create_model
from components.tracking import mlflow_store as store
from tests.conftest import free_port, wait_http_ok, workspace_store

pytestmark = pytest.mark.integration  # real servers / subprocess CLIs

SPEC = DatasetSpec(["cat", "dog", "owl"], 3, (20, 24), [0.5, 0.5, 0.5], [0.25, 0.25, 0.25])
BENTOML = str(Path(sys.executable).parent / "bentoml")


def _png(size=(24, 20), mode="RGB", seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0]), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, format="PNG")
    return buf.getvalue()


def _register(exp: str, key: str, seed: int, lineage: dict) -> str:
    run = store.start_run(exp, key, lineage)
    torch.manual_seed(seed)
    if key == "gan":
        model = create_model("gan", num_classes=3, in_channels=3, image_size=(20, 24), z_dim=8, ngf=8, ndf=8)
        uri = store.log_model(run, model, np.array([0, 1]), SPEC.to_json(), extra_metadata={"task": "generation"})
        return store.register_version(uri, store.GENERATOR_MODEL, {**lineage, "task": "generation", "evaluated": "true"})
    model = create_model("cnn", num_classes=3, in_channels=3, image_size=(20, 24), widths=[4, 8])
    uri = store.log_model(run, model, np.zeros((2, 3, 20, 24), np.float32), SPEC.to_json(), extra_metadata={"task": "classification"})
    store.log_metrics(run, {"test_accuracy": 0.5 + seed / 100})
    return store.register_version(uri, store.CLASSIFIER_MODEL, {**lineage, "task": "classification", "evaluated": "true",
                                                                 "data_validated": "true", "test_accuracy": "0.5"})  # fmt: skip


def _serve(root: Path, uri: str, _stderr=subprocess.DEVNULL, **settings: str):
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "VISIONFLOW_POLL_SECONDS": "0.5", "VISIONFLOW_MAX_PIXELS": "1000000", **settings}
    proc = subprocess.Popen([BENTOML, "serve", "serving.service:Visionflow", "--host", "127.0.0.1", "--port", str(port)],
                            cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=_stderr)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    if not wait_http_ok(f"{base}/readyz"):
        proc.terminate()
        pytest.fail("bentoml serve did not become ready in 120 s")
    return proc, base


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The shipped configuration (adaptive batching on); `unbatched` below serves the other one."""
    root = tmp_path_factory.mktemp("serving-project")
    with workspace_store(root) as (ws, uri, exp):
        lineage = {"data_version": "a" * 32, "params_hash": "b" * 16, "git_commit": "c" * 40}
        v1 = _register(exp, "cnn", 1, lineage)
        v2 = _register(exp, "cnn", 2, {**lineage, "data_version": "e" * 32})
        g1 = _register(exp, "gan", 3, lineage)
        store.set_alias(store.CLASSIFIER_MODEL, store.CHAMPION, v1)
        store.set_alias(store.GENERATOR_MODEL, store.GENERATOR, g1)
        proc, base = _serve(root, uri)
        try:
            yield {"base": base, "v1": v1, "v2": v2, "g1": g1, "uri": uri, "root": root, "ws": ws}
        finally:
            proc.terminate()
            proc.wait(timeout=30)


@pytest.mark.slow
def test_classify_answers_with_lineage(server):
    r = httpx.post(f"{server['base']}/classify", files={"image": ("x.png", _png())})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["class_name"] in SPEC.classes and body["label"] == SPEC.classes.index(body["class_name"])
    assert set(body["probabilities"]) == set(SPEC.classes) and abs(sum(body["probabilities"].values()) - 1) < 1e-4
    assert body["model"]["name"] == store.CLASSIFIER_MODEL and body["data_version"] == "a" * 32
    assert r.headers["x-model-version"] == f"{store.CLASSIFIER_MODEL}/{body['model']['version']}"
    # any size, gray or RGB, JPEG or BMP: converted as in training
    for fmt, mode, size in (("JPEG", "RGB", (200, 90)), ("BMP", "L", (7, 300))):
        buf = io.BytesIO()
        Image.open(io.BytesIO(_png(size, mode))).save(buf, format=fmt)
        assert httpx.post(f"{server['base']}/classify", files={"image": ("x", buf.getvalue())}).status_code == 200
    batch = httpx.post(f"{server['base']}/classify_batch", files=[("images", ("a.png", _png(seed=1))), ("images", ("b.png", _png(seed=2)))])
    assert batch.status_code == 200 and len(batch.json()) == 2
    one = httpx.post(f"{server['base']}/classify_batch", files=[("images", ("a.png", _png(seed=1)))])
    assert one.status_code == 200 and len(one.json()) == 1


@pytest.mark.slow
def test_health_metadata_and_generate(server):
    assert httpx.get(f"{server['base']}/healthz").status_code == 200
    meta = httpx.get(f"{server['base']}/metadata").json()
    assert meta["classes"] == SPEC.classes and meta["preprocessing"]["image_size"] == [20, 24]
    assert meta["params_hash"] == "b" * 16 and meta["git_commit"] == "c" * 40 and meta["generator"]["model"]["version"] == server["g1"]
    r = httpx.post(f"{server['base']}/generate", json={"class_name": "dog", "n": 4})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).size[0] > 24


BAD = {
    "non-image bytes": ({"image": ("x.png", b"hello, not an image")}, 400, "not an image"),
    "empty body": ({"image": ("x.png", b"")}, 400, "empty"),
    "truncated image": ({"image": ("x.png", _png()[:120])}, 400, "truncated"),
    "over the pixel cap": ({"image": ("x.png", _png((1200, 1000)))}, 413, "pixel cap"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_a_4xx_that_says_why_and_the_server_keeps_serving(server, case):
    files, status, words = BAD[case]
    r = httpx.post(f"{server['base']}/classify", files=files)
    assert r.status_code == status and words in r.text
    assert httpx.post(f"{server['base']}/classify", files={"image": ("x.png", _png())}).status_code == 200


@pytest.mark.slow
def test_bad_requests_of_other_kinds(server):
    base = server["base"]
    assert httpx.post(f"{base}/classify", json={"image": "x"}).status_code == 400  # wrong content type
    assert httpx.post(f"{base}/classify").status_code == 400  # no body
    r = httpx.post(f"{base}/classify_batch", files=[("images", ("a.png", _png())), ("images", ("b.png", b"junk"))])
    assert r.status_code == 400 and "images[1]" in r.text
    assert httpx.post(f"{base}/generate", json={"class_name": "zebra", "n": 2}).status_code == 422
    assert httpx.post(f"{base}/generate", json={"label": 1, "n": 0}).status_code == 422
    assert httpx.post(f"{base}/generate", json={"label": 9, "n": 1}).status_code == 422


@pytest.mark.slow
def test_batched_requests_keep_their_own_answers_and_errors(server):
    """Concurrent requests share forward passes; each still gets its own answer, and one client's
    bad image is that client's 400 only."""
    import concurrent.futures as cf

    def post(i: int):
        body = b"junk" if i % 5 == 0 else _png(seed=i)
        r = httpx.post(f"{server['base']}/classify", files={"image": ("x.png", body)}, timeout=30)
        return i, r.status_code, r.json()

    with cf.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(post, range(40)))
    for i, status, body in results:
        if i % 5 == 0:
            assert status == 400 and "not an image" in body["error"]
        else:
            assert status == 200 and body["class_name"] in SPEC.classes, body
    # the same image gets the same answer whether or not it was batched with others
    alone = httpx.post(f"{server['base']}/classify", files={"image": ("x.png", _png(seed=3))}).json()
    assert alone["probabilities"] == next(b for i, _, b in results if i == 3)["probabilities"]
    two = httpx.post(f"{server['base']}/classify", files=[("image", ("a.png", _png())), ("image", ("b.png", _png()))])
    assert two.status_code == 400 and "/classify_batch" in two.text


MALFORMED = {  # (path, multipart parts or None for a bare POST, words in the 400's message)
    "file under another field name": ("/classify", [("file", ("x.png", _png()))], "'file'"),
    "text field instead of a file": ("/classify", [("image", (None, "not a file"))], "not a file"),
    "a form with no file at all": ("/classify", [("note", (None, "hello"))], "'note'"),
    "no body": ("/classify", None, "multipart/form-data"),
    "two files to /classify": ("/classify", [("image", ("a.png", _png())), ("image", ("b.png", _png()))], "/classify_batch"),
    "batch under another field name": ("/classify_batch", [("file", ("x.png", _png()))], "'images'"),
    "batch with a stray field": ("/classify_batch", [("images", ("x.png", _png())), ("other", ("y.png", _png()))], "'other'"),
}


def _assert_malformed_are_400s(base: str) -> None:
    for case, (path, parts, words) in MALFORMED.items():
        r = httpx.post(f"{base}{path}", files=parts) if parts else httpx.post(f"{base}{path}")
        assert r.status_code == 400 and words in r.json()["error"], (case, r.status_code, r.text)
    assert httpx.post(f"{base}/classify", files={"image": ("x.png", _png())}).status_code == 200  # still serving


@pytest.mark.slow
def test_malformed_forms_are_400s_with_batching(server):
    _assert_malformed_are_400s(server["base"])


@pytest.fixture(scope="module")
def unbatched(server):
    proc, base = _serve(server["root"], server["uri"], VISIONFLOW_BATCHING="off", VISIONFLOW_MAX_IN_FLIGHT="2")
    try:
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_unbatched_configuration_and_load_shedding(unbatched):
    import concurrent.futures as cf

    r = httpx.post(f"{unbatched}/classify", files={"image": ("x.png", _png())})
    assert r.status_code == 200 and r.headers["x-model-version"].startswith(store.CLASSIFIER_MODEL)
    assert httpx.post(f"{unbatched}/classify", files={"image": ("x.png", b"junk")}).status_code == 400
    r = httpx.post(f"{unbatched}/classify_batch", files=[("images", ("a.png", _png())), ("images", ("b.png", b"junk"))])
    assert r.status_code == 400 and "images[1]" in r.text
    # more requests at once than the 2 allowed in flight: the excess gets a deliberate 503 with
    # Retry-After at once, never a reset or a timeout, and the probes still answer
    with cf.ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(lambda _: httpx.post(f"{unbatched}/classify", files={"image": ("x.png", _png((600, 500)))}, timeout=30), range(48)))
    codes = {a.status_code for a in answers}
    assert codes == {200, 503}, codes
    assert all(a.headers.get("retry-after") == "1" and "busy" in a.json()["error"] for a in answers if a.status_code == 503)
    assert httpx.get(f"{unbatched}/readyz").status_code == 200
    assert httpx.post(f"{unbatched}/classify", files={"image": ("x.png", _png())}).status_code == 200
    time.sleep(1.5)  # the shed burst is over
    _assert_malformed_are_400s(unbatched)


@pytest.mark.slow
def test_champion_switch_under_load_loses_no_request(server):
    base, seen, failures, stop = server["base"], set(), [], threading.Event()

    def client():
        with httpx.Client(timeout=10) as c:
            while not stop.is_set():
                r = c.post(f"{base}/classify", files={"image": ("x.png", _png())})
                if r.status_code != 200:
                    failures.append(r.status_code)
                else:
                    seen.add(r.json()["model"]["version"])

    threads = [threading.Thread(target=client) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    store.set_alias(store.CLASSIFIER_MODEL, store.CHAMPION, server["v2"])  # `visionflow promote` does this
    deadline = time.time() + 30
    while server["v2"] not in seen and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join()
    assert failures == []
    assert seen == {server["v1"], server["v2"]}
    meta = httpx.get(f"{base}/metadata").json()
    assert meta["model"]["version"] == server["v2"] and meta["data_version"] == "e" * 32


@pytest.mark.slow
def test_package_builds_a_bento_that_serves_without_the_registry(server, tmp_path):
    from components.packaging.bento import package

    os.environ["MLFLOW_TRACKING_URI"] = server["uri"]
    champion = store.alias_version(store.CLASSIFIER_MODEL, store.CHAMPION)
    res = package(server["ws"])
    assert res.bento_tag.startswith("visionflow:") and set(res.model_tags) == {"classifier", "generator"}
    assert res.dockerfile is not None and "FROM" in res.dockerfile.read_text()
    import bentoml

    labels = bentoml.models.get(res.model_tags["classifier"]).info.labels
    assert labels["registered_version"] == champion and labels["data_version"]
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'empty.db'}"}  # no registry in reach
    proc = subprocess.Popen([BENTOML, "serve", res.bento_tag, "--host", "127.0.0.1", "--port", str(port)],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        assert wait_http_ok(f"{base}/readyz"), "the Bento did not become ready in 120 s"
        r = httpx.post(f"{base}/classify", files={"image": ("x.png", _png())})
        assert r.status_code == 200 and r.json()["model"]["version"] == champion
    finally:
        proc.terminate()
        proc.wait(timeout=30)
