"""`tune_flow`: the checked-out data → an Optuna search per classifier family → the `tuned` profile.

Wiring only (components/training/tune.py does the work). One MLflow parent run per invocation in the
`<experiment>-tune` experiment, one nested run per trial. Families are searched one after another:
with `tuning.focus: leader` (default) each family's current recipe first, then the rest of the budget
best family first; with `even`, each with its share of what is left. With the Dask runner and
tuning.workers > 1, `workers` tasks of a family run trials of its one study at once (shared SQLite
storage). Only names, numbers and small frozen dataclasses cross task boundaries.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import TerminationSignal
from prefect.states import Failed
from prefect.task_runners import ThreadPoolTaskRunner

from components.config import Config, parse_duration
from components.data import versioning
from components.locking import workspace_lock
from components.process import STOP
from components.tracking import mlflow_store as store
from components.training import tune
from components.workspace import Workspace
from flows.data_flow import DataFlowResult, resolve
from flows.training_pipeline import _prepare_data, run_lineage


@dataclass
class TuneOutcome:
    results: list[tune.TuneResult]
    profile_file: str
    parent_run_id: str
    tracking_uri: str
    experiment: str
    data_version: str
    seconds: float
    notes: list[str] = field(default_factory=list)  # re-queued trials of a killed search, recipes outside the space


@task(name="prepare-study", cache_policy=NO_CACHE)
def prepare_study_task(key: str, cfg: Config, data_dir: str, data_version: str, storage: str) -> tune.StudyPlan:
    spec, _ = tune.load_data(data_dir, cfg)
    return tune.prepare_study(key, cfg.models.classifiers()[key], data_version, storage, spec.in_channels, cfg.tuning)


@task(name="search", cache_policy=NO_CACHE)
def search_task(plan: tune.StudyPlan, cfg: Config, data_dir: str, work_dir: str, deadline: float, trials: int | None, tracking: tune.TrialTracking,
                worker: int = 0, threads: int | None = None) -> int:  # fmt: skip
    return tune.run_trials(plan, cfg, data_dir, work_dir, deadline, trials, tracking, worker, threads)


@task(name="summarize-study", cache_policy=NO_CACHE)
def summarize_task(plan: tune.StudyPlan, cfg: Config, seconds: float) -> tune.TuneResult:
    return tune.summarize(plan, cfg.tuning, cfg.models.classifiers()[plan.key].search, seconds)


@flow(name="tune", task_runner=ThreadPoolTaskRunner(max_workers=1))
def tune_flow(root: str = ".", profile: str = "default", overrides: list[str] | None = None, cfg: Any = None, families: list[str] | None = None,
              budget: str | float | None = None, trials: int | None = None):  # fmt: skip
    """Search each family's `search:` space on the validation split within the budget and write the
    tuned profile (params.tuned.yaml). `overrides`: the --set of this search, carried into that profile."""
    cfg, ws = resolve(root, profile, overrides, cfg)
    with workspace_lock(ws.home, f"visionflow tune ({profile})", wait=-1, on_wait=get_run_logger().warning):
        return _tune(ws, cfg, profile, list(overrides or []), families, budget, trials)


def _tune(ws: Workspace, cfg: Config, profile: str, overrides: list[str], families: list[str] | None, budget: str | float | None, trials: int | None):
    start = time.perf_counter()
    keys = tune.select_families(cfg, families)
    seconds = parse_duration(budget) if budget is not None else cfg.tuning.budget_seconds()
    trials = trials if trials is not None else cfg.tuning.trials
    try:
        data = _prepare_data(ws, cfg, profile, None, None)
    except versioning.VersioningError as exc:
        return Failed(message=str(exc))
    if not isinstance(data, DataFlowResult):
        return data
    deadline = time.time() + seconds  # the budget counts from the data being ready
    data_dir = str(ws.data_dir(cfg.data.dir))
    lineage = run_lineage(ws, cfg, data.data_version, profile)
    experiment = tune.tune_experiment(cfg)
    uri, exp_id = store.configure(ws, cfg.tracking.uri, experiment)
    store.mark_stale_runs(exp_id)
    parent = store.start_run(exp_id, f"tune-{profile}-{time.strftime('%Y%m%d-%H%M%S')}", {**lineage, **store.process_tag(), "families": ",".join(keys)},
                             {**store.flatten({"tuning": cfg.tuning.model_dump(mode="json")}), "budget_seconds": str(seconds), "trials": str(trials)})  # fmt: skip
    tracking = tune.TrialTracking(uri, exp_id, parent, lineage)
    storage = tune.storage_url(ws.home)
    dask = cfg.orchestration.task_runner == "dask"
    workers = cfg.tuning.workers if dask else 1
    notes: list[str] = []
    log = get_run_logger()
    plans: dict[str, tune.StudyPlan] = {}
    spent = dict.fromkeys(keys, 0.0)

    def search(key: str, until: float, cap: int | None, n_workers: int) -> None:
        t = time.perf_counter()
        plan = plans[key]
        work_dir = str(ws.home / "tune" / plan.study)
        task_ = search_task.with_options(task_run_name=f"search-{key}")
        if dask:  # each worker: its own process, 1 torch thread, the same study
            for f in [task_.submit(plan, cfg, data_dir, work_dir, until, cap, tracking, w, 1) for w in range(n_workers)]:
                f.result()
        else:  # in the flow's thread (torch trains slower in a worker thread: flows/training_pipeline.py _start)
            task_(plan, cfg, data_dir, work_dir, until, cap, tracking)
        spent[key] += time.perf_counter() - t

    def summarize(key: str) -> tune.TuneResult:
        return summarize_task.with_options(task_run_name=f"summarize-{key}")(plans[key], cfg, spent[key])

    leader = cfg.tuning.focus == "leader" and len(keys) > 1
    try:
        for i, key in enumerate(keys):
            share = time.time() + max(0.0, deadline - time.time()) / (len(keys) - i)  # what earlier families left is shared on
            plan = prepare_study_task.with_options(task_run_name=f"prepare-{key}")(key, cfg, data_dir, data.data_version, storage)
            plans[key] = plan
            if plan.requeued:
                notes.append(f"{key}: trials {', '.join(map(str, plan.requeued))} of study {plan.study} were left running by a stopped search: "
                             "marked FAIL and run again")  # fmt: skip
            if plan.outside:
                notes.append(f"{key}: the current {', '.join(plan.outside)} lie outside the space; trial 0 is not the current recipe")
            log.info("%s: study %s (%s)", key, plan.study, "new" if plan.default_queued else "resumed")
            # leader: this pass measures the current recipe (trial 0; nothing on a study that has a finished trial)
            search(key, share, 1 if leader else trials, 1 if leader else workers)
        order = keys
        if leader:  # the rest of the budget, best family first; a `trials` cap hands what it leaves to the next
            order = tune.focus_order([summarize(k) for k in keys])
            log.info("tuning in this order (validation accuracy so far): %s", ", ".join(order))
            for key in order:
                if time.time() >= deadline:
                    break
                search(key, deadline, trials, workers)
        results = [summarize(k) for k in keys]
        searched = [r for r in results if not leader or r.searched]
        notes += [n for r in searched if (n := tune.pruner_idle_note(r, cfg.tuning, trials))]
        if leader and (note := tune.focus_note(order, results)):
            notes.append(note)
        path = tune.write_tuned_profile(ws.root / "params.yaml", profile, results, overrides)
        tune.log_results(parent, results, path, order if leader else None, notes)
    except BaseException as exc:
        killed = isinstance(exc, (KeyboardInterrupt, TerminationSignal))
        if killed:
            STOP.set()  # any training thread stops too
        store.end_run(parent, ok=False, killed=killed)
        raise
    store.end_run(parent, ok=True)
    return TuneOutcome(results, str(path), parent, uri, experiment, data.data_version, time.perf_counter() - start, notes)
