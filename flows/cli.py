"""The `visionflow` command line. Heavy libraries are imported inside commands (fast `--help`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(
    help="visionflow: image recognition from training data to a served model (Prefect, DVC, GX, MLflow, BentoML).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Data versions (DVC): status, pull.", no_args_is_help=True)
app.add_typer(data_app, name="data")

ProfileOpt = Annotated[str, typer.Option("--profile", "-p", help="params.yaml profile: quick, default, full")]
SetOpt = Annotated[
    Optional[list[str]], typer.Option("--set", "-s", help="override a knob: --set data.split.seed=1 (repeatable)")
]
RootOpt = Annotated[Path, typer.Option("--root", help="project folder holding params.yaml and data.dvc")]


def _fail(message: str, code: int = 1) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _setup(root: Path, profile: str, overrides: list[str] | None):
    """Resolve the config (fail before any work), then point every tool's state into the workspace."""
    from components.config import ConfigError, load_config
    from components.workspace import Workspace

    try:
        cfg = load_config(root / "params.yaml", profile, overrides or [])
    except ConfigError as exc:
        _fail(str(exc), 2)
    ws = Workspace.at(root, home=None if cfg.workspace == ".visionflow" else cfg.workspace)
    ws.activate()
    return cfg, ws


def _run_data_flow(root: Path, profile: str, overrides: list[str] | None, source: str | None):
    cfg, ws = _setup(root, profile, overrides)
    from flows.data_flow import data_flow

    state = data_flow(
        root=str(ws.root), profile=profile, overrides=overrides or [], source=source,
        progress=sys.stderr.isatty(), return_state=True,
    )  # fmt: skip
    if state.is_failed():
        try:
            state.result()
        except Exception as exc:  # a crash, not a validation verdict: say what it was
            msg = state.message if "validation" in (state.message or "") else f"{type(exc).__name__}: {exc}"
            _fail(msg)
    return state.result()


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
    source: Annotated[Optional[str], typer.Option("--source", help="folder of class sub-folders (default: params.yaml data.source)")] = None,
    profile: ProfileOpt = "default",
    set_: SetOpt = None,
    root: RootOpt = Path("."),
) -> None:
    """Ingest a dataset into data/, validate it (Great Expectations) and version it (DVC)."""
    _print_data_result(_run_data_flow(root, profile, set_, source))


@app.command()
def validate(profile: ProfileOpt = "default", set_: SetOpt = None, root: RootOpt = Path(".")) -> None:
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
    cfg, ws = _setup(root, "default", None)
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
    cfg, ws = _setup(root, "default", None)
    from components.data import versioning

    versioning.ensure_repo(ws, cfg.data.dvc_remote)
    try:
        version = versioning.pull(ws, cfg.data.dir)
    except Exception as exc:  # noqa: BLE001 - DVC's errors are long; one line is enough here
        _fail(f"dvc pull failed: {str(exc).splitlines()[0]}; is the remote reachable and the version pushed?")
    typer.secho(f"checked out data version {version} into {ws.data_dir(cfg.data.dir)}", fg=typer.colors.GREEN)


@app.command()
def run(profile: ProfileOpt = "default", set_: SetOpt = None, root: RootOpt = Path(".")) -> None:
    """The main job (`make run`): the whole pipeline. Today: ingest → validate → version."""
    import time

    start = time.perf_counter()
    result = _run_data_flow(root, profile, set_, None)
    _print_data_result(result)
    typer.echo(f"done in {time.perf_counter() - start:.1f}s")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
