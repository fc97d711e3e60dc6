"""The maintenance loop end to end, as an operator runs it: `visionflow run` trains a champion on the
bundled digits, `visionflow serve` serves it (images kept), 2,000 in-distribution requests do not
trigger `visionflow monitor`, 2,000 inverted digits do — and with feedback and
`monitor.learn_from_feedback` the labelled images become a new validated data version before the
retrain. The page at GET / is driven in a real headless browser (Debian's chromium + Playwright)."""

from __future__ import annotations

import concurrent.futures as cf
import io
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageOps

from tests.conftest import REPO_ROOT, free_port, wait_http_ok

pytestmark = pytest.mark.integration  # real servers / subprocess CLIs

CLI = str(Path(sys.executable).parent / "visionflow")
# a small, quick champion: the cnn alone, 6 epochs (~94 % test accuracy), no GAN, no Bento
TRAIN = ["--profile", "quick", "--set", "models.rnn.enabled=false", "--set", "models.gan.enabled=false", "--set", "models.decision_fusion.enabled=false",
         "--set", "models.cnn_lstm.enabled=false", "--set", "packaging.enabled=false", "--set", "models.cnn.train.epochs=6",
         "--set", "models.cnn.hparams.widths=[16,32]"]  # fmt: skip


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "VISIONFLOW_HOME", "PREFECT_HOME")}
    return {**env, "VISIONFLOW_KEEP_IMAGES": "on"}


@pytest.fixture(scope="module")
def served_digits(tmp_path_factory):
    root = tmp_path_factory.mktemp("production")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    shutil.copy(REPO_ROOT / "params.yaml", root / "params.yaml")
    (root / ".gitignore").write_text("/.visionflow/\n/data/\n")
    out = subprocess.run([CLI, "run", *TRAIN], cwd=root, env=_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    port = free_port()
    proc = subprocess.Popen([CLI, "serve", "--port", str(port), "--poll", "1"], cwd=root, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        assert wait_http_ok(f"{base}/readyz"), "visionflow serve did not become ready"
        yield {"root": root, "base": base}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def _test_digits(root: Path) -> list[tuple[Path, str]]:
    files = sorted((p, p.parent.name) for p in (root / "data" / "test").rglob("*.png"))
    random.Random(0).shuffle(files)
    return files


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _send(base: str, images: list[bytes], n: int) -> list[dict]:
    def one(i: int) -> dict:
        r = httpx.post(f"{base}/classify", files={"image": (f"{i}.png", images[i % len(images)])}, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()

    with cf.ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(n)))


def _monitor(root: Path, *extra: str) -> str:
    out = subprocess.run([CLI, "monitor", *TRAIN, *extra], cwd=root, env=_env(), capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return out.stdout


@pytest.mark.slow
def test_page_classifies_an_uploaded_digit_in_a_real_browser(served_digits, tmp_path):
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian's chromium is not installed: `make install` installs it (apt-get install chromium)"
    path, label = next((p, c) for p, c in _test_digits(served_digits["root"]) if c == "3")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--headless=new"])
        try:
            page = browser.new_page()
            page.goto(served_digits["base"] + "/")
            page.wait_for_function("document.getElementById('model').textContent.includes('visionflow-classifier v')")
            page.set_input_files("#file", str(path))
            page.wait_for_function("document.getElementById('label').textContent.length > 0")
            assert page.inner_text("#label") == label
            assert page.locator("#bars .bar").count() == 10
            page.wait_for_selector("#overlay:not([hidden])")
            assert page.get_attribute("#overlay", "src").startswith("data:image/png;base64,")
            page.wait_for_function("document.getElementById('live').textContent.includes('classification requests served')")
            page.click("#send")  # the label shown is right: feedback says so
            page.wait_for_function("document.getElementById('feedback').textContent.includes('live accuracy')")
            assert "it was right" in page.inner_text("#feedback")
        finally:
            browser.close()


@pytest.mark.slow
def test_production_drift_starts_a_retrain_on_a_new_data_version(served_digits):
    root, base = served_digits["root"], served_digits["base"]
    digits = _test_digits(root)
    normal = [p.read_bytes() for p, _ in digits]
    _send(base, normal, 2000)
    calm = _monitor(root)
    assert "decision     : no retrain (production drift score" in calm, calm
    dvc_before = (root / "data.dvc").read_text()

    inverted = [_png(ImageOps.invert(Image.open(p).convert("L"))) for p, _ in digits]
    answers = _send(base, inverted, 2000)
    for (_, label), answer in list(zip(digits, answers))[:100]:  # a person labels 100 of them
        r = httpx.post(f"{base}/feedback", json={"request_id": answer["request_id"], "label": label})
        assert r.status_code == 200, r.text
    stirred = _monitor(root, "--set", "monitor.learn_from_feedback=true")
    assert "decision     : retrain (production drift score" in stirred and "; live accuracy" in stirred, stirred
    assert "retrained    : yes" in stirred, stirred

    # the 100 labelled inverted digits are a new data version (validated, versioned), trained on
    assert (root / "data.dvc").read_text() != dvc_before
    learned = sorted((root / "data" / "train").glob("*/feedback/*"))
    assert len(learned) == 100 and {p.parent.parent.name for p in learned} == {label for _, label in digits[:100]}
    status = subprocess.run([CLI, "data", "status"], cwd=root, env=_env(), capture_output=True, text=True)
    assert status.returncode == 0, status.stdout + status.stderr
    from mlflow import MlflowClient

    c = MlflowClient(tracking_uri=f"sqlite:///{root / '.visionflow' / 'mlflow' / 'mlflow.db'}")  # not the process-wide URI: later tests use theirs
    runs = c.search_runs([c.get_experiment_by_name("visionflow").experiment_id], filter_string="tags.retrain_reason LIKE 'production drift%'")
    assert len(runs) == 1
    # the monitor's numbers and reports sit under the first champion's run
    v1 = c.get_model_version("visionflow-classifier", "1")
    history = c.get_metric_history(v1.run_id, "prod_drift_score")
    assert len(history) == 2 and history[0].value <= 0.1 < history[1].value
    assert len(c.list_artifacts(v1.run_id, "monitoring")) == 2
