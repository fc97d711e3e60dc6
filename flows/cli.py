"""The `visionflow` command line. Heavy libraries are imported inside commands (fast `--help`)."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

from components.errors import VisionflowError


class _Group(TyperGroup):
    """The one place a visionflow error (components/errors.py) becomes one red line and its exit code, for every command."""

    def invoke(self, ctx):  # type: ignore[no-untyped-def]
        try:
            return super().invoke(ctx)
        except VisionflowError as exc:
            _fail(str(exc), exc.exit_code)


app = typer.Typer(
    cls=_Group,
    help="visionflow: image recognition from training data to a served model (Prefect, DVC, GX, MLflow, BentoML).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Data versions (DVC): status, pull.", no_args_is_help=True)
app.add_typer(data_app, name="data")
deploy_app = typer.Typer(help="Take the champion's image to a cluster: Kubernetes manifests, a local registry, podman kube play.", no_args_is_help=True)
app.add_typer(deploy_app, name="deploy")

ProfileOpt = Annotated[
    str | None, typer.Option("--profile", "-p", help="params.yaml profile: quick, default, full [default: visionflow --profile, else default]")
]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="override a knob: --set data.split.seed=1 (repeatable; after visionflow --set ones)")]
RootOpt = Annotated[Path, typer.Option("--root", help="project folder holding params.yaml and data.dvc")]


def _loopback(host: str) -> bool:
    import ipaddress

    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _fail(message: str, code: int = 1) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


@dataclass(frozen=True)
class ConfigOptions:
    """Which config a command reads: a params.yaml profile and `--set` overrides, applied in order."""

    profile: str = "default"
    overrides: tuple[str, ...] = ()


@app.callback()
def _global_options(
    ctx: typer.Context,
    profile: Annotated[str, typer.Option("--profile", "-p", help="params.yaml profile for every command: quick, default, full")] = "default",
    set_: Annotated[list[str] | None, typer.Option("--set", "-s", help="override a knob for every command: --set data.split.seed=1 (repeatable)")] = None,
) -> None:
    ctx.obj = ConfigOptions(profile, tuple(set_ or ()))
    token = _GIVEN.set(ctx.obj)  # for _options, in every command that reads the config, for this invocation only
    ctx.call_on_close(lambda: _GIVEN.reset(token))


_GIVEN: ContextVar[ConfigOptions | None] = ContextVar("visionflow_config_options", default=None)  # Typer vendors click: no public current context


def _options(profile: str | None = None, overrides: list[str] | None = None) -> ConfigOptions:
    """The one place the global `visionflow --profile/--set` meet a command's own: its --profile wins when given,
    its --set apply after the global ones (so they win knob by knob)."""
    given = _GIVEN.get() or ConfigOptions()
    return ConfigOptions(profile or given.profile, given.overrides + tuple(overrides or ()))


def _setup(root: Path, profile: str | None = None, overrides: list[str] | None = None):
    """Resolve the config once (fail before any work), then point every tool's state into the workspace."""
    from components.config import load_config
    from components.workspace import Workspace

    opts = _options(profile, overrides)
    cfg = load_config(root / "params.yaml", opts.profile, list(opts.overrides))  # a ConfigError: one line, exit 2 (_Group)
    ws = Workspace.for_config(root, cfg)
    ws.activate()
    return cfg, ws


WaitOpt = Annotated[bool, typer.Option("--wait", help="if another run/ingest/retrain holds the workspace, wait for it instead of exiting")]


@contextmanager
def _writer(ws, command: str, wait: bool):
    """One writer per workspace (components/locking.py); SIGTERM stops the command as Ctrl-C does."""
    from components.locking import WorkspaceBusy, workspace_lock
    from components.process import stop_on_sigterm

    stop_on_sigterm()
    try:
        with workspace_lock(ws.home, command, wait=-1 if wait else 0, on_wait=lambda m: typer.echo(m, err=True)) as note:
            if note:
                typer.echo(note, err=True)
            yield
    except WorkspaceBusy as exc:
        _fail(str(exc))
    except KeyboardInterrupt as exc:
        _fail(f"{command} stopped ({exc or 'Ctrl-C'}); open MLflow runs were marked KILLED, no alias moved, the lock is released", 130)


def _result_or_fail(state):
    """A flow's result; a failed state becomes one line (the validation verdict, or the crash)."""
    if state.is_failed():
        try:
            state.result()
        except Exception as exc:  # noqa: BLE001 - a crash, not a validation verdict: say what it was
            _fail(state.message if "validation" in (state.message or "") else f"{type(exc).__name__}: {exc}")
        _fail(state.message or "the flow failed")
    return state.result()


def _run_data_flow(root: Path, profile: str | None, overrides: list[str] | None, source: str | None, wait: bool = False):
    cfg, ws = _setup(root, profile, overrides)
    with _writer(ws, "visionflow ingest", wait):
        from flows.data_flow import data_flow

        state = data_flow(root=str(ws.root), profile=cfg.profile, source=source, cfg=cfg, progress=sys.stderr.isatty(), return_state=True)
        return _result_or_fail(state)


def _print_data_result(result) -> None:
    from rich.console import Console

    out = Console(soft_wrap=True)
    out.print(f"[green]{result.summary}[/green]")
    out.print(f"data version : [bold]{result.data_version}[/bold]  (data.dvc; commit it to pin this version)")
    out.print(f"dataset      : {result.data_dir}  ({result.n_images} images, {len(result.classes)} classes)")
    if result.data_docs:
        out.print(f"Data Docs    : {result.data_docs}")


@app.command()
def ingest(
    source: Annotated[str | None, typer.Option("--source", help="folder of class sub-folders (default: params.yaml data.source)")] = None,
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    wait: WaitOpt = False,
    root: RootOpt = Path("."),
) -> None:
    """Ingest a dataset into data/, validate it (Great Expectations) and version it (DVC)."""
    _print_data_result(_run_data_flow(root, profile, set_, source, wait))


@app.command()
def validate(profile: ProfileOpt = None, set_: SetOpt = None, root: RootOpt = Path(".")) -> None:
    """Re-validate data/ as it is on disk (every file decoded again)."""
    cfg, ws = _setup(root, profile, set_)
    from components.data.validation import validate as run_validation

    data_dir = ws.data_dir(cfg.data.dir)
    if not (data_dir / "manifest.csv").exists():
        _fail(f"{data_dir}/manifest.csv is missing; run `visionflow ingest` (or `visionflow data pull`) first")
    report = run_validation(data_dir, cfg.validation, cfg.data.split, docs_dir=ws.data_docs_dir, max_pixels=cfg.data.max_pixels)
    if not report.success:
        lines = [report.summary()] + [f"  - {f.line()}" for f in report.failures]
        _fail("\n".join(lines))
    typer.secho(report.summary(), fg=typer.colors.GREEN)
    if report.data_docs:
        typer.echo(f"Data Docs: {report.data_docs}")


@data_app.command("status")
def data_status(root: RootOpt = Path(".")) -> None:
    """Which data version data.dvc points at, and whether data/ matches it."""
    cfg, ws = _setup(root)
    from components.data import versioning

    st = versioning.status(ws, cfg.data.dir)
    if st.version is None:
        _fail(f"{cfg.data.dir}.dvc not found in {ws.root}; run `visionflow ingest` first")
    typer.echo(f"data version : {st.version}")
    if st.workspace_matches:
        typer.secho(f"workspace    : {cfg.data.dir}/ matches ({st.n_files} files)", fg=typer.colors.GREEN)
        return
    typer.secho(f"workspace    : {cfg.data.dir}/ differs from {cfg.data.dir}.dvc", fg=typer.colors.YELLOW)
    for change in st.changes[:20]:
        typer.echo(f"  {change}")
    if len(st.changes) > 20:
        typer.echo(f"  ... {len(st.changes) - 20} more")
    raise typer.Exit(1)


@data_app.command("pull")
def data_pull(root: RootOpt = Path(".")) -> None:
    """Fetch the version data.dvc points at from the DVC remote into data/."""
    cfg, ws = _setup(root)
    from components.data import versioning

    versioning.ensure_repo(ws, cfg.data.dvc_remote)
    try:
        version = versioning.pull(ws, cfg.data.dir)
    except Exception as exc:  # noqa: BLE001 - DVC's errors are long; one line is enough here
        _fail(f"dvc pull failed: {str(exc).splitlines()[0]}; is the remote reachable and the version pushed?")
    typer.secho(f"checked out data version {version} into {ws.data_dir(cfg.data.dir)}", fg=typer.colors.GREEN)


@app.command()
def run(
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    source: Annotated[str | None, typer.Option("--source", help="ingest this image folder first (a new data version), then train on it")] = None,
    data_version: Annotated[
        str | None, typer.Option("--data-version", help="train on an earlier data version: its DVC md5 or a git revision of data.dvc")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="retrain even when data and config are unchanged")] = False,
    tune_budget: Annotated[
        str | None,
        typer.Option("--tune", help="first search each family's recipe for up to this long (as `visionflow tune --budget`), then train with profile tuned"),
    ] = None,
    wait: WaitOpt = False,
    task_runner: Annotated[str | None, typer.Option("--task-runner", help="thread (default) or dask: where the families train")] = None,
    dask_address: Annotated[
        str | None, typer.Option("--dask-address", help="tcp://host:8786 of a Dask scheduler (implies --task-runner dask); none: a LocalCluster")
    ] = None,
    root: RootOpt = Path("."),
) -> None:
    """The main job (`make run`): train every family on the checked-out data version → evaluate → MLflow → champion → Bento."""
    if tune_budget is not None:
        from components.config import parse_duration

        try:
            parse_duration(tune_budget)
        except ValueError as exc:
            _fail(f"--tune {tune_budget!r}: {exc}", 2)
        if source or data_version:
            _fail("--tune searches on the checked-out data: ingest (`visionflow ingest --source ...`) or check out the version first, then `run --tune`", 2)
        _tune(root, profile, set_, None, tune_budget, None, task_runner, wait)
        profile, set_ = "tuned", None  # profile tuned holds this run's profile and --set, and the best recipes
    overrides = list(set_ or [])
    if task_runner or dask_address:
        overrides.append(f"orchestration.task_runner={task_runner or 'dask'}")
    if dask_address:
        overrides.append(f"orchestration.dask_address={dask_address}")
    cfg, ws = _setup(root, profile, overrides)
    from rich.console import Console

    from flows.runners import shared_prefect_api, task_runner_for
    from flows.training_pipeline import training_pipeline

    pipeline = training_pipeline.with_options(task_runner=task_runner_for(cfg.orchestration))
    with _writer(ws, f"visionflow run ({cfg.profile})", wait), shared_prefect_api(cfg.orchestration):
        state = pipeline(root=str(ws.root), profile=cfg.profile, cfg=cfg, source=source, data_version=data_version, force=force, return_state=True)
        res = _result_or_fail(state)
    out = Console(soft_wrap=True)
    out.print(res.table)
    if res.cached:
        out.print(f"\ncached       : {', '.join(res.cached)} (unchanged data + config: training skipped; --force retrains)")
    if res.evaluations_cached:
        out.print(f"evaluations  : {', '.join(res.evaluations_cached)} from the cache (same weights, test data and evaluation code)")
    out.print(f"\nselection    : {res.decision}")
    from components.tracking.promotion import summary_lines

    for line in summary_lines(res.aliases, res.registered):  # who holds each alias now, and what this run registered, each with its reason
        out.print(line, markup=False)
    if res.bento:
        out.print(f"bento        : {res.bento}  (serve: `visionflow serve`; Dockerfile in .visionflow/reports/bento/)")
    out.print(f"data version : {res.data_version}")
    out.print(f"report       : {res.report}  (also .visionflow/reports/latest/)")
    if res.data_docs:
        out.print(f"Data Docs    : {res.data_docs}")
    out.print(f"MLflow       : {res.tracking_uri}, parent run {res.parent_run_id}; browse with `visionflow ui`")
    out.print(f"done in {res.seconds:.0f}s")


@app.command()
def tune(
    family: Annotated[
        list[str] | None, typer.Option("--family", help="a classifier family to tune (repeatable) [default: tuning.families, else every enabled one]")
    ] = None,
    budget: Annotated[
        str | None, typer.Option("--budget", help="wall clock for all families together: 90s, 20m, 1h or seconds [default: tuning.budget]")
    ] = None,
    trials: Annotated[
        int | None, typer.Option("--trials", min=1, help="per family: finished trials the study should hold (a re-run resumes) [default: tuning.trials]")
    ] = None,
    task_runner: Annotated[
        str | None, typer.Option("--task-runner", help="thread (default) or dask: dask runs tuning.workers trials of a family at once")
    ] = None,
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    wait: WaitOpt = False,
    root: RootOpt = Path("."),
) -> None:
    """Search each classifier family's recipe (`search:` in params.yaml) with Optuna on the validation split; the best become profile `tuned`."""
    _tune(root, profile, set_, family, budget, trials, task_runner, wait)
    typer.echo("next: visionflow run --profile tuned")


def _tune(root: Path, profile: str | None, set_: list[str] | None, family: list[str] | None, budget: str | None, trials: int | None,
          task_runner: str | None, wait: bool) -> None:  # fmt: skip
    """`visionflow tune`, also the first step of `visionflow run --tune`: search, write profile tuned, print what was chosen."""
    from components.config import parse_duration

    if budget is not None:
        try:
            parse_duration(budget)
        except ValueError as exc:
            _fail(f"--budget {budget!r}: {exc}", 2)
    if task_runner not in (None, "thread", "dask"):
        _fail(f"--task-runner {task_runner!r}: use thread or dask", 2)
    cfg, ws = _setup(root, profile, [*(set_ or []), *([f"orchestration.task_runner={task_runner}"] if task_runner else [])])
    from components.training.tune import select_families

    select_families(cfg, family)  # an unknown family or an empty space: one line before any work (ConfigError, exit 2)
    opts = _options(profile, set_)
    from rich.console import Console
    from rich.table import Table

    from flows.runners import shared_prefect_api, task_runner_for
    from flows.tune import tune_flow

    flow_ = tune_flow.with_options(task_runner=task_runner_for(cfg.orchestration))
    with _writer(ws, f"visionflow tune ({cfg.profile})", wait), shared_prefect_api(cfg.orchestration):
        state = flow_(root=str(ws.root), profile=cfg.profile, overrides=list(opts.overrides), cfg=cfg, families=family, budget=budget, trials=trials,
                      return_state=True)  # fmt: skip
        res = _result_or_fail(state)
    acc = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    table = Table("family", "trials complete/pruned/failed", "val acc: current → best", "profile tuned takes")
    for r in res.results:
        table.add_row(r.key, f"{r.n_complete}/{r.n_pruned}/{r.n_failed}", f"{acc(r.default_value)} → {acc(r.best_value)}",
                      f"the best (trial {r.best_trial})" if r.improved else "the current recipe")  # fmt: skip
    out = Console(soft_wrap=True)
    out.print(table)
    for r in res.results:
        out.print(f"{r.key:<13}: study {r.study} (a re-run with this space and data resumes it); {r.seconds:.0f}s", markup=False)
        out.print(f"{'':<13}  best: {', '.join(f'{k}={v}' for k, v in r.best_params.items()) or '-'}", markup=False)
    for note in res.notes:
        out.print(f"note         : {note}", markup=False)
    out.print(f"tuned profile: {res.profile_file}  (profile tuned = profile {cfg.profile} + the best recipes; commit it to pin them)", markup=False)
    out.print(f"MLflow       : {res.tracking_uri}, experiment {res.experiment}, parent run {res.parent_run_id} (one nested run per trial)", markup=False)
    out.print(f"tuned in {res.seconds:.0f}s", markup=False)


@app.command()
def reproduce(
    run_id: Annotated[str, typer.Argument(help="MLflow run id of a pipeline (parent) run")],
    check: Annotated[bool, typer.Option("--check", help="exit 1 if any metric differs from the original")] = False,
    wait: WaitOpt = False,
    root: RootOpt = Path("."),
) -> None:
    """Re-run a past pipeline run from its record (config, data version, code) and compare its metrics."""
    cfg, ws = _setup(root)
    from rich.console import Console
    from rich.table import Table

    from components.data.versioning import git_commit
    from components.lineage import code_version
    from components.tracking import mlflow_store as store
    from components.tracking.reproduce import compare, load_record

    store.configure(ws, cfg.tracking.uri, cfg.tracking.experiment)
    rec = load_record(run_id)
    out = Console(soft_wrap=True)
    now_commit, now_code = git_commit(ws.root), code_version()
    if rec.code_version == now_code:
        out.print(f"code         : matches the run's (code version {now_code}; commit then {rec.git_commit}, now {now_commit})")
    else:
        out.print(f"[yellow]code differs : the run used code version {rec.code_version} (commit {rec.git_commit}), this checkout is {now_code} "
                  f"(commit {now_commit}); `git diff {rec.git_commit} -- components/` shows how. Models retrain with this code.[/yellow]")  # fmt: skip
    out.print(f"re-running   : {run_id} (profile {rec.profile}, data version {rec.data_version}, its recorded config)")
    from flows.training_pipeline import training_pipeline

    with _writer(ws, f"visionflow reproduce {run_id}", wait):
        state = training_pipeline(
            root=str(ws.root), profile=rec.profile, cfg=rec.config, data_version=rec.data_version, force=True, promote=False, return_state=True
        )
        res = _result_or_fail(state)
    rows = compare(rec.metrics, res.metrics)
    table = Table("model", "metric", "original", "reproduced", "equal")
    for r in rows:
        fmt = lambda v: "-" if v is None else f"{v:.6f}"  # noqa: E731
        table.add_row(r.model, r.metric, fmt(r.original), fmt(r.reproduced), "yes" if r.equal else "[red]no[/red]")
    out.print(table)
    same = all(r.equal for r in rows)
    out.print(f"reproduction : parent run {res.parent_run_id}; {'every metric equal' if same else 'metrics differ'} (registry untouched)")
    if check and not same:
        raise typer.Exit(1)


@app.command("train-ddp")
def train_ddp(
    family: Annotated[str, typer.Option("--family", help="classifier section of params.yaml: cnn, rnn, cnn_lstm, feature_fusion")],
    nproc_per_node: Annotated[int, typer.Option("--nproc-per-node", min=1, help="processes (GPUs) on this machine")] = 2,
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    root: RootOpt = Path("."),
) -> None:
    """Train one family on several processes/GPUs with torchrun (DDP: NCCL on GPUs, gloo on CPUs)."""
    from components.process import run_server

    cfg, _ = _setup(root, profile, set_)  # a bad knob or family fails here, once, not in every rank
    if family not in cfg.models.classifiers():
        _fail(f"--family {family!r} is not an enabled classifier family (choose from: {', '.join(cfg.models.classifiers())})", 2)
    opts = _options(profile, set_)  # the ranks resolve the same config
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc_per_node}",
           "-m", "components.training.ddp", "--family", family, "--profile", opts.profile, "--root", str(root)]  # fmt: skip
    for item in opts.overrides:
        cmd += ["--set", item]
    raise typer.Exit(run_server(cmd))  # signals reach torchrun and every rank


@app.command()
def ui(
    port: Annotated[int, typer.Option(help="port on 127.0.0.1")] = 5000,
    host: Annotated[str, typer.Option(help="interface to bind: loopback only (the UI has no login)")] = "127.0.0.1",
    root: RootOpt = Path("."),
) -> None:
    """Start the MLflow UI on 127.0.0.1 over the workspace's store and print the URL."""
    import os

    if not _loopback(host):
        _fail(f"--host {host}: the MLflow UI has no login and can move aliases; it binds loopback only. "
              "Reach it through `ssh -L 5000:127.0.0.1:5000` or an authenticating reverse proxy", 2)  # fmt: skip
    cfg, ws = _setup(root)
    from components.tracking import mlflow_store as store

    uri = cfg.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI") or store.default_uri(ws)
    if not uri.startswith("sqlite:"):
        _fail(f"tracking URI {uri} is a server already: open it in a browser")
    ws.mlflow_dir.mkdir(parents=True, exist_ok=True)
    typer.echo(f"MLflow UI: http://127.0.0.1:{port}  (store {uri}; Ctrl-C stops it)")
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--default-artifact-root",
           (ws.mlflow_dir / "artifacts").as_uri(), "--host", host, "--port", str(port), "--workers", "1"]  # fmt: skip
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    from components.process import run_server

    raise typer.Exit(run_server(cmd, env=env))  # SIGTERM/SIGINT reach the whole server process group


@app.command()
def schedule(
    cron: Annotated[str | None, typer.Option("--cron", help='cron schedule, e.g. "0 3 * * 1" (default: params.yaml schedule.cron)')] = None,
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    source: Annotated[str | None, typer.Option("--source", help="image folder to retrain on (default: params.yaml data.source)")] = None,
    root: RootOpt = Path("."),
) -> None:
    """Register the scheduled maintenance deployments on a Prefect server and serve them (blocks): retrain_flow
    (data change/drift → retrain) on --cron, monitor_flow (production drift → retrain) on monitor.cron."""
    import os

    cfg, ws = _setup(root, profile, set_)
    opts = _options(profile, set_)  # what each scheduled run resolves again
    if not os.environ.get("PREFECT_API_URL"):
        _fail("PREFECT_API_URL is not set: start a server (`prefect server start --host 127.0.0.1 --port 4200`) "
              "and export PREFECT_API_URL=http://127.0.0.1:4200/api")  # fmt: skip
    from prefect.schedules import Cron

    from flows.retrain import retrain_flow

    cron = cron or cfg.schedule.cron
    name = cfg.schedule.deployment
    try:
        schedule_ = Cron(cron)
    except Exception as exc:  # noqa: BLE001
        _fail(f"--cron {cron!r} is not a valid cron expression: {exc}", 2)
    params = {"root": str(ws.root), "profile": opts.profile, "overrides": list(opts.overrides), "source": source}
    from prefect import serve as serve_deployments

    from flows.monitor import monitor_flow
    from flows.rollout import rollout_flow

    monitor_params = {k: v for k, v in params.items() if k != "source"}
    typer.echo(f"deployment retrain_flow/{name}: cron '{cron}', profile {opts.profile}")
    typer.echo(f"deployment monitor_flow/{name}-monitor: cron '{cfg.monitor.cron}' (production drift → retrain); serving runs until Ctrl-C")
    serve_deployments(
        retrain_flow.to_deployment(name=name, schedules=[schedule_], parameters=params),
        monitor_flow.to_deployment(name=f"{name}-monitor", schedules=[Cron(cfg.monitor.cron)], parameters=monitor_params),
        rollout_flow.to_deployment(name=f"{name}-rollout", schedules=[Cron(cfg.monitor.cron)], parameters=monitor_params),
        print_starting_message=True,
    )


@app.command()
def retrain(
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    source: Annotated[str | None, typer.Option("--source", help="image folder (default: params.yaml data.source)")] = None,
    force: Annotated[bool, typer.Option("--force", help="retrain even without a data change or drift")] = False,
    wait: WaitOpt = False,
    root: RootOpt = Path("."),
) -> None:
    """One maintenance pass now: ingest, drift check against the champion, retrain if needed."""
    cfg, ws = _setup(root, profile, set_)
    with _writer(ws, "visionflow retrain", wait):
        from flows.retrain import retrain_flow

        state = retrain_flow(root=str(ws.root), profile=cfg.profile, cfg=cfg, source=source, force=force, return_state=True)
        res = _result_or_fail(state)
    typer.echo(f"retrained    : {'yes' if res['retrained'] else 'no'} ({res['reason']})")
    for k, v in res["metrics"].items():
        typer.echo(f"  {k:<24} {v:.4f}")
    if res["retrained"]:
        typer.echo(f"selection    : {res['decision']}")


@app.command()
def monitor(
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    window_hours: Annotated[float | None, typer.Option("--window-hours", help="hours of served predictions to compare (default: monitor.window_hours)")] = None,
    retrain: Annotated[
        bool | None, typer.Option("--retrain/--no-retrain", help="start a retrain when drift or live accuracy fires [default: monitor.retrain]")
    ] = None,
    inference_log: Annotated[
        list[Path] | None, typer.Option("--inference-log", help="merge these logs first: files or folders of inference*.db copied from pods (repeatable)")
    ] = None,
    root: RootOpt = Path("."),
) -> None:
    """Compare what the champion served (the inference log) with its training data; report, and retrain on drift."""
    cfg, ws = _setup(root, profile, set_)
    if inference_log:
        from components.monitoring.inference_log import InferenceLog

        files = [f for p in inference_log for f in (sorted(p.glob("inference*.db")) if p.is_dir() else [p])]
        missing = [str(f) for f in files if not f.is_file()] or ([] if files else [", ".join(map(str, inference_log))])
        if missing:
            _fail(f"--inference-log: no inference log at {missing[0]} (a pod's file: kubectl cp POD:/var/lib/visionflow ./pod-logs)", 2)
        log = InferenceLog(ws.inference_log)
        for f in files:
            typer.echo(f"merged       : {f} ({log.absorb(f)} predictions new or with newer feedback)")
        log.close()
    if retrain is not None:
        cfg = cfg.model_copy(update={"monitor": cfg.monitor.model_copy(update={"retrain": retrain})})
    if not ws.inference_log.exists():
        _fail(f"no inference log at {ws.inference_log}: serve the champion (`visionflow serve`) and send it requests first")
    from flows.monitor import monitor_flow

    res = _result_or_fail(monitor_flow(root=str(ws.root), profile=cfg.profile, cfg=cfg, window_hours=window_hours, return_state=True))
    typer.echo(f"champion     : {res.get('model_name', '?')} v{res.get('model_version', '?')}, {res.get('n', 0)} predictions, "
               f"{res.get('n_feedback', 0)} with feedback")  # fmt: skip
    for k, v in res["metrics"].items():
        typer.echo(f"  {k:<28} {v:.4f}")
    typer.echo(f"report       : {res['report']}")
    from flows.monitor import verdict

    typer.echo(f"decision     : {verdict(res)} ({res['reason']})")
    if res.get("retrained"):
        out = res["retrain_result"]
        typer.echo(f"retrained    : {'yes' if out['retrained'] else 'no'} ({out['reason']})")
        if out.get("decision"):
            typer.echo(f"selection    : {out['decision']}")


@app.command()
def package(
    image: Annotated[bool, typer.Option("--image", help="also build an OCI image of the Bento (no network needed)")] = False,
    flavour: Annotated[str, typer.Option("--flavour", help="slim: ONNX on onnxruntime, no torch (the image default); full: PyTorch, every endpoint")] = "",
    tag: Annotated[str | None, typer.Option("--tag", help="local image name:tag [default localhost/visionflow-classifier:v<N>-<flavour>]")] = None,
    builder: Annotated[str | None, typer.Option("--builder", help="podman | buildah | docker [default: the first on PATH]")] = None,
    base_image: Annotated[str | None, typer.Option("--base-image", help="a local base image with python3 of the host's minor version")] = None,
    base_image_from_debian: Annotated[
        bool, typer.Option("--base-image-from-debian", help="make the base image from Debian's packages (debootstrap; root; cached)")
    ] = False,
    push: Annotated[str | None, typer.Option("--push", help="push the image to REGISTRY/REPO[:TAG] (TLS verified except on loopback)")] = None,
    version: Annotated[str | None, typer.Option("--version", help="package this version of visionflow-classifier [default: the champion]")] = None,
    root: RootOpt = Path("."),
) -> None:
    """Import the champion (and generator) into the BentoML store and build a Bento; with --image, an OCI image of it (--push: into a registry)."""
    cfg, ws = _setup(root)
    from components.packaging.bento import FLAVOURS
    from components.tracking import mlflow_store as store

    flavour = flavour or ("slim" if image else "full")
    if flavour not in FLAVOURS:
        _fail(f"--flavour {flavour}: use slim or full", 2)
    if (push or tag or builder or base_image or base_image_from_debian) and not image:
        _fail("--push, --tag, --builder and --base-image* build an image: add --image", 2)
    store.configure(ws, cfg.tracking.uri, cfg.tracking.experiment)
    if not image:
        from components.packaging.bento import package as build

        try:
            res = build(ws, classifier_version=version, flavour=flavour)
        except LookupError as exc:
            _fail(str(exc))
        typer.secho(f"bento        : {res.bento_tag}", fg=typer.colors.GREEN)
        for role, mtag in res.model_tags.items():
            typer.echo(f"{role:<13}: {mtag}")
        typer.echo(f"bento folder : {res.bento_path}")
        typer.echo(f"serve it     : BENTOML_HOME={ws.bentoml_home} bentoml serve {res.bento_tag}")
        typer.echo("image        : visionflow package --image [--push REGISTRY/REPO]")
        return
    from components.packaging.image import release_image

    try:
        rel = release_image(ws, flavour=flavour, builder=builder, base_image=base_image, base_from_debian=base_image_from_debian, ref=tag, push=push,
                            version=version)  # fmt: skip
    except LookupError as exc:
        _fail(str(exc))
    b = rel.build
    typer.secho(
        f"image        : {b.ref}  ({b.flavour}, {b.size_bytes / 1e6:,.0f} MB, built by {b.builder} in {b.seconds:.0f} s with no network)", fg=typer.colors.GREEN
    )
    typer.echo(f"image id     : {b.image_id}")
    typer.echo(f"serves       : {rel.model_name} v{rel.model_version} (bento {rel.bento_tag}); base {b.base_image}")
    if rel.onnx:
        typer.echo(f"onnx         : opset {rel.onnx['onnx.opset']}, parity on the test split: {rel.onnx['onnx.parity']}")
    if rel.pushed:
        typer.secho(f"pushed       : {rel.pushed}", fg=typer.colors.GREEN)
        typer.echo(f"deploy it    : visionflow deploy manifests --image {rel.pushed} --out deploy/")
    else:
        typer.echo(f"run it       : podman run --rm -p 3000:3000 {b.ref}   (push: add --push REGISTRY/REPO)")
    typer.echo(f"recorded on  : {rel.model_name} v{rel.model_version} tags image.{b.flavour}.*")


@app.command()
def serve(
    port: Annotated[int, typer.Option(help="port on 127.0.0.1")] = 3000,
    host: Annotated[str, typer.Option(help="interface to bind")] = "127.0.0.1",
    model: Annotated[str, typer.Option(help="registered model URI")] = "models:/visionflow-classifier@champion",
    poll: Annotated[float, typer.Option(help="seconds between alias checks (hot swap)")] = 5.0,
    workers: Annotated[int | None, typer.Option(min=1, help="worker processes [default 1]")] = None,
    batching: Annotated[bool | None, typer.Option("--batching/--no-batching", help="adaptive batching of concurrent requests [default on]")] = None,
    max_batch_size: Annotated[int | None, typer.Option(min=1, help="images per batched forward pass [default 32]")] = None,
    max_latency_ms: Annotated[int | None, typer.Option(min=1, help="batching latency budget, ms [default 500]")] = None,
    max_in_flight: Annotated[int | None, typer.Option(min=1, help="requests in flight per worker; more get 503 + Retry-After [default 32]")] = None,
    access_log: Annotated[bool | None, typer.Option("--access-log/--no-access-log", help="one JSON line per request on stderr [default off]")] = None,
    root: RootOpt = Path("."),
) -> None:
    """Serve the champion over HTTP (BentoML); switches models when the alias moves. Beyond loopback only with VISIONFLOW_API_KEY set."""
    import os

    if not _loopback(host) and not os.environ.get("VISIONFLOW_API_KEY"):
        _fail(f"--host {host} puts the service on the network: export VISIONFLOW_API_KEY=<a long random secret> first "
              "(clients then send 'Authorization: Bearer <key>'), or bind 127.0.0.1", 2)  # fmt: skip
    cfg, ws = _setup(root)
    from components.tracking import mlflow_store as store

    uri = cfg.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI") or store.default_uri(ws)
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "VISIONFLOW_ROOT": str(ws.root), "VISIONFLOW_HOME": str(ws.home), "VISIONFLOW_MODEL_URI": model,
           "VISIONFLOW_POLL_SECONDS": str(poll)}  # fmt: skip
    shape = {"VISIONFLOW_WORKERS": workers, "VISIONFLOW_MAX_BATCH_SIZE": max_batch_size, "VISIONFLOW_MAX_LATENCY_MS": max_latency_ms,
             "VISIONFLOW_MAX_IN_FLIGHT": max_in_flight, "VISIONFLOW_BATCHING": None if batching is None else ("on" if batching else "off"),
             "VISIONFLOW_ACCESS_LOG": None if access_log is None else ("on" if access_log else "off")}  # fmt: skip
    env.update({k: str(v) for k, v in shape.items() if v is not None})
    typer.echo(f"serving {model} from {uri} on http://{host}:{port}  (ready when GET /healthz is 200)")
    cmd = [sys.executable, "-m", "bentoml", "serve", "serving.service:Visionflow", "--host", host, "--port", str(port)]
    from components.process import run_server

    raise typer.Exit(run_server(cmd, env=env, cwd=str(ws.root)))  # SIGTERM/SIGINT reach the whole server process group


@app.command()
def promote(
    name: Annotated[str, typer.Argument(help="registered model, e.g. visionflow-classifier or visionflow-cnn")],
    version: Annotated[str, typer.Argument(help="its version number")],
    root: RootOpt = Path("."),
) -> None:
    """Move the `champion` alias by hand (recorded as manual, with who and when)."""
    cfg, ws = _setup(root)
    from components.tracking import mlflow_store as store

    store.configure(ws, cfg.tracking.uri, cfg.tracking.experiment)
    target = store.promote(name, version)
    typer.secho(f"champion is now {store.CLASSIFIER_MODEL} v{target} (from {name} v{version})", fg=typer.colors.GREEN)


@deploy_app.command("manifests")
def deploy_manifests(
    image: Annotated[str | None, typer.Option("--image", help="REGISTRY/REPO@sha256:… [default: the champion's pushed image]")] = None,
    out: Annotated[Path, typer.Option("--out", help="folder for the YAML (kustomization.yaml + one file per object, podman.yaml)")] = Path("deploy"),
    replicas: Annotated[int, typer.Option("--replicas", help="pods (the HPA scales up to 2×)")] = 2,
    namespace: Annotated[str | None, typer.Option("--namespace", help="namespace of every object [default: kubectl's]")] = None,
    name: Annotated[str, typer.Option("--name", help="name of the Deployment, Service, HPA and PDB")] = "visionflow",
    flavour: Annotated[str | None, typer.Option("--flavour", help="slim or full, when the champion has both images [default slim]")] = None,
    podman_port: Annotated[int, typer.Option("--podman-port", help="host port podman.yaml publishes on this machine")] = 3000,
    root: RootOpt = Path("."),
) -> None:
    """Write Kubernetes YAML for the champion (Deployment by digest, Service, HPA, PDB, ConfigMap, PVC, kustomization), validated against the schemas."""
    cfg, ws = _setup(root)
    from components.delivery.deploy import champion_manifests
    from components.delivery.manifests import K8S_VERSION, ManifestOptions
    from components.tracking import mlflow_store as store

    store.configure(ws, cfg.tracking.uri, cfg.tracking.experiment)
    try:
        plan = champion_manifests(
            out, ManifestOptions(name=name, namespace=namespace, replicas=replicas), image=image, flavour=flavour, podman_port=podman_port
        )
    except LookupError as exc:
        _fail(str(exc))
    typer.secho(f"manifests    : {out}/ ({', '.join(p.name for p in plan.files)}), valid for Kubernetes {K8S_VERSION}", fg=typer.colors.GREEN)
    typer.echo(f"serves       : {plan.model_name} v{plan.model_version} (champion), image {plan.image} ({plan.flavour})")
    typer.echo(
        f"API key      : kubectl create secret generic visionflow-api-key --from-literal=api-key=<a long random secret>{f' -n {namespace}' if namespace else ''}"
    )
    typer.echo(f"apply        : kubectl apply -k {out}")
    typer.echo(f"try it here  : VISIONFLOW_API_KEY=<secret> visionflow deploy play --out {out}   (podman kube play)")


@deploy_app.command("play")
def deploy_play(
    out: Annotated[Path, typer.Option("--out", help="the folder `deploy manifests` wrote")] = Path("deploy"),
    timeout: Annotated[float, typer.Option(help="seconds to wait for /readyz")] = 120.0,
    port: Annotated[int, typer.Option("--port", help="the host port podman.yaml publishes (deploy manifests --podman-port)")] = 3000,
) -> None:
    """Run the manifests on this machine with `podman kube play` (needs VISIONFLOW_API_KEY) and wait until the pod is ready."""
    import os

    from components.delivery.podman import play

    key = os.environ.get("VISIONFLOW_API_KEY")
    if not key:
        _fail("the pod requires an API key: export VISIONFLOW_API_KEY=<a long random secret> (clients send 'Authorization: Bearer <key>')", 2)
    pods, seconds = play(out, key, ready_url=f"http://127.0.0.1:{port}/readyz", timeout=timeout)
    typer.secho(f"ready        : {', '.join(pods)} on http://127.0.0.1:{port} after {seconds:.1f} s", fg=typer.colors.GREEN)
    typer.echo(f"stop it      : visionflow deploy down --out {out}")


@deploy_app.command("down")
def deploy_down(out: Annotated[Path, typer.Option("--out", help="the folder `deploy manifests` wrote")] = Path("deploy")) -> None:
    """Stop the pods of `deploy play` gracefully and remove them (the inference-log volume stays)."""
    from components.delivery.podman import down

    down(out)
    typer.secho(f"stopped      : the pods of {out}/podman.yaml (volume kept: podman volume ls)", fg=typer.colors.GREEN)


@deploy_app.command("registry")
def deploy_registry(
    port: Annotated[int, typer.Option("--port", help="port on 127.0.0.1")] = 5000,
    root: RootOpt = Path("."),
) -> None:
    """Serve a real OCI registry (Debian's docker-registry) on 127.0.0.1, its blobs in the workspace; Ctrl-C stops it."""
    cfg, ws = _setup(root)
    from components.delivery.registry import registry_command
    from components.process import run_server

    cmd = registry_command(ws.home / "registry", port)
    typer.echo(f"registry on 127.0.0.1:{port} (blobs in {ws.home / 'registry'}); push with: visionflow package --image --push 127.0.0.1:{port}/visionflow")
    raise typer.Exit(run_server(cmd))


from flows.cli_rollout import rollout_app  # noqa: E402 - its commands import from this module

app.add_typer(rollout_app, name="rollout")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
