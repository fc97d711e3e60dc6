"""`data_flow`: ingest to staging → validate (GX) → version (DVC). Wiring only.

Only small values cross task boundaries (paths, md5s, summaries). A dataset that fails validation is
left in `.visionflow/staging/rejected/` for inspection; `data/` and `data.dvc` stay as they were.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Failed

from components.config import Config, load_config
from components.data import ingest as ingest_mod
from components.data import validation, versioning
from components.locking import workspace_lock
from components.workspace import Workspace


@dataclass(frozen=True)
class DataFlowResult:
    data_version: str
    data_dir: str
    n_images: int
    classes: list[str]
    data_docs: str | None
    summary: str
    ingest_seconds: float


@task(name="ingest", cache_policy=NO_CACHE)
def ingest_task(source: str, staging: str, cfg: Config, progress: bool) -> dict:
    result = ingest_mod.ingest(source, Path(staging), cfg.data.split, max_pixels=cfg.data.max_pixels, progress=progress, channels=cfg.data.channels)
    get_run_logger().info("ingested %s in %.1fs", result.summary(), result.seconds)
    return {"n_images": result.n_images, "classes": result.classes, "seconds": result.seconds, "summary": result.summary(), "skipped": result.skipped or []}


@task(name="validate", cache_policy=NO_CACHE)  # no retries: bad data stays bad
def validate_task(data_dir: str, cfg: Config, docs_dir: str, report_file: str) -> validation.ValidationReport:
    report = validation.validate(Path(data_dir), cfg.validation, cfg.data.split, docs_dir=Path(docs_dir), max_pixels=cfg.data.max_pixels)
    Path(report_file).parent.mkdir(parents=True, exist_ok=True)
    Path(report_file).write_text(
        json.dumps(
            {
                "success": report.success,
                "summary": report.summary(),
                "failures": [f.__dict__ for f in report.failures],
                "data_docs": str(report.data_docs) if report.data_docs else None,
            },
            indent=2,
        )
    )
    return report


@task(name="version", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)  # I/O: a retry can help
def version_task(root: str, staged: str, data_name: str, remote_url: str | None, home: str) -> str:
    ws = Workspace.at(root, home)
    versioning.ensure_repo(ws, remote_url)
    if Path(staged).exists():
        versioning.install_dataset(ws, Path(staged), data_name)
    return versioning.add_and_push(ws, data_name)


def resolve(root: str, profile: str, overrides: list[str] | None, cfg: Config | None) -> tuple[Config, Workspace]:
    """The flows' one config: the caller's resolved Config, or params.yaml + profile + overrides once."""
    if isinstance(cfg, dict):  # a deployment's JSON parameters
        cfg = Config.model_validate(cfg)
    cfg = cfg or load_config(Path(root).resolve() / "params.yaml", profile, overrides or [])
    return cfg, Workspace.for_config(root, cfg)


@flow(name="data_flow", log_prints=True)
def data_flow(
    root: str = ".",
    profile: str = "default",
    overrides: list[str] | None = None,
    source: str | None = None,
    progress: bool = False,
    cfg: Any = None,
):
    """Ingest → validate → version. Returns a DataFlowResult, or a Failed state naming what was wrong.

    Holds the workspace lock (one writer at a time); the staging folder is this run's own."""
    cfg, ws = resolve(root, profile, overrides, cfg)
    with workspace_lock(ws.home, "visionflow ingest", wait=-1, on_wait=get_run_logger().warning):
        return _data_flow(ws, cfg, source, progress)


def _data_flow(ws: Workspace, cfg: Config, source: str | None, progress: bool):
    staging = ws.staging_dir / f"incoming-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        facts = ingest_task(source or cfg.data.source, str(staging), cfg, progress)
        report = validate_task(str(staging), cfg, str(ws.data_docs_dir), str(ws.reports_dir / "validation.json"))
        if not report.success:
            rejected = ws.staging_dir / "rejected"
            shutil.rmtree(rejected, ignore_errors=True)
            staging.rename(rejected)
            lines = [report.summary().replace(str(staging), str(rejected))]
            lines += [f"  - {f.line()}" for f in report.failures]
            lines.append(f"  nothing was versioned; data/ is unchanged. Inspect {rejected}, fix the source, re-run.")
            return Failed(message="\n".join(lines))
        version = version_task(str(ws.root), str(staging), cfg.data.dir, cfg.data.dvc_remote, str(ws.home))
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # a crash or Ctrl-C leaves no staging behind
    return DataFlowResult(
        data_version=version,
        data_dir=str(ws.data_dir(cfg.data.dir)),
        n_images=facts["n_images"],
        classes=facts["classes"],
        data_docs=str(report.data_docs) if report.data_docs else None,
        summary=report.summary().replace(str(staging), str(ws.data_dir(cfg.data.dir))) + f"\ningested     : {facts['summary']}",
        ingest_seconds=facts["seconds"],
    )
