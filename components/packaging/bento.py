"""`visionflow package`: import the registered champion (and generator) into the BentoML model store
with lineage labels, and build a Bento of `serving.service:Visionflow` with pinned dependencies.

Inside the Bento the service loads the imported models (`bento:` URIs), so it runs where the MLflow
registry is not reachable. `lock_packages: false`: BentoML's lock step needs the public index,
which an offline machine lacks; versions are pinned here from the installed set instead.

Two flavours: `full` imports the logged PyTorch model (every endpoint); `slim` imports its ONNX
export (`<name>-onnx` in the BentoML store, after a parity check on the test split) and runs on
onnxruntime without torch, mlflow or the generator (/explain and /generate answer 501 there).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

from components.errors import VisionflowError
from components.tracking import mlflow_store as store
from components.workspace import Workspace

SERVICE = "serving.service:Visionflow"
FLAVOURS = ("slim", "full")
# What the service imports at run time in each flavour (components.data/tracking/workspace + serving).
RUNTIME_PACKAGES = {
    "full": ["torch", "torchvision", "mlflow", "bentoml", "pillow", "numpy", "pydantic", "pydantic-settings", "pyyaml", "pandas", "fastapi"],
    "slim": ["onnxruntime", "bentoml", "pillow", "numpy", "pydantic", "pydantic-settings", "pyyaml", "fastapi"],
}


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
    flavour: str = "full"
    classifier: tuple[str, str] = ("", "")  # (registered name, version) the Bento serves
    lineage: dict[str, str] | None = field(default=None, hash=False)
    onnx: dict[str, str] | None = field(default=None, hash=False)  # opset, exporter, parity


def _labels(name: str, ver: str) -> dict[str, str]:
    mv = store.client().get_model_version(name, ver)
    tags = mv.tags or {}
    keep = ("data_version", "params_hash", "git_commit", "family", "test_accuracy", "gan_test", "task")
    return {"registered_model": name, "registered_version": ver, "run_id": mv.run_id or "", **{k: tags[k] for k in keep if k in tags}}


def import_version(name: str, ver: str) -> tuple[str, dict[str, str]]:
    """models:/NAME/VERSION → BentoML model store, labelled with its lineage. Returns (tag, labels)."""
    import bentoml
    import mlflow

    labels = _labels(name, ver)
    info = mlflow.models.get_model_info(f"models:/{name}/{ver}")
    bento_model = bentoml.mlflow.import_model(name, model_uri=f"models:/{name}/{ver}", labels=labels, metadata=info.metadata or {})
    return str(bento_model.tag), labels


def import_onnx_version(ws: Workspace, name: str, ver: str, test_x=None) -> tuple[str, dict[str, str], dict[str, str]]:
    """models:/NAME/VERSION → its ONNX export in the BentoML store (`NAME-onnx`), after checking on the
    test split on disk that onnxruntime gives the same label for every image and probabilities
    within 1e-4. Returns (tag, labels, onnx facts); the facts are also tagged on the version."""
    import bentoml

    from components.data.datasets import load_spec_split
    from components.data.preprocess import normalize_batch
    from components.packaging.onnx_export import ExportError, check_parity, write_onnx_dir
    from components.tracking.mlflow_store import load_logged_model

    labels = _labels(name, ver)
    if labels.get("task") == "generation":
        raise ExportError(f"{name} v{ver} is a generator: the slim image serves classifiers only; use --flavour full")
    model, spec = load_logged_model(f"models:/{name}/{ver}")
    if test_x is None:  # the test split on disk, converted as serving converts it
        test_dir = ws.data_dir() / "test"
        if not test_dir.is_dir():
            raise PackagingError(f"the ONNX parity check needs the test split in {test_dir}: run `visionflow data pull` (or `visionflow run`) first")
        test = load_spec_split(ws.data_dir(), "test", spec)
        test_x = normalize_batch(test.x.numpy().astype("float32") / 255.0, spec)
    x = test_x
    with bentoml.models.create(f"{name}-onnx", labels={**labels, "runtime": "onnxruntime"}, metadata={"visionflow_spec": json.loads(spec.to_json())}) as bm:
        export = write_onnx_dir(model, spec, Path(bm.path))
        parity = check_parity(model, export.path, x)
        if not parity.passed:
            raise PackagingError(f"ONNX export of {name} v{ver} disagrees with PyTorch on the test split: {parity.label_mismatches} of {parity.n} labels differ, "
                                 f"max |Δp| {parity.max_abs_prob_diff:.2e} (limit 1e-4); serve it with --flavour full")  # fmt: skip
    facts = {"onnx.opset": str(export.opset), "onnx.exporter": export.exporter,
             "onnx.parity": f"{parity.n - parity.label_mismatches}/{parity.n} labels, max |dp| {parity.max_abs_prob_diff:.1e}"}  # fmt: skip
    for key, value in facts.items():
        store.client().set_model_version_tag(name, ver, key, value)
    return str(bm.tag), labels, facts


def _alias_or_fail(name: str, alias: str) -> str:
    ver = store.alias_version(name, alias)
    if ver is None:
        raise LookupError(f"{name} has no '{alias}' alias; run `visionflow run` (or `visionflow promote`) first")
    return ver


def package(ws: Workspace, *, classifier_version: str | None = None, generator_version: str | None = None, with_generator: bool = True,
            flavour: str = "full") -> PackageResult:  # fmt: skip
    """Bento of `visionflow-classifier` v`classifier_version` (default: the champion) and the
    generator (default: `generator` alias; not in the slim flavour). A pipeline run packages the
    versions it is about to promote, before any alias moves."""
    import bentoml
    from bentoml._internal.bento.build_config import BentoEnvSchema

    if flavour not in FLAVOURS:
        raise PackagingError(f"unknown flavour {flavour!r}: use slim or full")
    model_tags: dict[str, str] = {}
    ver = classifier_version or _alias_or_fail(store.CLASSIFIER_MODEL, store.CHAMPION)
    onnx_facts = None
    if flavour == "slim":
        tag, labels, onnx_facts = import_onnx_version(ws, store.CLASSIFIER_MODEL, ver)
    else:
        tag, labels = import_version(store.CLASSIFIER_MODEL, ver)
    model_tags["classifier"] = tag
    envs = [{"name": "VISIONFLOW_MODEL_URI", "value": f"bento:{tag}"}, {"name": "VISIONFLOW_GENERATOR_URI", "value": "none"}]
    gen = generator_version or (store.alias_version(store.GENERATOR_MODEL, store.GENERATOR) if with_generator and flavour == "full" else None)
    if gen:
        gtag, _ = import_version(store.GENERATOR_MODEL, gen)
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
        python={"packages": [f"{p}=={version(p)}" for p in RUNTIME_PACKAGES[flavour]], "lock_packages": False},
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
    verify(str(bento.tag), model_tags)
    lineage = {"model_name": store.CLASSIFIER_MODEL, "model_version": ver, "run_id": labels.get("run_id"), "data_version": labels.get("data_version"),
               "params_hash": labels.get("params_hash"), "git_commit": labels.get("git_commit")}  # fmt: skip
    return PackageResult(str(bento.tag), model_tags, kept, bento_path, flavour, (store.CLASSIFIER_MODEL, ver), lineage, onnx_facts)


class PackagingError(VisionflowError, RuntimeError):
    pass


def verify(bento_tag: str, model_tags: dict[str, str]) -> None:
    """The Bento is in the store, names exactly the imported models, and each model's files are there."""
    import bentoml

    try:
        bento = bentoml.get(bento_tag)
    except Exception as exc:  # noqa: BLE001 - any failure to read it back is a failed build
        raise PackagingError(f"Bento {bento_tag} was built but cannot be read back: {exc}") from exc
    held = {str(m.tag) for m in bento.info.all_models}
    missing = set(model_tags.values()) - held
    if missing:
        raise PackagingError(f"Bento {bento_tag} lacks model(s) {', '.join(sorted(missing))}")
    for tag in model_tags.values():
        path = Path(bentoml.models.get(tag).path)
        if not any(path.rglob("MLmodel")) and not (path / "model.onnx").is_file():
            raise PackagingError(f"BentoML model {tag} has neither an MLmodel nor a model.onnx file under {path}")
