"""Data validation with Great Expectations 1.x, before anything trains.

Every file is re-read from disk and decoded here (not trusted from the manifest), then three tables
are validated, each by its own suite, ValidationDefinition and Checkpoint (a Checkpoint run takes one
dataframe):
- `files`: one row per image: decodes, label/class in the class set, sha256 matches the manifest,
  no duplicate in a split, no file shared by two splits (leakage), channels consistent, side lengths
  within bounds, pixel mean/std plausible (catches all-black/all-white files), listed in the manifest;
- `class_splits`: one row per (split, class): every class has >= the minimum in every split (so the
  class set is the same in every split);
- `splits`: one row per split: fraction near the configured one (stratified split), or non-trivial
  (splits given by the source).
Failures name the expectation and up to N offending files (or split/class cells).
"""

from __future__ import annotations

import csv
import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from components.errors import VisionflowError
from components.config import SplitConfig, ValidationConfig
from components.data.ingest import (
    IMAGE_EXTENSIONS,
    MANIFEST,
    SPLITS,
    image_facts,
    read_dataset_info,
)

DOCS_SITE = "visionflow_data_docs"


@dataclass(frozen=True)
class Failure:
    table: str
    expectation: str
    why: str
    unexpected_count: int
    examples: list[str]

    def line(self) -> str:
        more = self.unexpected_count - len(self.examples)
        tail = f" (+{more} more)" if more > 0 else ""
        shown = ", ".join(self.examples) if self.examples else "-"
        return f"{self.why} [{self.expectation}]: {self.unexpected_count} failing: {shown}{tail}"


@dataclass
class ValidationReport:
    data_dir: Path
    success: bool
    n_images: int
    n_classes: int
    n_expectations: int
    failures: list[Failure] = field(default_factory=list)
    data_docs: Path | None = None

    def summary(self) -> str:
        state = "passed" if self.success else "FAILED"
        passed = self.n_expectations - len(self.failures)
        return (
            f"validation {state}: {passed}/{self.n_expectations} expectations on "
            f"{self.n_images} images, {self.n_classes} classes ({self.data_dir})"
        )


class DataValidationError(VisionflowError, RuntimeError):
    def __init__(self, report: ValidationReport):
        self.report = report
        super().__init__(report.summary())


# ---------------------------------------------------------------------------------------------
# Facts


def _read_manifest(data_dir: Path) -> list[dict[str, str]]:
    path = data_dir / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; run `visionflow ingest` first")
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def collect_facts(data_dir: Path, max_pixels: int = 16_000_000) -> tuple[pd.DataFrame, list[str], str]:
    """Per-file facts, decoded from disk now. Returns (files table, classes, split mode)."""
    info = read_dataset_info(data_dir)
    classes: list[str] = list(info["classes"])
    class_index = {c: i for i, c in enumerate(classes)}
    manifest = _read_manifest(data_dir)
    listed = {row["path"] for row in manifest}
    rows = []
    for row in manifest:
        path = data_dir / row["path"]
        data = path.read_bytes() if path.is_file() else None
        facts = image_facts(data, max_pixels) if data is not None else {"decode_error": "file missing"}
        rows.append({
            "path": row["path"], "split": row["split"], "class_name": row["class_name"],
            "label": int(row["label"]) if row["label"].lstrip("-").isdigit() else -1,
            "manifest_sha256": row["sha256"],
            "sha256": hashlib.sha256(data).hexdigest() if data is not None else "",
            "in_manifest": True, **facts,
        })  # fmt: skip
    # Files on disk that the manifest does not know (copied in by hand after ingest).
    for split in SPLITS:
        for file in sorted((data_dir / split).rglob("*")) if (data_dir / split).is_dir() else []:
            rel = file.relative_to(data_dir).as_posix()
            if file.is_file() and file.suffix.lower() in IMAGE_EXTENSIONS and rel not in listed:
                data = file.read_bytes()
                rows.append({
                    "path": rel, "split": split, "class_name": rel.split("/")[1], "label": -1,
                    "manifest_sha256": "", "sha256": hashlib.sha256(data).hexdigest(),
                    "in_manifest": False, **image_facts(data, max_pixels),
                })  # fmt: skip
    files = pd.DataFrame(rows)
    for col in ("width", "height", "channels", "pixel_mean", "pixel_std"):
        files[col] = pd.to_numeric(files.get(col), errors="coerce")
    files["decode_error"] = files["decode_error"].fillna("").astype(str)
    files["decodes"] = files["decode_error"] == ""
    files["label_of_class"] = files["class_name"].map(class_index).fillna(-2).astype(int)
    files["sha256_matches_manifest"] = (files["sha256"] == files["manifest_sha256"]) | ~files["in_manifest"]
    files["splits_sharing_file"] = files.groupby("sha256")["split"].transform("nunique")
    return files, classes, info.get("split_mode", "stratified")


def _class_split_table(files: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    counts = Counter(zip(files["split"], files["class_name"]))
    return pd.DataFrame(
        [{"cell": f"{s}/{c}", "count": counts.get((s, c), 0)} for s in SPLITS for c in classes]
    )


def _split_table(files: pd.DataFrame, split: SplitConfig, mode: str) -> pd.DataFrame:
    n = max(len(files), 1)
    rows = []
    for s in SPLITS:
        frac = float((files["split"] == s).sum()) / n
        target = getattr(split, s)
        rows.append({"split": s, "fraction": frac, "deviation": abs(frac - target) if mode == "stratified" else 0.0})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# Suites


def _suites(cfg: ValidationConfig, classes: list[str], channels: int, mode: str, converts: bool = False) -> dict[str, list]:
    import great_expectations as gx

    E = gx.expectations
    side = {"min_value": cfg.min_image_side, "max_value": cfg.max_image_side}
    split_check = (
        E.ExpectColumnValuesToBeBetween(
            column="deviation", min_value=0, max_value=cfg.split_tolerance,
            meta={"why": f"split fractions within {cfg.split_tolerance:g} of the configured ones"},
        )
        if mode == "stratified"
        else E.ExpectColumnValuesToBeBetween(
            column="fraction", min_value=0.01, max_value=1.0,
            meta={"why": "every given split holds at least 1% of the images"},
        )
    )  # fmt: skip
    return {
        "files": [
            E.ExpectColumnValuesToBeInSet(column="decodes", value_set=[True], meta={"why": "every file decodes"}),
            E.ExpectColumnValuesToBeInSet(column="in_manifest", value_set=[True], meta={"why": "every image file is listed in manifest.csv"}),
            E.ExpectColumnValuesToBeInSet(column="sha256_matches_manifest", value_set=[True], meta={"why": "file bytes match the manifest's sha256"}),
            E.ExpectColumnValuesToBeInSet(column="class_name", value_set=classes, meta={"why": "class name in the class set"}),
            E.ExpectColumnPairValuesToBeEqual(column_A="label", column_B="label_of_class", meta={"why": "label matches its class name"}),
            E.ExpectCompoundColumnsToBeUnique(column_list=["split", "sha256"], meta={"why": "no file appears twice in one split"}),
            E.ExpectColumnValuesToBeBetween(column="splits_sharing_file", min_value=1, max_value=1, meta={"why": "no file appears in two splits (leakage)"}),
            (E.ExpectColumnValuesToBeInSet(column="channels", value_set=[1, 3], meta={"why": f"every file converts to the dataset's {'RGB' if channels == 3 else 'gray'} mode"})
             if converts else
             E.ExpectColumnValuesToBeInSet(column="channels", value_set=[channels], meta={"why": f"channels consistent across the dataset ({channels})"})),  # fmt: skip
            E.ExpectColumnValuesToBeBetween(column="width", **side, meta={"why": f"width within [{cfg.min_image_side}, {cfg.max_image_side}]"}),
            E.ExpectColumnValuesToBeBetween(column="height", **side, meta={"why": f"height within [{cfg.min_image_side}, {cfg.max_image_side}]"}),
            E.ExpectColumnValuesToBeBetween(column="pixel_mean", min_value=cfg.pixel_mean_min, max_value=cfg.pixel_mean_max, meta={"why": f"pixel mean within [{cfg.pixel_mean_min:g}, {cfg.pixel_mean_max:g}]"}),
            E.ExpectColumnValuesToBeBetween(column="pixel_std", min_value=cfg.pixel_std_min, meta={"why": f"pixel std >= {cfg.pixel_std_min:g} (not a blank image)"}),
        ],
        "class_splits": [
            E.ExpectColumnValuesToBeBetween(
                column="count", min_value=cfg.min_images_per_class_per_split,
                meta={"why": f"every class has >= {cfg.min_images_per_class_per_split} images in every split"},
            ),
        ],
        "splits": [split_check],
    }  # fmt: skip


_INDEX_COLUMN = {"files": "path", "class_splits": "cell", "splits": "split"}


def _examples(result: dict, table: str, limit: int) -> list[str]:
    key = _INDEX_COLUMN[table]
    found: list[str] = []
    for item in result.get("unexpected_index_list") or []:
        value = item.get(key) if isinstance(item, dict) else None
        if value is not None and str(value) not in found:
            found.append(str(value))
        if len(found) >= limit:
            break
    return found


def validate(
    data_dir: Path,
    cfg: ValidationConfig = ValidationConfig(),
    split: SplitConfig = SplitConfig(),
    *,
    docs_dir: Path | None = None,
    max_pixels: int = 16_000_000,
) -> ValidationReport:
    """Validate `data_dir` (data/ or a staging folder). Writes Data Docs to `docs_dir` if given."""
    import great_expectations as gx

    files, classes, mode = collect_facts(data_dir, max_pixels)
    declared = read_dataset_info(data_dir).get("channels")  # ingest chose the mode; every file converts to it
    majority = files["channels"].dropna().mode()
    channels = int(declared or (majority.iloc[0] if len(majority) else 1))
    tables = {
        "files": files,
        "class_splits": _class_split_table(files, classes),
        "splits": _split_table(files, split, mode),
    }

    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)  # no tqdm noise in CLI logs
    if docs_dir is not None:
        docs_dir.mkdir(parents=True, exist_ok=True)
        ctx.add_data_docs_site(
            site_name=DOCS_SITE,
            site_config={
                "class_name": "SiteBuilder",
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
                "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
            },
        )
    source = ctx.data_sources.add_pandas(name="visionflow")
    failures: list[Failure] = []
    n_expectations = 0
    for table, expectations in _suites(cfg, classes, channels, mode, converts=declared is not None).items():
        batch_def = source.add_dataframe_asset(name=table).add_batch_definition_whole_dataframe(table)
        suite = ctx.suites.add(gx.ExpectationSuite(name=f"visionflow_{table}"))
        for expectation in expectations:
            suite.add_expectation(expectation)
        vd = ctx.validation_definitions.add(
            gx.ValidationDefinition(name=f"validate_{table}", data=batch_def, suite=suite)
        )
        actions = [gx.checkpoint.UpdateDataDocsAction(name="docs", site_names=[DOCS_SITE])] if docs_dir else []
        checkpoint = ctx.checkpoints.add(
            gx.Checkpoint(
                name=f"checkpoint_{table}",
                validation_definitions=[vd],
                actions=actions,
                result_format={"result_format": "COMPLETE", "unexpected_index_column_names": [_INDEX_COLUMN[table]]},
            )
        )
        run = checkpoint.run(batch_parameters={"dataframe": tables[table]})
        for suite_result in run.run_results.values():
            for res in suite_result.results:
                n_expectations += 1
                if res.success:
                    continue
                conf = res.expectation_config
                detail = res.result or {}
                if res.exception_info and res.exception_info.get("raised_exception"):
                    why = f"{conf.meta.get('why', conf.type)} (could not evaluate: {res.exception_info.get('exception_message')})"
                else:
                    why = (conf.meta or {}).get("why", conf.type)
                failures.append(
                    Failure(
                        table=table,
                        expectation=conf.type,
                        why=why,
                        unexpected_count=int(detail.get("unexpected_count") or 0),
                        examples=_examples(detail, table, cfg.max_reported_files),
                    )
                )
    index = docs_dir / "index.html" if docs_dir is not None else None
    return ValidationReport(
        data_dir=data_dir,
        success=not failures,
        n_images=int(files["in_manifest"].sum()),
        n_classes=len(classes),
        n_expectations=n_expectations,
        failures=failures,
        data_docs=index if index is not None and index.exists() else None,
    )
