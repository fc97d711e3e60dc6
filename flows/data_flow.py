"""`data_flow`: ingest to staging → validate (GX) → version (DVC). Wiring only.

Only small values cross task boundaries (paths, md5s, summaries). A dataset that fails validation is
left in `.visionflow/staging/rejected/` for inspection; `data/` and `data.dvc` stay as they were.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Failed

from components.config import Config, load_config
from components.data import ingest as ingest_mod
from components.data import validation, versioning
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
    result = ingest_mod.ingest(
        source, Path(staging), cfg.data.split, max_pixels=cfg.data.max_pixels, progress=progress
    )
    get_run_logger().info("ingested %d images, %d classes in %.1fs", result.n_images, len(result.classes), result.seconds)
    return {"n_images": result.n_images, "classes": result.classes, "seconds": result.seconds}


@task(name="validate", cache_policy=NO_CACHE)  # no retries: bad data stays bad
def validate_task(data_dir: str, cfg: Config, docs_dir: str, report_file: str) -> validation.ValidationReport:
    report = validation.validate(
        Path(data_dir), cfg.validation, cfg.data.split, docs_dir=Path(docs_dir), max_pixels=cfg.data.max_pixels
    )
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
def version_task(root: str, staged: str, data_name: str, remote_url: str | None) -> str:
    ws = Workspace.at(root)
    versioning.ensure_repo(ws, remote_url)
    if Path(staged).exists():
        versioning.install_dataset(ws, Path(staged), data_name)
    return versioning.add_and_push(ws, data_name)


@flow(name="data_flow", log_prints=True)
def data_flow(
    root: str = ".",
    profile: str = "default",
    overrides: list[str] | None = None,
    source: str | None = None,
    progress: bool = False,
):
    """Ingest → validate → version. Returns a DataFlowResult, or a Failed state naming what was wrong."""
    ws = Workspace.at(root)
    cfg = load_config(ws.root / "params.yaml", profile, overrides or [])
    staging = ws.staging_dir / "incoming"
    facts = ingest_task(source or cfg.data.source, str(staging), cfg, progress)
    report = validate_task(
        str(staging), cfg, str(ws.data_docs_dir), str(ws.reports_dir / "validation.json")
    )
    if not report.success:
        rejected = ws.staging_dir / "rejected"
        shutil.rmtree(rejected, ignore_errors=True)
        staging.rename(rejected)
        lines = [report.summary().replace(str(staging), str(rejected))]
        lines += [f"  - {f.line()}" for f in report.failures]
        lines.append(f"  nothing was versioned; data/ is unchanged. Inspect {rejected}, fix the source, re-run.")
        return Failed(message="\n".join(lines))
    version = version_task(str(ws.root), str(staging), cfg.data.dir, cfg.data.dvc_remote)
    return DataFlowResult(
        data_version=version,
        data_dir=str(ws.data_dir(cfg.data.dir)),
        n_images=facts["n_images"],
        classes=facts["classes"],
        data_docs=str(report.data_docs) if report.data_docs else None,
        summary=report.summary().replace(str(staging), str(ws.data_dir(cfg.data.dir))),
        ingest_seconds=facts["seconds"],
    )
