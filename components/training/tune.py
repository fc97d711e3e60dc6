"""`visionflow tune`: an Optuna search of each classifier family's recipe, judged on the validation split.

One study per family, data version and space (+ the family's base recipe), named deterministically and
kept in the workspace's SQLite file (`optuna.db`), so the same command again resumes it. Trial 0 of a
new study is the family's current recipe, so the tuned recipe is never worse on validation than the
default. Trials run `runner.train_classifier` with an epoch callback that logs to the trial's MLflow
run and lets the pruner stop a lagging trial. The test split is never read here.

No Prefect: flows/tune.py wires these functions into tasks; only small values cross (names, numbers,
frozen dataclasses).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from components.config import (
    ClassifierFamily,
    Config,
    ConfigError,
    SearchDim,
    TuningConfig,
    _set_dotted,
    parse_override,
    profile_block,
    resolve_recipe,
    search_dims,
)
from components.errors import VisionflowError

TUNED_PROFILE = "tuned"
STORAGE_FILE = "optuna.db"
DEFAULT_ATTR = "visionflow_default"  # user attr of the trial that runs the family's current recipe
MAX_FAILS_IN_A_ROW = 3  # then the search stops and says why: a broken recipe fails every trial alike


class TuneError(VisionflowError, RuntimeError):
    """A search that cannot go on (every trial failing, a profile name taken); the message says what to do."""


@dataclass(frozen=True)
class StudyPlan:
    """A family's study, ready to run trials: where it lives and what was done to it on opening."""

    key: str
    study: str
    storage: str
    requeued: tuple[int, ...] = ()  # trials a killed search left RUNNING: failed and queued again
    default_queued: bool = False  # trial 0 of a new study: the current recipe
    outside: tuple[str, ...] = ()  # searched keys whose current value lies outside the space


@dataclass(frozen=True)
class TrialTracking:
    """Where a trial's MLflow run goes: the store, the tune experiment, the invocation's parent run, lineage tags."""

    uri: str
    experiment_id: str
    parent_id: str
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TuneResult:
    """One family's search, over the whole study (earlier invocations included)."""

    key: str
    study: str
    best_value: float | None  # best validation accuracy of a complete trial
    best_params: dict[str, Any]  # its searched values, dotted keys (train.lr, hparams.widths)
    n_complete: int
    n_pruned: int
    n_failed: int
    default_value: float | None  # the current recipe's validation accuracy (trial 0), None if not measured
    seconds: float  # spent on this family in this invocation
    best_trial: int | None = None

    @property
    def improved(self) -> bool:
        """The best trial beats the current recipe on validation (or the current recipe was not measured)."""
        return self.best_value is not None and (self.default_value is None or self.best_value > self.default_value)

    @property
    def searched(self) -> bool:
        """More than the current recipe finished (complete or pruned)."""
        return self.n_complete + self.n_pruned > 1


def pruner_idle_note(result: TuneResult, tuning: TuningConfig, trials: int | None) -> str | None:
    """A line for a search the budget ended before the median pruner could act (fewer finished trials
    than it waits for): nothing was stopped early, so the search was only its first few draws."""
    if tuning.pruner != "median" or trials is not None or result.n_pruned or result.n_complete >= tuning.startup_trials:
        return None
    return (f"{result.key}: the budget ended after {result.n_complete} finished trials, before the pruner's {tuning.startup_trials} "
            "(tuning.startup_trials), so no trial was stopped early; a longer --budget or fewer --family gives the search more to compare")  # fmt: skip


def focus_order(results: list[TuneResult]) -> list[str]:
    """Families best first by their best validation accuracy so far (the current recipe's, on a new
    study); unmeasured ones last, ties in the configured order: the order `tuning.focus: leader` spends the rest of the budget in."""
    ranked = sorted(enumerate(results), key=lambda ir: (ir[1].best_value is None, -(ir[1].best_value or 0.0), ir[0]))
    return [r.key for _, r in ranked]


def focus_note(order: list[str], results: list[TuneResult]) -> str | None:
    """A line naming the families whose search stopped at the current recipe because the budget went to a better one."""
    by_key = {r.key: r for r in results}
    searched = [k for k in order if by_key[k].searched]
    left = [k for k in order if k not in searched]
    if not searched or not left:
        return None
    return (f"{', '.join(f'{k} (val acc {_acc(by_key[k].best_value)})' for k in left)}: only the current recipe was measured; the rest of the "
            f"budget went to {', '.join(searched)}, best on validation (tuning.focus: leader; `--set tuning.focus=even` shares it evenly)")  # fmt: skip


def storage_url(home: str | Path) -> str:
    return f"sqlite:///{Path(home) / STORAGE_FILE}"


def tune_experiment(cfg: Config) -> str:
    """The tune runs' MLflow experiment: beside the pipeline's, never in it (its parent runs are read as pipeline runs)."""
    return f"{cfg.tracking.experiment}-tune"


def tuned_params_file(params_file: str | Path) -> Path:
    """`params.tuned.yaml` beside `params.yaml`: load_config reads its profiles with the params file's."""
    path = Path(params_file)
    return path.with_name(f"{path.stem}.{TUNED_PROFILE}{path.suffix}")


def study_name(family_key: str, data_version: str, space: dict[str, Any], recipe: dict[str, Any] | None = None) -> str:
    """Deterministic: the same family, data version, space and base recipe → the same study (a re-run resumes it)."""
    blob = json.dumps({"space": space, "recipe": recipe or {}}, sort_keys=True, default=str)
    return f"{family_key}-{data_version[:8]}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


def family_study_name(key: str, fam: ClassifierFamily, data_version: str) -> str:
    recipe = fam.model_dump(mode="json", exclude={"search", "enabled"})
    return study_name(key, data_version, fam.search, recipe)


def select_families(cfg: Config, families: list[str] | None = None) -> list[str]:
    """The families to tune: `families`, else tuning.families, else every enabled classifier with a `search:` space."""
    enabled = cfg.models.classifiers()
    named = families or cfg.tuning.families
    for key in named or []:
        if key not in enabled:
            raise ConfigError(f"family {key!r} is not an enabled classifier family (choose from: {', '.join(enabled)})")
        if not enabled[key].search:
            raise ConfigError(f"models.{key}.search is empty: nothing to tune; give {key} a search: block in params.yaml (docs/guide/tuning.md)")
    keys = list(dict.fromkeys(named)) if named else [k for k, fam in enabled.items() if fam.search]
    if not keys:
        raise ConfigError("no enabled classifier family has a search: space; add one under models.<family>.search (docs/guide/tuning.md)")
    return keys


# --- the space in Optuna's terms: a non-primitive choice (a list of widths) travels as a JSON string


def _encoded(dim: SearchDim) -> bool:
    return dim.kind == "categorical" and any(isinstance(c, (list, tuple, dict)) for c in dim.choices)


def _encode(dim: SearchDim, value: Any) -> Any:
    return json.dumps(value) if _encoded(dim) else value


def _decode(dim: SearchDim, value: Any) -> Any:
    return json.loads(value) if _encoded(dim) else value


def _suggest(trial, dim: SearchDim) -> Any:
    if dim.kind == "categorical":
        return _decode(dim, trial.suggest_categorical(dim.key, [_encode(dim, c) for c in dim.choices]))
    if dim.kind == "int":
        return trial.suggest_int(dim.key, int(dim.low), int(dim.high), step=int(dim.step or 1), log=dim.log)
    return trial.suggest_float(dim.key, float(dim.low), float(dim.high), step=dim.step, log=dim.log)


def current_values(fam: ClassifierFamily, channels: int) -> tuple[dict[str, Any], list[str]]:
    """The family's current value of each searched key (its `auto`s resolved for the data) that lies in
    the space, and the keys whose current value does not (or is unknown)."""
    train = resolve_recipe(fam.train, channels)
    inside, outside = {}, []
    for dim in search_dims(fam.search):
        section, _, name = dim.key.partition(".")
        if section == "train":
            value = getattr(train, name)
        elif name in fam.hparams:
            value = fam.hparams[name]
        else:
            value = _builder_default(fam.model, name)
        if value is not inspect.Parameter.empty and dim.contains(value):
            inside[dim.key] = value
        else:
            outside.append(dim.key)
    return inside, outside


def _builder_default(model: str, name: str) -> Any:
    from components.models import model_entry

    entry = model_entry(model)
    param = inspect.signature(entry.builder).parameters.get(name) if entry is not None else None
    return param.default if param is not None else inspect.Parameter.empty


def apply_params(fam: ClassifierFamily, params: dict[str, Any], max_seconds: float | None = None) -> ClassifierFamily:
    """The family with searched values (dotted keys) set in its train/hparams, validated as params.yaml would be."""
    block = fam.model_dump()
    for key, value in params.items():
        section, _, name = key.partition(".")
        block[section] = {**block[section], name: value}
    if max_seconds is not None:
        block["train"]["max_seconds"] = min(fam.train.max_seconds or math.inf, max(max_seconds, 1.0))
    return ClassifierFamily.model_validate(block)


# --- storage and study

_STORAGES: dict[str, Any] = {}
_LOCK = threading.Lock()


def _storage(url: str):
    import optuna

    with _LOCK:
        if url not in _STORAGES:
            # Dask worker processes write the same SQLite file: wait for its lock rather than fail
            _STORAGES[url] = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 120}})
        return _STORAGES[url]


def _pruner(tuning: TuningConfig):
    import optuna

    if tuning.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, tuning.warmup_epochs))
    return optuna.pruners.MedianPruner(n_startup_trials=tuning.startup_trials, n_warmup_steps=tuning.warmup_epochs)


def open_study(name: str, url: str, tuning: TuningConfig, worker: int = 0):
    """The study (created when new) with the configured pruner and a TPE sampler seeded from
    tuning.seed, the worker and the trials the study holds: parallel workers, and a resumed search,
    must not draw the values an earlier one drew (TPE's first trials are random draws of its seed)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial is ours (_Objective)
    study = optuna.create_study(study_name=name, storage=_storage(url), pruner=_pruner(tuning), direction="maximize", load_if_exists=True)
    held = len(study.get_trials(deepcopy=False))
    seed = int(hashlib.sha256(f"{tuning.seed}-{worker}-{held}".encode()).hexdigest()[:8], 16)
    study.sampler = optuna.samplers.TPESampler(seed=seed)
    return study


def prepare_study(key: str, fam: ClassifierFamily, data_version: str, url: str, channels: int, tuning: TuningConfig) -> StudyPlan:
    """Open the family's study before any trial runs (under the workspace lock, so no trial of it is
    running): trials a killed search left RUNNING become FAIL and their values are queued again; a
    new study gets the current recipe as its first trial."""
    from optuna.trial import TrialState

    name = family_study_name(key, fam, data_version)
    study = open_study(name, url, tuning)
    new = not study.get_trials(deepcopy=False)
    requeued = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
        params = t.params or t.system_attrs.get("fixed_params") or {}
        study.enqueue_trial(params, user_attrs={**({DEFAULT_ATTR: True} if t.user_attrs.get(DEFAULT_ATTR) else {}), "retry_of": t.number})
        requeued.append(t.number)
    outside: list[str] = []
    if new:
        inside, outside = current_values(fam, channels)
        dims = {d.key: d for d in search_dims(fam.search)}
        # the current recipe as trial 0: a tuned recipe is never worse on validation than the default
        study.enqueue_trial({k: _encode(dims[k], v) for k, v in inside.items()}, user_attrs={DEFAULT_ATTR: not outside})
        study.set_user_attr("family", key)
        study.set_user_attr("data_version", data_version)
        study.set_user_attr("space", fam.search)
    return StudyPlan(key, name, url, tuple(requeued), new, tuple(outside))


# --- trials

_DATA: dict[tuple, Any] = {}


def load_data(data_dir: str | Path, cfg: Config):
    """The dataset at the training size, loaded once per process (every trial of every family reuses it)."""
    from components.training import runner

    key = (str(Path(data_dir).resolve()), cfg.data.model_dump_json(), cfg.engine.device)
    with _LOCK:
        if key not in _DATA:
            _DATA.clear()  # one dataset in memory at a time
            _DATA[key] = runner.load_for_training(Path(data_dir), cfg.data, cfg.engine)
        return _DATA[key]


def _param_strings(params: dict[str, Any]) -> dict[str, str]:
    return {k: json.dumps(v) if isinstance(v, (list, tuple, dict)) else str(v) for k, v in params.items()}


def _say(enabled: bool, message: str) -> None:
    if enabled:
        print(message, file=sys.stderr, flush=True)


class _Objective:
    """One trial: suggested values → a family → train_classifier on train, judged on validation."""

    def __init__(self, plan: StudyPlan, fam: ClassifierFamily, cfg: Config, data_dir: Path, work_dir: Path, deadline: float,
                 tracking: TrialTracking, threads: int | None):  # fmt: skip
        self.plan, self.fam, self.cfg, self.data_dir, self.work_dir, self.deadline, self.tracking = plan, fam, cfg, data_dir, work_dir, deadline, tracking
        update: dict[str, Any] = {"progress": False}  # the tune prints one line per trial instead
        if threads is not None:
            update["threads"] = threads
        self.engine = cfg.engine.model_copy(update=update)
        self.dims = search_dims(fam.search)
        self.loaded = load_data(data_dir, cfg)
        self.ran = 0
        self.last_error = ""

    def __call__(self, trial) -> float:
        import optuna

        try:
            return self._trial(trial)
        except optuna.TrialPruned:
            raise
        except Exception as exc:  # said in the error when MAX_FAILS_IN_A_ROW trials failed
            self.last_error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            raise

    def _trial(self, trial) -> float:
        import optuna

        from components.tracking import mlflow_store as store
        from components.training import runner

        params = {d.key: _suggest(trial, d) for d in self.dims}
        fam = apply_params(self.fam, params, max_seconds=self.deadline - time.time())  # fit stops after the epoch that crosses the budget
        key, c = self.plan.key, store.client()
        tags = {**self.tracking.tags, "study": self.plan.study, "trial": str(trial.number), "family": key,
                "default_recipe": str(bool(trial.user_attrs.get(DEFAULT_ATTR))).lower()}  # fmt: skip
        run_id = store.start_run(self.tracking.experiment_id, f"{key}-trial-{trial.number}", tags, _param_strings(params), self.tracking.parent_id)
        trial.set_user_attr("mlflow_run_id", run_id)
        epoch_log = store.EpochLogger(run_id)
        best, epochs = -1.0, 0

        def on_epoch_end(epoch: int, metrics: dict[str, float]) -> None:
            nonlocal best, epochs
            epoch_log(epoch, metrics)
            best, epochs = max(best, metrics["val_acc"]), epoch + 1
            trial.report(metrics["val_acc"], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"val acc {best:.4f} after epoch {epoch + 1} is below the other trials' at that epoch")

        out = self.work_dir / f"trial-{trial.number}-{uuid.uuid4().hex[:6]}"
        start, state, value, cut = time.perf_counter(), "FAIL", None, False
        try:
            res = runner.train_classifier(key, fam, self.engine, self.data_dir, out, on_epoch_end=on_epoch_end, loaded=self.loaded, data=self.cfg.data)
            value, state = float(res["val_acc"]), "COMPLETE"
            planned = resolve_recipe(fam.train, self.loaded[0].in_channels)
            cut = res["epochs_run"] < planned.epochs and res["epochs_run"] - 1 - res["best_epoch"] < planned.patience
            if cut:
                trial.set_user_attr("stopped_by_budget", True)
            return value
        except optuna.TrialPruned:
            state = "PRUNED"
            raise
        except KeyboardInterrupt:
            state = "KILLED"
            # Ctrl-C / SIGTERM: Optuna marks the trial FAIL; queue its values so the next `tune` runs it again
            trial.study.enqueue_trial(trial.params, user_attrs={**({DEFAULT_ATTR: True} if trial.user_attrs.get(DEFAULT_ATTR) else {}),
                                                                "retry_of": trial.number})  # fmt: skip
            raise
        finally:
            shutil.rmtree(out, ignore_errors=True)  # a trial's model is not kept: its recipe is
            self.ran += 1
            seconds = time.perf_counter() - start
            metrics = {"val_acc": value if value is not None else best, "epochs_run": epochs, "trial_seconds": seconds}
            store.log_metrics(run_id, {k: v for k, v in metrics.items() if v is not None and v >= 0})
            c.set_tag(run_id, "trial_state", state)
            if cut:
                c.set_tag(run_id, "stopped_by_budget", "true")
            c.set_terminated(run_id, {"COMPLETE": "FINISHED", "PRUNED": "FINISHED", "KILLED": "KILLED"}.get(state, "FAILED"))
            shown = f"{value:.4f}" if value is not None else (f"{best:.4f}" if best >= 0 else "-")
            _say(self.cfg.engine.progress, f"tune {key} trial {trial.number}: {state.lower()} val_acc={shown} epochs={epochs} {seconds:.0f}s "
                                           + " ".join(f"{k}={v}" for k, v in _param_strings(params).items()))  # fmt: skip


class _FailStreak:
    """Stops the study after MAX_FAILS_IN_A_ROW failed trials of this worker (a broken recipe would fail every trial until the budget ends)."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, study, trial) -> None:
        from optuna.trial import TrialState

        self.n = self.n + 1 if trial.state == TrialState.FAIL else 0
        if self.n >= MAX_FAILS_IN_A_ROW:
            study.stop()


def run_trials(plan: StudyPlan, cfg: Config, data_dir: str | Path, work_dir: str | Path, deadline: float, trials: int | None, tracking: TrialTracking,
               worker: int = 0, threads: int | None = None) -> int:  # fmt: skip
    """Run trials of the plan's study until `deadline` (time.time()) or until the study holds `trials`
    finished (complete + pruned) trials; several workers (processes) may run this on one study at
    once. Returns the number of trials this call ran."""
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    from components.tracking import mlflow_store as store

    store.use_tracking_uri(tracking.uri)  # this may run in a Dask worker
    fam = cfg.models.classifiers()[plan.key]
    study = open_study(plan.study, plan.storage, cfg.tuning, worker)
    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    streak = _FailStreak()
    callbacks: list[Callable] = [streak]
    if trials is not None:
        if len(study.get_trials(deepcopy=False, states=finished)) >= trials:
            return 0  # a resumed search that already has them
        callbacks.append(MaxTrialsCallback(trials, states=finished))
    timeout = deadline - time.time()
    if timeout <= 0:
        return 0
    objective = _Objective(plan, fam, cfg, Path(data_dir), Path(work_dir), deadline, tracking, threads)
    study.optimize(objective, timeout=timeout, callbacks=callbacks, catch=(Exception,), gc_after_trial=True)
    if streak.n >= MAX_FAILS_IN_A_ROW:
        raise TuneError(f"{plan.key}: {streak.n} trials in a row failed (study {plan.study}); the last: {objective.last_error}. "
                        f"Fix models.{plan.key} or its search: space and run `visionflow tune` again")  # fmt: skip
    return objective.ran


def summarize(plan: StudyPlan, tuning: TuningConfig, space: dict[str, Any], seconds: float) -> TuneResult:
    """The study's outcome: its best complete trial (ties: the earlier), the current recipe's value, counts by state."""
    from optuna.trial import TrialState

    study = open_study(plan.study, plan.storage, tuning)
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    best = max(complete, key=lambda t: (t.value, -t.number)) if complete else None
    default = next((t for t in sorted(complete, key=lambda t: t.number) if t.user_attrs.get(DEFAULT_ATTR)), None)
    dims = {d.key: d for d in search_dims(space)}
    params = {k: _decode(dims[k], v) if k in dims else v for k, v in (best.params if best else {}).items()}
    count = lambda s: sum(1 for t in trials if t.state == s)  # noqa: E731
    return TuneResult(plan.key, plan.study, best.value if best else None, params, count(TrialState.COMPLETE), count(TrialState.PRUNED),
                      count(TrialState.FAIL), default.value if default else None, seconds, best.number if best else None)  # fmt: skip


# --- the tuned profile


def tuned_block(params_file: str | Path, base_profile: str, results: list[TuneResult], overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The base profile's block + the --set overrides of the search (not tuning.*: they train nothing) + each
    family's best values where they beat its current recipe on validation, + tuning.studies (lineage)."""
    block = profile_block(params_file, base_profile)
    for item in overrides:
        key, value = parse_override(item)
        if not key.startswith("tuning."):
            _set_dotted(block, key, value)
    models = block.setdefault("models", {}) or {}
    block["models"] = models
    for r in results:
        if not r.improved:
            continue  # the current recipe stays: the search found nothing better on validation
        fam = models.get(r.key) or {}
        models[r.key] = fam
        for key, value in r.best_params.items():
            section, _, name = key.partition(".")
            fam[section] = {**(fam.get(section) or {}), name: value}
    tuning = block.get("tuning") or {}
    tuning["studies"] = {**(tuning.get("studies") or {}), **{r.key: r.study for r in results}}
    block["tuning"] = tuning
    return block


def _acc(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def write_tuned_profile(params_file: str | Path, base_profile: str, results: list[TuneResult], overrides: list[str] | tuple[str, ...] = ()) -> Path:
    """`params.tuned.yaml` beside the params file: profile `tuned` (see tuned_block), with a header
    saying what wrote it, when, and each family's study and validation accuracy (default → best)."""
    params_file = Path(params_file)
    if params_file.exists() and TUNED_PROFILE in ((yaml.safe_load(params_file.read_text()) or {}).get("profiles") or {}):
        raise TuneError(
            f"{params_file} defines a profile '{TUNED_PROFILE}': rename it, `visionflow tune` writes that profile into {tuned_params_file(params_file).name}"
        )
    block = tuned_block(params_file, base_profile, results, overrides)
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    lines = [f"# Written by `visionflow tune` at {stamp}: profile '{TUNED_PROFILE}' = profile '{base_profile}' + each family's best recipe",
             "# on the validation split (Optuna studies in the workspace's optuna.db). Use it: visionflow run --profile tuned",
             "# Running `visionflow tune` again rewrites this file."]  # fmt: skip
    kept = [o for o in overrides if not o.split("=", 1)[0].strip().startswith("tuning.")]
    if kept:
        lines.append(f"# --set of the search (in the profile below): {' '.join(kept)}")
    for r in results:
        verdict = f"best adopted (trial {r.best_trial})" if r.improved else "current recipe kept (the best is not above it)"
        lines.append(f"#   {r.key}: study {r.study}, {r.n_complete} complete / {r.n_pruned} pruned / {r.n_failed} failed trials; "
                     f"val acc {_acc(r.default_value)} (current recipe) → {_acc(r.best_value)} (best): {verdict}")  # fmt: skip
    text = "\n".join(lines) + "\n" + yaml.safe_dump({"profiles": {TUNED_PROFILE: block}}, sort_keys=False, default_flow_style=None, width=160)
    path = tuned_params_file(params_file)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # never a half-written profile
    return path


def log_results(parent_id: str, results: list[TuneResult], profile_path: Path | None, order: list[str] | None = None, notes: Sequence[str] = ()) -> None:
    """The invocation's parent run: each family's study, best values and accuracies; the order the budget
    went to the families (tuning.focus: leader) and the notes `tune` printed; the tuned profile as an artifact."""
    from components.tracking import mlflow_store as store

    c = store.client()
    if order:
        c.set_tag(parent_id, "focus_order", ",".join(order))
    if notes:
        c.set_tag(parent_id, "notes", "\n".join(notes)[:5000])
    metrics: dict[str, float] = {}
    for r in results:
        c.set_tag(parent_id, f"study.{r.key}", r.study)
        metrics.update({f"{r.key}.best_val_acc": r.best_value, f"{r.key}.default_val_acc": r.default_value, f"{r.key}.trials_complete": r.n_complete,
                        f"{r.key}.trials_pruned": r.n_pruned, f"{r.key}.trials_failed": r.n_failed})  # fmt: skip
        params = {f"best.{r.key}.{k}": v for k, v in _param_strings(r.best_params).items()}
        if params:
            from mlflow.entities import Param

            c.log_batch(parent_id, params=[Param(k, v[:6000]) for k, v in params.items()])
    store.log_metrics(parent_id, {k: v for k, v in metrics.items() if v is not None})
    if profile_path is not None:
        c.log_artifact(parent_id, str(profile_path))
