"""MLflow 3: where runs go, what each run records, and the model registry (aliases, never stages).

Embedded default: a sqlite backend and a local artifact root inside the workspace. Set
`MLFLOW_TRACKING_URI` (or `tracking.uri` in params.yaml) to use any MLflow server instead.

Runs are addressed by id through `MlflowClient` (no global "active run"), so tasks in threads or
other processes can log to the right run. Nothing is registered until a pipeline run has trained and
evaluated everything (`register_version`), so a failed run leaves no half-written registry entry.
"""

from __future__ import annotations

import getpass
import json
import os
import time
from collections.abc import Iterable
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from components.errors import VisionflowError
from components.workspace import Workspace

EXPERIMENT = "visionflow"
CLASSIFIER_MODEL = "visionflow-classifier"  # the one registered model that serves classification
GENERATOR_MODEL = "visionflow-gan"
CHAMPION, CHALLENGER, GENERATOR = "champion", "challenger", "generator"


def registered_name(key: str) -> str:
    return f"visionflow-{key.replace('_', '-')}"


def _quiet_mlflow() -> None:
    import logging

    # Pickle-format and system-metrics chatter: the format choice is documented in log_model.
    for name in ("mlflow.pytorch", "mlflow.system_metrics", "mlflow.store.db.utils", "mlflow.models.model"):
        logging.getLogger(name).setLevel(logging.WARNING if "pytorch" not in name else logging.ERROR)


def client():
    from mlflow import MlflowClient

    return MlflowClient()


def default_uri(ws: Workspace) -> str:
    return f"sqlite:///{ws.mlflow_dir / 'mlflow.db'}"


def configure(ws: Workspace, uri: str | None = None, experiment: str = EXPERIMENT) -> tuple[str, str]:
    """Point MLflow at `uri` (env, config, or the workspace's sqlite store); returns (uri, experiment id)."""
    import mlflow

    _quiet_mlflow()
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or default_uri(ws)
    if uri.startswith("sqlite:"):
        ws.mlflow_dir.mkdir(parents=True, exist_ok=True)
    os.environ["MLFLOW_TRACKING_URI"] = uri  # workers and subprocesses log to the same store
    mlflow.set_tracking_uri(uri)
    c = client()
    exp = c.get_experiment_by_name(experiment)
    if exp is not None:
        return uri, exp.experiment_id
    # A local store needs an explicit artifact root, else artifacts land in ./mlruns of the cwd.
    location = (ws.mlflow_dir / "artifacts").as_uri() if uri.startswith("sqlite:") else None
    try:
        return uri, c.create_experiment(experiment, artifact_location=location)
    except Exception:  # created concurrently by another process
        return uri, c.get_experiment_by_name(experiment).experiment_id


PROCESS_TAG = "visionflow.process"


def process_tag() -> dict[str, str]:
    """host:pid of the process that runs a pipeline (for detecting runs left RUNNING by a kill -9)."""
    import socket

    return {PROCESS_TAG: f"{socket.gethostname()}:{os.getpid()}"}


def mark_stale_runs(experiment_id: str) -> list[str]:
    """Runs left RUNNING by a process of this host that no longer exists (kill -9, power loss) are
    marked KILLED, with their nested runs. Called under the workspace lock, before a new run starts."""
    import socket

    from components.process import pid_alive

    c = client()
    stale: list[str] = []
    for run in c.search_runs([experiment_id], "attributes.status = 'RUNNING'", max_results=500):
        host, _, pid = run.data.tags.get(PROCESS_TAG, "").rpartition(":")
        if host != socket.gethostname() or not pid.isdigit() or pid_alive(int(pid)):
            continue
        stale.append(run.info.run_id)
        c.set_tag(run.info.run_id, "killed_reason", "its process ended without finishing the run (killed)")
        end_run(run.info.run_id, ok=False, killed=True)  # with its nested runs
    return stale


def use_tracking_uri(uri: str) -> None:
    """In a worker process (a Dask worker on another machine, say): log to the flow's store."""
    import mlflow

    _quiet_mlflow()
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, tuple, dict)) else str(v)
    return out


def start_run(experiment_id: str, name: str, tags: dict[str, str], params: dict[str, str] | None = None, parent_id: str | None = None) -> str:
    from mlflow.entities import Param

    tags = {k: str(v) for k, v in tags.items() if v is not None}
    if parent_id:
        tags["mlflow.parentRunId"] = parent_id
    run = client().create_run(experiment_id, run_name=name, tags=tags)
    if params:
        items = [Param(k, v[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            client().log_batch(run.info.run_id, params=items[i : i + 100])
    return run.info.run_id


def end_run(run_id: str, ok: bool, *, killed: bool = False) -> None:
    """FINISHED, FAILED, or KILLED (stopped by Ctrl-C / SIGTERM), for the run and its nested runs."""
    c = client()
    status = "FINISHED" if ok else "KILLED" if killed else "FAILED"
    exp = c.get_run(run_id).info.experiment_id
    for child in c.search_runs([exp], f"tags.mlflow.parentRunId = '{run_id}' and attributes.status = 'RUNNING'", max_results=1000):
        c.set_terminated(child.info.run_id, status)
    c.set_terminated(run_id, status)


@contextmanager
def active_run(run_id: str, **kwargs):
    """`mlflow.start_run(run_id=...)` for MLflow's fluent-only APIs (log_model, log_input, system
    metrics) without ending the run on exit: a run's final status is the pipeline's to set (end_run),
    so a run that is killed stays RUNNING until `mark_stale_runs` says KILLED, never FINISHED early."""
    import mlflow

    mlflow.start_run(run_id=run_id, **kwargs)
    try:
        yield
    finally:
        mlflow.end_run(status="RUNNING")


class EpochLogger:
    """The training engine's per-epoch callback: every numeric metric, stepped by epoch."""

    def __init__(self, run_id: str, prefix: str = ""):
        self.run_id, self.prefix = run_id, prefix

    def __call__(self, epoch: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(f"{self.prefix}{k}", float(v), now, epoch) for k, v in metrics.items() if k != "epoch" and isinstance(v, (int, float))]
        client().log_batch(self.run_id, metrics=batch)


def log_metrics(run_id: str, metrics: dict[str, float]) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    client().log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items() if v is not None])


def log_artifacts(run_id: str, paths: Iterable[Path], artifact_path: str | None = None) -> None:
    for p in paths:
        if Path(p).is_dir():
            client().log_artifacts(run_id, str(p), artifact_path)
        elif Path(p).exists():
            client().log_artifact(run_id, str(p), artifact_path)


def log_dataset(run_id: str, manifest_csv: Path, data_version: str, data_dir: Path) -> None:
    """The dataset as an MLflow dataset input, its digest the DVC md5 (the lineage key)."""
    import warnings

    import mlflow
    import pandas as pd

    df = pd.read_csv(manifest_csv, usecols=["path", "label", "class_name", "split", "sha256"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "source can be interpreted in multiple ways": it is a local folder
        ds = mlflow.data.from_pandas(df, source=str(data_dir), targets="label", name=f"data@{data_version[:8]}", digest=data_version[:32])
        with active_run(run_id):
            mlflow.log_input(ds, context="training")


def pip_requirements() -> list[str]:
    from importlib.metadata import version

    return [f"torch=={version('torch')}", f"torchvision=={version('torchvision')}", f"numpy=={version('numpy')}", f"visionflow=={version('visionflow')}"]


def log_model(run_id: str, model, input_example, spec_json: str, *, extra_metadata: dict | None = None) -> str:
    """`log_model(name="model")` with a signature, an input example and explicit requirements.

    Pickle format: pt2 (torch.export) freezes shapes and cannot trace the GAN's sampling; pickle
    loads our classes back, so load only from a registry you trust. Returns the model URI.
    """
    import mlflow
    import numpy as np
    import torch
    from mlflow.models import infer_signature

    model = model.cpu().eval()
    with torch.no_grad():
        output = model(torch.as_tensor(input_example)).float().numpy()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # integer-column hint: the GAN's input is class labels
        signature = infer_signature(np.asarray(input_example), output)
    metadata = {"visionflow_spec": json.loads(spec_json), **(extra_metadata or {})}
    with active_run(run_id):
        info = mlflow.pytorch.log_model(
            model, name="model", signature=signature, input_example=np.asarray(input_example),
            pip_requirements=pip_requirements(), serialization_format="pickle", metadata=metadata,
        )  # fmt: skip
    return info.model_uri


class RegistryError(VisionflowError, RuntimeError):
    """The registry could not answer (an outage, a timeout, a refused request): never read as "no alias"."""


def _is_not_found(exc: Exception) -> bool:
    from mlflow.exceptions import MlflowException

    if not isinstance(exc, MlflowException):
        return False
    # RESOURCE_DOES_NOT_EXIST: no such model/version; a missing alias on an existing model is
    # INVALID_PARAMETER_VALUE "... alias ... not found" on the sqlite store and on a server.
    return exc.error_code == "RESOURCE_DOES_NOT_EXIST" or (exc.error_code == "INVALID_PARAMETER_VALUE" and "not found" in str(exc).lower())


def _registry_call(what: str, fn, *args, **kwargs):
    """One registry call. MLflow's HTTP client already retries with backoff (bounded by
    MLFLOW_HTTP_REQUEST_MAX_RETRIES, set in workspace.environment()); what still fails is an error."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:
        if _is_not_found(exc):
            raise LookupError(f"{what}: not found") from exc
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
        raise RegistryError(f"registry at {os.environ.get('MLFLOW_TRACKING_URI')} failed on {what}: {first}") from exc


def load_logged_model(uri: str, map_location: str = "cpu"):
    """The one way to load a logged/registered model with its preprocessing spec: `models:/...` or
    `runs:/...` URIs, or a local MLflow model folder (inside a Bento). Returns (model in eval mode, spec)."""
    import mlflow

    from components.data.datasets import DatasetSpec

    model = mlflow.pytorch.load_model(uri, map_location=map_location).eval()
    meta = (mlflow.models.Model.load(uri) if Path(uri).exists() else mlflow.models.get_model_info(uri)).metadata or {}
    if "visionflow_spec" not in meta:
        raise ValueError(f"{uri} has no visionflow_spec metadata: it was not logged by visionflow")
    return model, DatasetSpec.from_json(json.dumps(meta["visionflow_spec"]))


def register_version(model_uri: str, name: str, tags: dict[str, Any]) -> str:
    """Registers `model_uri` as a version of `name`, idempotently: a retry (or a re-run of the same
    step) finds the version it already made (same run and logged model) instead of adding one."""
    tags = {k: str(v) for k, v in tags.items() if v is not None}
    run_id = tags.get("run_id")
    if run_id:
        found = _registry_call(f"search versions of {name}", client().search_model_versions, f"name='{name}' and run_id='{run_id}'")
        for mv in found:
            if (mv.tags or {}).get("logged_model_uri") == model_uri:
                return str(mv.version)
    import mlflow

    mv = _registry_call(f"register {name}", mlflow.register_model, model_uri, name, tags={**tags, "logged_model_uri": model_uri})
    return str(mv.version)


def alias_version(name: str, alias: str) -> str | None:
    """The version `name@alias` points at; None only when the registry says there is none."""
    try:
        return str(_registry_call(f"look up {name}@{alias}", client().get_model_version_by_alias, name, alias).version)
    except LookupError:
        return None


def training_reference(name: str, version: str) -> tuple[str | None, dict | None]:
    """(the version's run id, the data_stats.json its pipeline logged — None for a champion without one)."""
    import json
    import tempfile
    from pathlib import Path

    c = client()
    mv = _registry_call(f"read {name} v{version}", c.get_model_version, name, version)
    if not mv.run_id:
        return None, None
    parent = c.get_run(mv.run_id).data.tags.get("mlflow.parentRunId") or mv.run_id
    try:
        with tempfile.TemporaryDirectory() as tmp:
            return mv.run_id, json.loads(Path(c.download_artifacts(parent, "data_stats.json", tmp)).read_text())
    except Exception:  # noqa: BLE001 — no reference logged (an older champion): the caller says so
        return mv.run_id, None


def version_tags(name: str, version: str) -> dict[str, str]:
    return dict(_registry_call(f"read {name} v{version}", client().get_model_version, name, version).tags or {})


def set_alias(name: str, alias: str, version: str, *, manual: bool = False, reason: str = "") -> None:
    c = client()
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    # tags first, the alias last: a failure in between leaves the alias where it was
    tags = {f"{alias}_since": stamp}
    if manual:
        tags.update(promotion="manual", promoted_by=getpass.getuser(), promoted_at=stamp)
    if reason:
        tags[f"{alias}_reason"] = reason[:5000]
    for k, v in tags.items():
        _registry_call(f"tag {name} v{version}", c.set_model_version_tag, name, version, k, v)
    _registry_call(f"set {name}@{alias}", c.set_registered_model_alias, name, alias, version)


class PromotionError(VisionflowError, ValueError):
    pass


def promote(name: str, version: str) -> str:
    """Moves `champion` by hand (to CLASSIFIER_MODEL); refuses unevaluated or unvalidated versions.

    A version of a family model (e.g. visionflow-cnn) is first registered into the classifier model.
    Returns the classifier-model version that became champion.
    """
    c = client()
    try:
        mv = _registry_call(f"read {name} v{version}", c.get_model_version, name, str(version))
    except LookupError:
        raise PromotionError(f"{name} version {version} not found in the registry at {os.environ.get('MLFLOW_TRACKING_URI')}") from None
    tags = mv.tags or {}
    if tags.get("evaluated") != "true" or "test_accuracy" not in tags:
        raise PromotionError(f"{name} v{version} has no evaluation (tag evaluated=true); evaluate it with a pipeline run first")
    if tags.get("data_validated") != "true":
        raise PromotionError(f"{name} v{version}: its data version {tags.get('data_version')} did not pass validation")
    if tags.get("task", "classification") != "classification":
        raise PromotionError(f"{name} v{version} is a {tags.get('task')} model; only classifiers can be champion")
    target_version = str(version)
    if name != CLASSIFIER_MODEL:
        target_version = register_version(mv.source, CLASSIFIER_MODEL, {**tags, "registered_from": f"{name}/{version}"})
    set_alias(CLASSIFIER_MODEL, CHAMPION, target_version, manual=True, reason=f"manual promotion of {name} v{version}")
    return target_version
