"""`monitor_flow`: the maintenance loop on what the champion serves. Read the inference log's window,
compare it with the champion's training data (components/monitoring/production.py), write the
report (HTML, also logged under the champion's MLflow run) and record the decision; when production
drift passes `schedule.drift_threshold` or live accuracy falls below `monitor.live_accuracy_floor`,
start `retrain_flow` with that reason — after, with `monitor.learn_from_feedback`, turning the
labelled, kept images into the source of a new data version (ingest → GX → DVC, as any data).
Wiring only.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Failed

from components.config import Config
from components.locking import workspace_lock
from components.monitoring.inference_log import InferenceLog
from components.monitoring.production import decide, feedback_source, write_report
from components.tracking import mlflow_store as store
from components.workspace import Workspace
from flows.data_flow import resolve
from flows.retrain import retrain_flow


@task(name="production-drift", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=3)
def monitor_task(root: str, cfg: Config, window_hours: float | None = None) -> dict:
    ws = Workspace.for_config(root, cfg)
    store.configure(ws, cfg.tracking.uri, cfg.tracking.experiment)
    champion = store.alias_version(store.CLASSIFIER_MODEL, store.CHAMPION)
    if champion is None:
        return {"retrain": False, "reason": "no champion is serving yet", "metrics": {}, "report": None}
    run_id, reference = store.training_reference(store.CLASSIFIER_MODEL, champion)
    log = InferenceLog(ws.inference_log)
    try:
        now = time.time()
        since = max(now - 3600 * (window_hours or cfg.monitor.window_hours), log.last_retrain())
        rows = log.rows(since=since, model_name=store.CLASSIFIER_MODEL, model_version=champion)
        classes = log.classes(store.CLASSIFIER_MODEL, champion) or (reference or {}).get("classes") or []
        m = cfg.monitor
        decision = decide(reference, rows, classes, model_name=store.CLASSIFIER_MODEL, model_version=champion, since=since,
                          threshold=cfg.schedule.drift_threshold, min_requests=m.min_requests, accuracy_floor=m.live_accuracy_floor,
                          min_feedback=m.min_feedback)  # fmt: skip
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))
        report = write_report(ws.reports_dir / "monitor" / f"monitor-{stamp}.html", decision, reference, rows, classes)
        if run_id:  # beside the champion's own evaluation in the MLflow UI
            c = store.client()
            c.log_artifact(run_id, str(report), f"monitoring/{stamp}")
            for key, value in decision.as_metrics().items():
                c.log_metric(run_id, key, value, timestamp=int(now * 1000), step=int(now))
            c.set_tag(run_id, "monitor_last_decision", f"{'retrain' if decision.retrain else 'no retrain'}: {decision.reason}"[:5000])
        will_retrain = decision.retrain and cfg.monitor.retrain
        log.record_decision({"ts": now, "model_name": store.CLASSIFIER_MODEL, "model_version": champion, "n": decision.n,
                             "score": decision.drift.score if decision.drift else None, "live_accuracy": decision.live_accuracy,
                             "retrain": int(will_retrain), "reason": decision.reason, "report": str(report)})  # fmt: skip
    finally:
        log.close()
    return {**decision.as_dict(), "retrain": will_retrain, "needs_retrain": decision.retrain, "report": str(report)}


@task(name="feedback-to-data", cache_policy=NO_CACHE)
def feedback_source_task(root: str, cfg: Config) -> dict:
    ws = Workspace.for_config(root, cfg)
    log = InferenceLog(ws.inference_log)
    try:
        labelled = log.labelled_images()
    finally:
        log.close()
    out = ws.staging_dir / f"feedback-{os.getpid()}-{uuid.uuid4().hex[:8]}" / "with-feedback"
    added = feedback_source(ws.data_dir(cfg.data.dir), ws.inference_log.parent, labelled, out)
    return {"source": str(out), "added": added}


def verdict(decision: dict) -> str:
    if decision["retrain"]:
        return "retrain"
    return "retrain needed, not started (monitor.retrain is off)" if decision.get("needs_retrain") else "no retrain"


@flow(name="monitor_flow")
def monitor_flow(root: str = ".", profile: str = "default", overrides: list[str] | None = None, cfg: Any = None, window_hours: float | None = None):
    cfg, ws = resolve(root, profile, overrides, cfg)
    logger = get_run_logger()
    decision = monitor_task(str(ws.root), cfg, window_hours)
    lines = "\n".join(f"| {k} | {v:.4f} |" for k, v in decision["metrics"].items())
    create_markdown_artifact(
        key="monitor-decision",
        markdown=f"## Production monitor: {verdict(decision)}\n\n{decision['reason']}\n\n"
        f"report: {decision['report']}\n\n| metric | value |\n|---|---|\n{lines}\n",
        description="visionflow production drift check",
    )
    logger.warning("monitor: %s (%s)", verdict(decision), decision["reason"])
    if not decision["retrain"]:
        return {**decision, "retrained": False}
    source = None
    with workspace_lock(ws.home, "visionflow monitor", wait=-1, on_wait=logger.warning):  # data/ must not move under us
        try:
            if cfg.monitor.learn_from_feedback:
                fb = feedback_source_task(str(ws.root), cfg)
                logger.warning("learn from feedback: %d labelled image(s) join the training split", fb["added"])
                source = fb["source"] if fb["added"] else None
            state = retrain_flow(root=str(ws.root), profile=profile, cfg=cfg, source=source, trigger=decision["reason"], return_state=True)
        finally:
            if source:
                shutil.rmtree(os.path.dirname(source), ignore_errors=True)
    if state.is_failed():
        return Failed(message=f"monitor: retrain after '{decision['reason']}' failed: {state.message}")
    return {**decision, "retrained": True, "retrain_result": state.result()}
