"""`retrain_flow`: the maintenance step. Ingest + validate the data, compare it with what the champion
was trained on, and run `training_pipeline` only when it is forced, or the data version changed
(`schedule.retrain_on: data_change`), or it changed AND the drift score exceeds
`schedule.drift_threshold` (`retrain_on: drift`). Unchanged data never retrains unforced. The decision and its numbers go to the
Prefect artifact and to the pipeline's MLflow run. Wiring only.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Failed

from components.config import Config
from components.data.datasets import load_dataset, load_spec_split
from components.evaluation.drift import data_stats, drift_report
from components.locking import workspace_lock
from components.tracking import mlflow_store as store
from components.workspace import Workspace
from flows.data_flow import data_flow, resolve
from flows.training_pipeline import training_pipeline


@task(name="drift-check", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=3)
def drift_task(root: str, cfg: Config, data_version: str, force: bool, trigger: str | None = None) -> dict:
    ws = Workspace.for_config(root, cfg)
    store.configure(ws, cfg.tracking.uri, cfg.tracking.experiment)
    champion = store.alias_version(store.CLASSIFIER_MODEL, store.CHAMPION)
    if champion is None:
        return {"retrain": True, "reason": "no champion yet", "metrics": {}}
    old_version = store.version_tags(store.CLASSIFIER_MODEL, champion).get("data_version")
    data_dir = ws.data_dir(cfg.data.dir)
    spec, splits = load_dataset(data_dir, cfg.data)
    new_stats = data_stats(spec, splits["train"])
    metrics: dict[str, float] = {}
    _, old_stats = store.training_reference(store.CLASSIFIER_MODEL, champion)
    report = None
    if old_stats is None:  # an older champion: treat as drifted
        get_run_logger().warning("no drift reference (data_stats.json) for champion v%s", champion)
    else:
        model, cspec = store.load_logged_model(f"models:/{store.CLASSIFIER_MODEL}/{champion}")
        new_eval = load_spec_split(data_dir, "val", cspec)
        report = drift_report(old_stats, new_stats, model, cspec, new_eval)
        metrics = report.as_metrics()
    threshold = cfg.schedule.drift_threshold
    if trigger:
        return {"retrain": True, "reason": trigger, "metrics": metrics}
    if force:
        return {"retrain": True, "reason": "forced", "metrics": metrics}
    if data_version == old_version:
        return {"retrain": False, "reason": f"data unchanged (version {data_version[:12]}, the champion's)", "metrics": metrics}
    changed = f"data version changed ({(old_version or '?')[:12]} → {data_version[:12]})"
    if cfg.schedule.retrain_on == "data_change" or report is None:
        return {"retrain": True, "reason": changed, "metrics": metrics}
    if report.score > threshold:
        return {"retrain": True, "reason": f"{changed}; drift score {report.score:.3f} > {threshold:g}", "metrics": metrics}
    return {"retrain": False, "reason": f"{changed}, but drift score {report.score:.3f} <= {threshold:g}", "metrics": metrics}


@flow(name="retrain_flow")
def retrain_flow(root: str = ".", profile: str = "default", overrides: list[str] | None = None, source: str | None = None, force: bool = False,
                 cfg: Any = None, trigger: str | None = None):  # fmt: skip
    """Holds the workspace lock for the whole pass (a scheduled run waits for a manual one).
    `trigger`: why another flow (monitor_flow) asks for a retrain — it retrains, with that reason."""
    cfg, ws = resolve(root, profile, overrides, cfg)
    with workspace_lock(ws.home, "visionflow retrain", wait=-1, on_wait=get_run_logger().warning):
        return _retrain(ws, cfg, profile, source, force, trigger)


def _retrain(ws: Workspace, cfg: Config, profile: str, source: str | None, force: bool, trigger: str | None = None):
    state = data_flow(root=str(ws.root), profile=profile, source=source, cfg=cfg, return_state=True)
    if state.is_failed():
        return Failed(message=state.message)
    data = state.result()
    decision = drift_task(str(ws.root), cfg, data.data_version, force, trigger)
    lines = "\n".join(f"| {k} | {v:.4f} |" for k, v in decision["metrics"].items())
    create_markdown_artifact(
        key="retrain-decision",
        markdown=f"## Retrain: {'yes' if decision['retrain'] else 'no'}\n\n{decision['reason']}\n\n| drift metric | value |\n|---|---|\n{lines}\n",
        description="visionflow drift check and retraining decision",
    )
    get_run_logger().info("retrain: %s (%s)", decision["retrain"], decision["reason"])
    if not decision["retrain"]:
        return {"retrained": False, "reason": decision["reason"], "metrics": decision["metrics"]}
    result = training_pipeline(
        root=str(ws.root), profile=profile, cfg=cfg, force=force or bool(trigger), retrain_reason=decision["reason"], drift=decision["metrics"]
    )
    return {"retrained": True, "reason": decision["reason"], "metrics": decision["metrics"], "parent_run_id": result.parent_run_id,
            "champion": result.champion, "decision": result.decision}  # fmt: skip
