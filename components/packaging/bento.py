"""`visionflow package`: import the registered champion (and generator) into the BentoML model store
with lineage labels, and build a Bento of `serving.service:Visionflow` with pinned dependencies.

Inside the Bento the service loads the imported models (`bento:` URIs), so it runs where the MLflow
registry is not reachable. `lock_packages: false`: BentoML's lock step needs the public index,
which an offline machine lacks; versions are pinned here from the installed set instead.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

from components.tracking import mlflow_store as store
from components.workspace import Workspace

SERVICE = "serving.service:Visionflow"
# What the service imports at run time (components.data/tracking/workspace + serving).
RUNTIME_PACKAGES = ["torch", "torchvision", "mlflow", "bentoml", "pillow", "numpy", "pydantic", "pyyaml", "pandas", "fastapi"]


def ws_code_root() -> Path:
    """The folder holding components/ and serving/ (the installed project's source)."""
    import components

    return Path(components.__file__).resolve().parent.parent


@dataclass(frozen=True)
class PackageResult:
    bento_tag: str
    model_tags: dict[str, str]
    dockerfile: Path | None
    bento_path: Path


def _labels(name: str, ver: str) -> dict[str, str]:
    mv = store.client().get_model_version(name, ver)
    tags = mv.tags or {}
    keep = ("data_version", "params_hash", "git_commit", "family", "test_accuracy", "gan_test", "task")
    return {"registered_model": name, "registered_version": ver, "run_id": mv.run_id or "", **{k: tags[k] for k in keep if k in tags}}


def import_alias(name: str, alias: str) -> tuple[str, dict[str, str]]:
    """models:/NAME@ALIAS → BentoML model store, labelled with its lineage. Returns (tag, labels)."""
    import bentoml
    import mlflow

    ver = store.alias_version(name, alias)
    if ver is None:
        raise LookupError(f"{name} has no '{alias}' alias; run `visionflow run` (or `visionflow promote`) first")
    labels = _labels(name, ver)
    info = mlflow.models.get_model_info(f"models:/{name}/{ver}")
    bento_model = bentoml.mlflow.import_model(name, model_uri=f"models:/{name}/{ver}", labels=labels, metadata=info.metadata or {})
    return str(bento_model.tag), labels


def package(ws: Workspace, *, with_generator: bool = True) -> PackageResult:
    import bentoml
    from bentoml._internal.bento.build_config import BentoEnvSchema

    model_tags: dict[str, str] = {}
    tag, labels = import_alias(store.CLASSIFIER_MODEL, store.CHAMPION)
    model_tags["classifier"] = tag
    envs = [{"name": "VISIONFLOW_MODEL_URI", "value": f"bento:{tag}"}, {"name": "VISIONFLOW_GENERATOR_URI", "value": "none"}]
    if with_generator and store.alias_version(store.GENERATOR_MODEL, store.GENERATOR):
        gtag, _ = import_alias(store.GENERATOR_MODEL, store.GENERATOR)
        model_tags["generator"] = gtag
        envs[1] = {"name": "VISIONFLOW_GENERATOR_URI", "value": f"bento:{gtag}"}
    # Build from a staged copy of the code plus serving/bento_defaults.json naming the imported
    # models, so the Bento serves them wherever it runs (env vars still override).
    ctx = ws.home / "bento-build"
    shutil.rmtree(ctx, ignore_errors=True)
    for part in ("components", "serving"):
        shutil.copytree(ws_code_root() / part, ctx / part, ignore=shutil.ignore_patterns("__pycache__"))
    (ctx / "flows").mkdir(parents=True)
    (ctx / "flows" / "__init__.py").write_text("")
    (ctx / "serving" / "bento_defaults.json").write_text(json.dumps({e["name"]: e["value"] for e in envs}, indent=2))
    bento = bentoml.bentos.build(
        SERVICE,
        name="visionflow",
        labels={k: v for k, v in labels.items() if k != "task"},
        description="visionflow: the champion image classifier (and generator), served",
        include=["components/**/*.py", "serving/**/*.py", "serving/bento_defaults.json", "flows/__init__.py"],
        envs=[BentoEnvSchema(name=e["name"], value=e["value"]) for e in envs],
        python={"packages": [f"{p}=={version(p)}" for p in RUNTIME_PACKAGES], "lock_packages": False},
        models=list(model_tags.values()),
        build_ctx=str(ctx),
    )
    bento_path = Path(bento.path)
    dockerfile = next(bento_path.glob("env/docker/Dockerfile"), None)
    kept = None
    if dockerfile is not None:  # keep the generated Dockerfile next to the reports
        kept = ws.reports_dir / "bento" / "Dockerfile"
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(dockerfile, kept)
    return PackageResult(str(bento.tag), model_tags, kept, bento_path)
