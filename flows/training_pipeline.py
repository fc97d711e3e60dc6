"""`training_pipeline`: data flow → train each family → evaluate → log to MLflow → register → select.

Wiring only: every task calls component functions and passes small values (paths, run ids, URIs).
One MLflow parent run per pipeline run, one nested run per model. Models are registered and aliases
moved only after every family trained and was evaluated; a failure anywhere marks the parent run
FAILED and leaves the registry and its aliases as they were.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import TerminationSignal
from prefect.states import Failed
from prefect.task_runners import ThreadPoolTaskRunner

from components.config import Config
from components.data import versioning
from components.data.datasets import DatasetSpec
from components.evaluation import evaluate as ev
from components.evaluation.report import markdown_table, write_report
from components.lineage import EVALUATION_CODE, TRAINING_CODE, code_version
from components.locking import workspace_lock
from components.models import family_of
from components.process import STOP
from components.results import Evaluation, FusedModel, GanEvaluation, TrainedModel, weights_digest
from components.tracking import mlflow_store as store
from components.tracking import promotion
from components.training import runner
from components.workspace import Workspace
from flows.data_flow import DataFlowResult, data_flow, resolve


@dataclass
class PipelineResult:
    parent_run_id: str
    data_version: str
    report: str
    table: str
    champion: str | None
    decision: str
    generator: str | None
    rows: list[dict[str, Any]] = field(default_factory=list)
    tracking_uri: str = ""
    data_docs: str | None = None
    seconds: float = 0.0
    bento: str | None = None
    cached: list[str] = field(default_factory=list)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # test metrics per model
    aliases: list[dict[str, Any]] = field(default_factory=list)  # who holds champion/challenger/generator after the run, and why
    registered: list[dict[str, Any]] = field(default_factory=list)  # what this run registered and what became of it, and why
    evaluations_cached: list[str] = field(default_factory=list)  # models whose evaluation came from the cache


def _input_example(spec: DatasetSpec):
    import numpy as np

    # batch of 2: an example of batch 1 would freeze the batch dimension in some formats
    return np.zeros((2, spec.in_channels, *spec.image_size), dtype=np.float32)


def family_cache_key(key: str, fam, cfg: Config, data_version: str) -> str:
    """data version + the family's resolved config (+ engine) + the training code's version: the same
    key → the same model. The family's search space (`visionflow tune`) trains nothing."""
    blob = json.dumps({"family": fam.model_dump(mode="json", exclude={"search"}), "engine": cfg.engine.model_dump(mode="json", exclude={"progress"}),
                       "code": code_version(TRAINING_CODE)}, sort_keys=True)  # fmt: skip
    return f"{key}-{data_version[:12]}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def evaluation_cache_key(key: str, model_paths: list[str], cfg: Config, data_version: str, tracking_uri: str, extra: Any = None) -> str:
    """What an evaluation is a function of: the weights (not the file), the data version (its test
    split), the evaluation config and code, and the MLflow store its logged model lives in."""
    blob = json.dumps({"weights": [weights_digest(p) for p in model_paths], "data": data_version, "evaluation": cfg.evaluation.model_dump(mode="json"),
                       "code": code_version(EVALUATION_CODE), "tracking": tracking_uri, "extra": extra}, sort_keys=True, default=str)  # fmt: skip
    return f"eval-{key}-{data_version[:12]}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def _by_cache_key(_context, parameters: dict) -> str:
    return parameters["cache_key"]


def _must_reevaluate(force: bool, out_dir: Path) -> bool:
    # a cached evaluation names files under its folder: if they are gone, evaluate again
    return force or not (out_dir / "evaluation.json").exists()


def _mark_evaluated(out_dir: str, run_id: str, model_uri: str, metrics: dict[str, float]) -> None:
    """The marker `_must_reevaluate` looks for, written once the evaluation's files are complete."""
    (Path(out_dir) / "evaluation.json").write_text(json.dumps({"run_id": run_id, "model_uri": model_uri, "metrics": metrics}))


def _must_retrain(force: bool, models_dir: str, cache_key: str) -> bool:
    # A cached result names files under models_dir: if they are gone, refresh the cache entry.
    return force or not any((Path(models_dir) / cache_key).glob("*/model.pt"))


def _this_process() -> str:
    """host:pid that trained a model (a Dask worker, or this process)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _family_params(fam) -> dict[str, str]:
    return store.flatten({"model": fam.model, "hparams": fam.hparams, "train": fam.train.model_dump()})


def _resume_point(out: Path, key: str, fresh: bool, tags: dict[str, str]) -> int | None:
    """The epoch an interrupted training of this exact cache key reached (its last.pt), or None; a
    resume is said in the log and tagged on the run (`tags`). `fresh` (--force) starts over. The key
    holds data, config and code versions, so a checkpoint under it is always from the same recipe."""
    work = out / key
    if fresh:
        shutil.rmtree(work, ignore_errors=True)
        return None
    last = work / "checkpoints" / "last.pt"
    if not last.exists():
        return None
    import torch

    try:
        epoch = int(torch.load(last, map_location="cpu", weights_only=False)["epoch"])
    except Exception:  # noqa: BLE001 - a checkpoint that cannot be read is no resume point
        last.unlink(missing_ok=True)
        return None
    tags["resumed_after_epoch"] = str(epoch)
    get_run_logger().warning("%s: resuming from the checkpoint of an interrupted run (epoch %d done, continuing at epoch %d)", key, epoch + 1, epoch + 2)
    return epoch


@task(name="train-classifier", cache_key_fn=_by_cache_key, persist_result=True)
def train_classifier_task(key: str, cfg: Config, data_dir: str, models_dir: str, cache_key: str, tracking_uri: str, exp_id: str, parent_id: str, lineage: dict,
                          fresh: bool = False) -> TrainedModel:  # fmt: skip
    store.use_tracking_uri(tracking_uri)  # this may run in another process (Dask worker)
    fam = cfg.models.classifiers()[key]
    out = Path(models_dir) / cache_key
    tags = {**lineage, "family": family_of(fam.model), "model": fam.model, "cache_key": cache_key, "trained_on": _this_process()}
    resumed = _resume_point(out, key, fresh, tags)
    run_id = store.start_run(exp_id, key, tags, _family_params(fam), parent_id)

    with store.active_run(run_id, log_system_metrics=True):
        result = runner.train_classifier(
            key, fam, cfg.engine, Path(data_dir), out, resume=resumed is not None, on_epoch_end=store.EpochLogger(run_id), data=cfg.data
        )
    store.log_metrics(
        run_id,
        {"val_acc": result["val_acc"], "best_epoch": result["best_epoch"], "train_seconds": result["train_seconds"], "train_img_per_s": result["img_per_s"]},
    )
    get_run_logger().info("%s: val acc %.4f after %d epochs (%.0fs)", key, result["val_acc"], result["epochs_run"], result["train_seconds"])
    return TrainedModel(key, result["model"], result["family"], result["path"], run_id, parent_id, cache_key, val_acc=result["val_acc"],
                        best_epoch=result["best_epoch"], epochs_run=result["epochs_run"], train_seconds=result["train_seconds"],
                        img_per_s=result["img_per_s"], device=result["device"])  # fmt: skip


@task(name="train-gan", cache_key_fn=_by_cache_key, persist_result=True)
def train_gan_task(key: str, cfg: Config, data_dir: str, models_dir: str, cache_key: str, tracking_uri: str, exp_id: str, parent_id: str, lineage: dict,
                   fresh: bool = False) -> TrainedModel:  # fmt: skip
    store.use_tracking_uri(tracking_uri)
    fam = cfg.models[key]
    out = Path(models_dir) / cache_key
    tags = {**lineage, "family": family_of(fam.model), "model": fam.model, "cache_key": cache_key, "trained_on": _this_process()}
    resumed = _resume_point(out, key, fresh, tags)
    run_id = store.start_run(exp_id, key, tags, _family_params(fam), parent_id)

    with store.active_run(run_id, log_system_metrics=True):
        result = runner.train_gan(fam, cfg.engine, Path(data_dir), out, resume=resumed is not None, on_epoch_end=store.EpochLogger(run_id), data=cfg.data,
                                  key=key)  # fmt: skip
    history_path = out / key / "history.json"
    history_path.write_text(json.dumps(result["history"]))
    return TrainedModel(key, result["model"], result["family"], result["path"], run_id, parent_id, cache_key, epochs_run=result["epochs_run"],
                        train_seconds=result["train_seconds"], device=result["device"], history_path=str(history_path))  # fmt: skip


@task(name="adopt-cached", cache_policy=NO_CACHE)
def adopt_cached_task(trained: TrainedModel, cfg: Config, exp_id: str, parent_id: str, lineage: dict) -> TrainedModel:
    """A family served from the cache gets a nested run in this pipeline run that points at the run
    that trained it (tag `cached_from`), so this run's report and registry entries stay complete."""
    fam = cfg.models[trained.key]
    run_id = store.start_run(exp_id, trained.key, {**lineage, "family": trained.family, "model": fam.model, "cache_key": trained.cache_key,
                                                   "cached_from": trained.run_id}, _family_params(fam), parent_id)  # fmt: skip
    if trained.val_acc is not None:
        store.log_metrics(run_id, {"val_acc": trained.val_acc, "best_epoch": trained.best_epoch, "train_seconds": 0.0})
    get_run_logger().info("%s: cached (cache key %s, trained in run %s): training skipped; --force retrains", trained.key, trained.cache_key, trained.run_id)
    return replace(trained, run_id=run_id, parent_id=parent_id, cached_from=trained.run_id)


@task(name="decision-fusion", cache_policy=NO_CACHE)
def fuse_task(key: str, cfg: Config, member_paths: dict[str, str], data_dir: str, run_dir: str, exp_id: str, parent_id: str, lineage: dict) -> FusedModel:
    fam = cfg.models[key]
    run_id = store.start_run(exp_id, key, {**lineage, "family": "hybrid", "model": "decision_fusion"},
                             {"members": json.dumps(list(fam.members)), "alpha_steps": str(fam.alpha_steps), "calibrate": str(fam.calibrate),
                              "criterion": fam.criterion}, parent_id)  # fmt: skip
    result = runner.fuse(fam, member_paths, Path(data_dir), Path(run_dir), key=key)
    store.log_metrics(run_id, {"alpha": result["alpha"], "val_acc": result["val_acc"], "temperature_1": result["temperatures"][0],
                               "temperature_2": result["temperatures"][1]})  # fmt: skip
    get_run_logger().info("%s: α=%.2f chosen on validation (val acc %.4f)", key, result["alpha"], result["val_acc"])
    return FusedModel(key, result["model"], result["family"], result["path"], run_id, parent_id, val_acc=result["val_acc"], alpha=result["alpha"],
                      temperatures=tuple(result["temperatures"]), members=tuple(result["members"]))  # fmt: skip


@task(name="evaluate", cache_key_fn=_by_cache_key, persist_result=True)
def evaluate_task(trained: TrainedModel, cfg: Config, data_dir: str, out_dir: str, cache_key: str) -> Evaluation:
    """The test-split evaluation and the logged model, on the run that trained (or adopted) the
    model; cached by `evaluation_cache_key`, so unchanged weights, data and code are not evaluated twice."""
    out = ev.evaluate_classifier_file(trained.key, trained.path, Path(data_dir), Path(out_dir), cfg.evaluation)
    store.log_metrics(trained.run_id, {**{f"test_{k}": v for k, v in out["metrics"].items()}, "val_robust_accuracy": out["val_robust"]})
    store.log_artifacts(trained.run_id, [Path(p) for p in out["images"]] + [Path(out["correct_path"])], "evaluation")
    model, spec = runner.load_trained(trained.path)
    model_uri = store.log_model(trained.run_id, model, _input_example(spec), spec.to_json(),
                                extra_metadata={"task": "classification", "model_key": trained.key})  # fmt: skip
    _mark_evaluated(out_dir, trained.run_id, model_uri, out["metrics"])
    return Evaluation(trained.key, out["row"]["family"], trained.run_id, model_uri, trained.path, float(trained.val_acc or 0.0), out["val_robust"],
                      out["correct_path"], out["metrics"], tuple(out["images"]))  # fmt: skip


@task(name="evaluate-gan", cache_key_fn=_by_cache_key, persist_result=True)
def evaluate_gan_task(trained: TrainedModel, judge_path: str, cfg: Config, data_dir: str, out_dir: str, cache_key: str) -> GanEvaluation:
    import numpy as np

    history = json.loads(Path(trained.history_path).read_text()) if trained.history_path else []
    out = ev.evaluate_gan_file(trained.path, judge_path, Path(data_dir), Path(out_dir), cfg.evaluation, history, cnn_hparams=_gan_train_hparams(cfg))
    store.log_metrics(trained.run_id, out["metrics"])
    store.log_artifacts(trained.run_id, [Path(p) for p in out["images"]], "evaluation")
    gan, spec = runner.load_trained(trained.path)
    model_uri = store.log_model(trained.run_id, gan, np.array([0, 1], dtype=np.int64), spec.to_json(),
                                extra_metadata={"task": "generation"})  # fmt: skip
    _mark_evaluated(out_dir, trained.run_id, model_uri, out["metrics"])
    return GanEvaluation(trained.key, trained.run_id, model_uri, out["metrics"]["gan_test"], out["metrics"]["gan_train"], int(out["row"]["params"]),
                         tuple(out["images"]))  # fmt: skip


def _gan_train_hparams(cfg: Config) -> dict | None:
    cnn = cfg.models.get("cnn")
    return cnn.hparams if cnn is not None and getattr(cnn, "model", None) == "cnn" else None  # GAN-train uses the configured cnn


@task(name="adopt-evaluation", cache_policy=NO_CACHE)
def adopt_evaluation_task(result: Evaluation | GanEvaluation, trained: TrainedModel) -> Evaluation | GanEvaluation:
    """An evaluation served from the cache: its figures and plots are logged on this run's model run
    too (tag `evaluation_cached_from`), and registration points at the model it logged then."""
    prefix = "test_" if isinstance(result, Evaluation) else ""
    figures = {f"{prefix}{k}": v for k, v in result.metrics.items()}
    if isinstance(result, Evaluation):
        figures["val_robust_accuracy"] = result.val_robust
    store.log_metrics(trained.run_id, figures)
    extra = [Path(result.correct_path)] if isinstance(result, Evaluation) else []
    store.log_artifacts(trained.run_id, [Path(p) for p in result.images] + extra, "evaluation")
    store.client().set_tag(trained.run_id, "evaluation_cached_from", result.run_id)
    get_run_logger().info("%s: evaluation cached (same weights, test data and evaluation code as in run %s): not evaluated again", result.key, result.run_id)
    return replace(result, run_id=trained.run_id, cached_from=result.run_id)


@task(name="report", cache_policy=NO_CACHE)
def report_task(rows: list[dict], images: dict[str, list[str]], notes: list[str], out_dir: str, latest: str, parent_id: str) -> str:
    html = write_report(rows, Path(out_dir), title="visionflow: model comparison (test split)",
                        images={k: [Path(p) for p in v] for k, v in images.items()}, notes=notes, latest=Path(latest))  # fmt: skip
    store.log_artifacts(parent_id, [Path(out_dir)], "report")
    return str(html)


@task(name="register", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=3)  # idempotent: a retry finds its versions
def register_task(evals: list[Evaluation], gan_eval: GanEvaluation | None, lineage: dict, robustness_weight: float = 0.0) -> promotion.Registration:
    gen = None
    if gan_eval is not None:
        gen = promotion.GeneratorCandidate(gan_eval.run_id, gan_eval.model_uri, gan_eval.gan_test, gan_eval.gan_train)
    return promotion.register_candidates([promotion.Candidate.from_eval(e) for e in evals], gen, lineage, robustness_weight)


@task(name="select", cache_policy=NO_CACHE)
def select_task(registration: promotion.Registration, cfg: Config, data_dir: str, classes: list[str]) -> promotion.SelectionDecision:
    decision = promotion.decide(registration, Path(data_dir), cfg.selection, classes, store.load_logged_model, ev.paired_correct)
    get_run_logger().info("selection: %s", decision.reason)
    return decision


@task(name="package", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=3)
def package_task(root: str, cfg: Config, decision: promotion.SelectionDecision) -> dict:
    """The Bento of the version that will serve, built and verified before any alias moves."""
    from components.packaging.bento import package

    gen = decision.generator_version if decision.promote_generator else None
    res = package(Workspace.for_config(root, cfg), classifier_version=decision.serving_version, generator_version=gen)
    return {"bento_tag": res.bento_tag, "models": res.model_tags, "dockerfile": str(res.dockerfile) if res.dockerfile else None}


@task(name="promote", cache_policy=NO_CACHE)
def promote_task(decision: promotion.SelectionDecision, parent_id: str) -> list[dict]:
    """Aliases move last: everything they promise (evaluation, Bento) exists by now. A gate winner
    under `selection.rollout.mode` shadow/canary starts a rollout instead of taking `champion`."""
    store.client().log_dict(parent_id, decision.as_dict(), "selection.json")
    store.client().set_tag(parent_id, "selection", decision.reason[:5000])
    return promotion.apply(decision)


@task(name="check-out-data", cache_policy=NO_CACHE)
def checkout_task(root: str, home: str, data_name: str, version: str) -> str:
    return versioning.checkout(Workspace.at(root, home), version, data_name)


@task(name="current-data", cache_policy=NO_CACHE)
def current_data_task(root: str, home: str, data_name: str) -> DataFlowResult:
    """The checked-out data version, as the data flow would describe it (validated when it was made)."""
    ws = Workspace.at(root, home)
    st = versioning.status(ws, data_name)
    if st.version is None or not st.workspace_matches:
        raise versioning.VersioningError(f"{data_name}/ does not match {data_name}.dvc ({'; '.join(st.changes[:3])}); run `visionflow ingest`")
    manifest = (ws.data_dir(data_name) / "manifest.csv").read_text().splitlines()
    info = json.loads((ws.data_dir(data_name) / "dataset.json").read_text())
    docs = ws.data_docs_dir / "index.html"
    return DataFlowResult(st.version, str(ws.data_dir(data_name)), len(manifest) - 1, info["classes"], str(docs) if docs.exists() else None,
                          f"data version {st.version} from {info.get('source', '?')} (validated when it was ingested)", 0.0)  # fmt: skip


@task(name="data-stats", cache_policy=NO_CACHE)
def data_stats_task(data_dir: str, parent_id: str, cfg: Config) -> dict:
    """Statistics of the training data, logged on the parent run: the drift check's reference."""
    from components.data.datasets import load_dataset
    from components.evaluation.drift import data_stats

    spec, splits = load_dataset(Path(data_dir), cfg.data)
    stats = data_stats(spec, splits["train"])
    store.client().log_dict(parent_id, stats, "data_stats.json")
    return stats


def _prepare_data(ws: Workspace, cfg: Config, profile: str, source: str | None, data_version: str | None):
    """The data this run trains on (versioning.plan_data): a DataFlowResult, or a Failed state."""
    log = get_run_logger()
    plan = versioning.plan_data(ws, cfg.data.dir, source=source, data_version=data_version, default_source=cfg.data.source)
    if plan.action == "checkout":
        try:
            checkout_task(str(ws.root), str(ws.home), cfg.data.dir, plan.version)
        except versioning.VersioningError as exc:
            if not plan.source:  # --data-version: that version or nothing
                return Failed(message=str(exc))
            log.warning("%s; re-creating it from %s (data.source)", exc, plan.source)
            plan = versioning.DataPlan("ingest", plan.source, plan.version, f"re-create data version {plan.version} from {plan.source}")
    if plan.action == "ingest":
        state = data_flow(root=str(ws.root), profile=profile, source=plan.source, cfg=cfg, return_state=True)
        if state.is_failed():
            return Failed(message=state.message)  # bad data: nothing trains, nothing moves
        data: DataFlowResult = state.result()
        if plan.version and data.data_version != plan.version:
            log.warning("%s gave data version %s, not %s (data.dvc now points at the new one)", plan.source, data.data_version, plan.version)
    else:
        data = current_data_task(str(ws.root), str(ws.home), cfg.data.dir)
    # said before anything trains, whatever the log level: which data, how much, and why this one
    print(f"training on data version {data.data_version}: {data.n_images} images, {len(data.classes)} classes ({plan.reason})", flush=True)
    return data


def run_lineage(ws: Workspace, cfg: Config, data_version: str, profile: str) -> dict[str, str]:
    """The lineage tags of a pipeline or tune run and of everything it logs: data, config, code, profile."""
    return {"data_version": data_version, "params_hash": cfg.hash(), "git_commit": versioning.git_commit(ws.root) or "none",
            "code_version": code_version(), "profile": profile}  # fmt: skip


class _Ran:
    """A task already run in the flow's thread, with a future's `result()`."""

    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


def _start(task_, here: bool, *args, **kwargs):
    """Submit a training task to the task runner — or, one family at a time on threads (the default),
    run it now in the flow's own thread: torch 2.14.1 trains the rnn ~2× and cnn_lstm/gan ~1.35×
    slower in a worker thread than in the main thread on these CPUs (even at 1 intra-op thread;
    benchmarks/bench_pipeline_overhead.py), which made in-pipeline training slower than the benchmark."""
    return _Ran(task_(*args, **kwargs)) if here else task_.submit(*args, **kwargs)


@flow(name="training_pipeline", task_runner=ThreadPoolTaskRunner(max_workers=1))
def training_pipeline(root: str = ".", profile: str = "default", overrides: list[str] | None = None, source: str | None = None,
                      force: bool = False, data_version: str | None = None, retrain_reason: str | None = None,
                      drift: dict[str, float] | None = None, cfg: Any = None, promote: bool = True):  # fmt: skip
    """Train on the checked-out data version (or `source`, ingested first; or `data_version`, checked
    out first). `promote=False` (reproduce): train, evaluate and log, but register nothing."""
    cfg, ws = resolve(root, profile, overrides, cfg)
    with workspace_lock(ws.home, f"visionflow run ({profile})", wait=-1, on_wait=get_run_logger().warning):
        return _pipeline(ws, cfg, profile, source, force, data_version, retrain_reason, drift, promote)


def _pipeline(ws: Workspace, cfg: Config, profile: str, source: str | None, force: bool, data_version: str | None,
              retrain_reason: str | None, drift: dict[str, float] | None, promote: bool):  # fmt: skip
    start = time.perf_counter()
    try:
        data = _prepare_data(ws, cfg, profile, source, data_version)
    except versioning.VersioningError as exc:
        return Failed(message=str(exc))
    if not isinstance(data, DataFlowResult):
        return data
    data_dir = ws.data_dir(cfg.data.dir)
    lineage = run_lineage(ws, cfg, data.data_version, profile)
    if cfg.tuning.studies:  # a tuned profile: the Optuna studies its recipes came from (`visionflow tune`)
        lineage["tuning_studies"] = ",".join(f"{k}={v}" for k, v in sorted(cfg.tuning.studies.items()))
    uri, exp_id = store.configure(ws, cfg.tracking.uri, cfg.tracking.experiment)
    store.mark_stale_runs(exp_id)
    parent = store.start_run(exp_id, f"pipeline-{profile}-{time.strftime('%Y%m%d-%H%M%S')}", {**lineage, **store.process_tag()},
                             store.flatten(cfg.model_dump(mode="json")))  # fmt: skip
    run_dir = ws.home / "runs" / parent
    try:
        store.client().log_dict(parent, cfg.model_dump(mode="json"), "config.json")  # `visionflow reproduce` reads it back
        store.log_dataset(parent, data_dir / "manifest.csv", data.data_version, data_dir)
        data_stats_task(str(data_dir), parent, cfg)
        if retrain_reason:
            store.client().set_tag(parent, "retrain_reason", retrain_reason[:5000])
        if drift:
            store.log_metrics(parent, drift)
        args = (str(data_dir), str(run_dir), exp_id, parent, lineage)
        models_dir = str(ws.home / "models")
        run_args = (exp_id, parent, lineage)
        keys = {k: family_cache_key(k, fam, cfg, data.data_version) for k, fam in cfg.models.classifiers().items()}
        here = cfg.orchestration.task_runner == "thread" and cfg.orchestration.max_workers == 1

        generators = cfg.models.generators()  # at most one (the config says so)

        def start_gan():
            if not generators:
                return None
            g, gen = next(iter(generators.items()))
            gk = family_cache_key(g, gen, cfg, data.data_version)
            return _start(train_gan_task.with_options(task_run_name=f"train-{g}", refresh_cache=_must_retrain(force, models_dir, gk)),
                          here, g, cfg, str(data_dir), models_dir, gk, uri, *run_args, fresh=force)  # fmt: skip

        # in parallel the GAN (the longest training) starts first, so it does not start last on a worker
        gan_future = None if here else start_gan()
        futures = {
            k: _start(train_classifier_task.with_options(task_run_name=f"train-{k}", refresh_cache=_must_retrain(force, models_dir, ck)),
                      here, k, cfg, str(data_dir), models_dir, ck, uri, *run_args, fresh=force)
            for k, ck in keys.items()
        }  # fmt: skip
        if here:
            gan_future = start_gan()
        trained = {k: _adopt(f.result(), cfg, *run_args) for k, f in futures.items()}
        gan_trained = _adopt(gan_future.result(), cfg, *run_args) if gan_future is not None else None
        fused = {}
        for f, fusion in cfg.models.fusions().items():
            if all(m in trained for m in fusion.members):
                fused[f] = fuse_task.with_options(task_run_name=f)(f, cfg, {k: v.path for k, v in trained.items()}, *args)
        trained.update(fused)
        evaluate = _Evaluator(ws, cfg, str(data_dir), data.data_version, uri, force)
        evals = [evaluate.classifier(t) for t in trained.values()]
        gan_eval = None
        if gan_trained is not None:
            judge = trained.get("cnn") or max(trained.values(), key=lambda t: t.val_acc or 0.0)
            gan_eval = evaluate.generator(gan_trained, judge)
        all_evals = evals + ([gan_eval] if gan_eval else [])
        rows = [e.row for e in all_evals]
        images = {e.key: list(e.images) for e in all_evals}
        notes = [f"data version {data.data_version}; params hash {lineage['params_hash']}; MLflow parent run {parent}",
                 "accuracy etc. on the test split; the best model is chosen on validation, the champion gate compares on the test split"]  # fmt: skip
        for f, res in fused.items():
            notes.append(f"{f.replace('_', ' ')} α={res.alpha:.2f} over {', '.join(cfg.models[f].members)} (chosen on validation)")
        report = report_task(rows, images, notes, str(ws.reports_dir / parent), str(ws.reports_dir / "latest"), parent)
        selection, bento, registered = None, None, []
        if promote:
            registration = register_task(evals, gan_eval, lineage, cfg.selection.robustness_weight)
            selection = select_task(registration, cfg, str(data_dir), data.classes)
            bento = package_task(str(ws.root), cfg, selection) if cfg.packaging.enabled else None
            if bento:
                store.client().set_tag(parent, "bento", bento["bento_tag"])
            registered = promote_task(selection, parent)  # aliases move last
    except BaseException as exc:
        # Ctrl-C, or SIGTERM (Prefect turns it into TerminationSignal inside a flow run): tell the
        # training threads to stop too, so the process ends now rather than after their last epoch
        killed = isinstance(exc, (KeyboardInterrupt, TerminationSignal))
        if killed:
            STOP.set()
        store.end_run(parent, ok=False, killed=killed)
        raise
    store.end_run(parent, ok=True)
    table = markdown_table(rows)
    if selection is not None:
        _markdown_artifact(table, selection, uri, parent)
    champion = store.alias_version(store.CLASSIFIER_MODEL, store.CHAMPION) if promote else None
    aliases = promotion.alias_holders() if promote else []
    cached = sorted(t.key for t in [*trained.values(), *([gan_trained] if gan_trained else [])] if t.cached)
    return PipelineResult(parent, data.data_version, report, table, champion, selection.reason if selection else "not registered (reproduction)",
                          selection.generator_version if selection else None, rows, uri, data.data_docs, time.perf_counter() - start,
                          bento["bento_tag"] if bento else None, cached,
                          {e.key: e.metrics for e in all_evals}, aliases, registered, sorted(e.key for e in all_evals if e.cached_from))  # fmt: skip


def _adopt(trained: TrainedModel, cfg: Config, exp_id: str, parent: str, lineage: dict) -> TrainedModel:
    """A result from an earlier pipeline run (a cache hit) gets a nested run in this one."""
    if trained.parent_id == parent:
        return trained
    return adopt_cached_task(trained, cfg, exp_id, parent, lineage)


@dataclass(frozen=True)
class _Evaluator:
    """Runs the (cached) evaluation tasks of one pipeline run: each evaluation's files live in
    `<workspace>/evaluations/<cache key>/`, and a cache hit is adopted by this run's model run."""

    ws: Workspace
    cfg: Config
    data_dir: str
    data_version: str
    tracking_uri: str
    force: bool

    def _folder(self, key: str) -> Path:
        return self.ws.home / "evaluations" / key

    def classifier(self, trained: TrainedModel) -> Evaluation:
        ck = evaluation_cache_key(trained.key, [trained.path], self.cfg, self.data_version, self.tracking_uri)
        out = self._folder(ck)
        task_ = evaluate_task.with_options(task_run_name=f"evaluate-{trained.key}", refresh_cache=_must_reevaluate(self.force, out))
        return self._adopted(task_(trained, self.cfg, self.data_dir, str(out), ck), trained)

    def generator(self, trained: TrainedModel, judge: TrainedModel) -> GanEvaluation:
        ck = evaluation_cache_key(trained.key, [trained.path, judge.path], self.cfg, self.data_version, self.tracking_uri,
                                  extra=_gan_train_hparams(self.cfg))  # fmt: skip
        out = self._folder(ck)
        task_ = evaluate_gan_task.with_options(task_run_name=f"evaluate-{trained.key}", refresh_cache=_must_reevaluate(self.force, out))
        return self._adopted(task_(trained, judge.path, self.cfg, self.data_dir, str(out), ck), trained)

    @staticmethod
    def _adopted(result, trained: TrainedModel):
        return result if result.run_id == trained.run_id else adopt_evaluation_task(result, trained)


def _markdown_artifact(table: str, selection: promotion.SelectionDecision, uri: str, parent: str) -> None:
    from prefect.artifacts import create_markdown_artifact

    md = f"## visionflow comparison\n\n{table}\n\n**Selection:** {selection.reason}\n\nMLflow: `{uri}`, parent run `{parent}`\n"
    create_markdown_artifact(markdown=md, key="model-comparison", description="Test-split comparison of every trained model")
