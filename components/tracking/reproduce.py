"""`visionflow reproduce RUN_ID`: a past pipeline run, read back from its MLflow record (the resolved
config, the data version, the code's commit and version), and its metrics compared with a re-run."""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from components.config import Config
from components.errors import VisionflowError
from components.tracking import mlflow_store as store

COMPARED = ("accuracy", "macro_f1", "gan_test", "gan_train")  # deterministic on CPU with the same seeds (not timings)


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    config: Config
    data_version: str
    git_commit: str | None
    code_version: str | None
    profile: str
    metrics: dict[str, dict[str, float]]  # model key → test metrics, as the run logged them


class ReproduceError(VisionflowError, LookupError):
    pass


def load_record(run_id: str) -> RunRecord:
    c = store.client()
    try:
        run = c.get_run(run_id)
    except Exception as exc:  # noqa: BLE001 - MLflow says "not found" many ways
        raise ReproduceError(f"run {run_id} not found in {os.environ.get('MLFLOW_TRACKING_URI')}: {str(exc).splitlines()[0][:200]}") from None
    tags = run.data.tags
    if "data_version" not in tags or "mlflow.parentRunId" in tags:
        raise ReproduceError(f"run {run_id} is not a pipeline run (a parent run with a data_version tag); pick one from `visionflow ui`")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            raw = json.loads(Path(c.download_artifacts(run_id, "config.json", tmp)).read_text())
        except Exception:  # noqa: BLE001
            raise ReproduceError(f"run {run_id} has no config.json artifact (made before reproduce existed); it cannot be re-run exactly") from None
    metrics: dict[str, dict[str, float]] = {}
    for child in c.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'"):
        key = child.info.run_name
        m = child.data.metrics
        vals = {k.removeprefix("test_"): v for k, v in m.items() if k.removeprefix("test_") in COMPARED and (k.startswith("test_") or k.startswith("gan_"))}
        if vals:
            metrics[key] = vals
    return RunRecord(
        run_id,
        Config.model_validate(raw),
        tags["data_version"],
        tags.get("git_commit"),
        tags.get("code_version"),
        tags.get("profile", raw.get("profile", "default")),
        metrics,
    )


@dataclass(frozen=True)
class MetricComparison:
    model: str
    metric: str
    original: float | None
    reproduced: float | None

    @property
    def equal(self) -> bool:
        return self.original is not None and self.reproduced is not None and math.isclose(self.original, self.reproduced, rel_tol=0, abs_tol=1e-9)


def compare(original: dict[str, dict[str, float]], reproduced: dict[str, dict[str, float]]) -> list[MetricComparison]:
    rows = []
    for model in sorted(set(original) | set(reproduced)):
        o, r = original.get(model, {}), reproduced.get(model, {})
        for metric in COMPARED:
            if metric in o or metric in r:
                rows.append(MetricComparison(model, metric, o.get(metric), r.get(metric)))
    return rows
