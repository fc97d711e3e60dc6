"""`rollout_flow`: the automatic decision of a rollout (components/delivery/rollout.py). Read the
inference log's window since the rollout started → decide → record → apply (promote, roll back, or
keep collecting). Scheduled next to `monitor_flow` by `visionflow schedule`; `visionflow rollout
evaluate` runs it by hand. Wiring only.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from components.config import Config
from components.delivery import rollout
from components.workspace import Workspace
from flows.data_flow import resolve


@task(name="rollout-decide", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=3)
def rollout_task(root: str, cfg: Config, act: bool = True) -> dict:
    return rollout.evaluate(Workspace.for_config(root, cfg), cfg, act=act)


@flow(name="rollout_flow")
def rollout_flow(root: str = ".", profile: str = "default", overrides: list[str] | None = None, cfg: Any = None, act: bool = True):
    """Decide the rollout under way from live evidence, and act on it (`act=False`: decide only)."""
    cfg, ws = resolve(root, profile, overrides, cfg)
    res = rollout_task(str(ws.root), cfg, act)
    if res["verdict"] is not None:
        st = res["started_state"]
        lines = "\n".join(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in res["numbers"].items())
        create_markdown_artifact(
            key="rollout-decision",
            markdown=f"## Rollout of {st['model_name']} v{st['version']} ({st['stage']}): {res['verdict']}\n\n{res['reason']}\n\n"
            f"| number | value |\n|---|---|\n{lines}\n",
            description="visionflow rollout decision",
        )
    get_run_logger().warning("rollout: %s (%s)", res["verdict"] or "nothing to decide", res["reason"])
    return res
