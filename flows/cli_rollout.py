"""`visionflow rollout …`: progressive delivery by hand — start a shadow or canary rollout of the
challenger, see its evidence and the decision rule's verdict now, promote or abort it, or run the
automatic decision (rollout_flow). Heavy libraries are imported inside the commands (fast `--help`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

rollout_app = typer.Typer(
    help="Progressive delivery: the challenger meets live traffic (shadow or canary) and the evidence decides whether it becomes champion.",
    no_args_is_help=True,
)

# after rollout_app exists: flows.cli registers it when imported, whichever module is imported first
from flows.cli import ProfileOpt, RootOpt, SetOpt, _fail, _result_or_fail, _setup  # noqa: E402

ReasonOpt = Annotated[str, typer.Option("--reason", help="why, recorded on the version (rollout.reason) and in the alias history")]


def _registry(root: Path, profile: str | None = None, overrides: list[str] | None = None):
    cfg, ws = _setup(root, profile, overrides)
    from components.tracking import mlflow_store as store

    store.configure(ws, cfg.tracking.uri, cfg.tracking.experiment)
    return cfg, ws


def _when(ts: float | None) -> str:
    from datetime import UTC, datetime

    return "?" if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def _call(fn, *args, **kwargs):
    """A registry operation; its refusal (RolloutError) or an outage (RegistryError) is a VisionflowError: one line, exit 1 (flows.cli._Group)."""
    return fn(*args, **kwargs)


def _evidence(res: dict) -> None:
    """The window's numbers side by side, and the verdict of the decision rule on them."""
    w = res["window"]
    cp, ch = w["champion"], w["challenger"]

    def fmt(v, kind: str = "") -> str:
        if v is None:
            return "-"
        return f"{v:.1f} ms" if kind == "ms" else f"{v:.4f}" if isinstance(v, float) else str(v)

    typer.echo(f"{'':<15}{'champion v' + cp['model_version']:>18}{'challenger v' + ch['model_version']:>18}")
    for label, key, kind in (("requests", "requests", ""), ("errors", "errors", ""), ("error rate", "error_rate", ""), ("p95 latency", "p95_latency_ms", "ms"),
                             ("labelled", "labelled", ""), ("live accuracy", "live_accuracy", "")):  # fmt: skip
        typer.echo(f"  {label:<13}{fmt(cp[key], kind):>18}{fmt(ch[key], kind):>18}")
    if w["mode"] == "shadow" or w["shadowed"]:
        p = w["paired"]
        typer.echo(f"agreement    : {fmt(w['agreement'])} over {w['shadowed']} shadowed requests")
        typer.echo(f"paired       : both right {p['both_right']}, champion only {p['champion_only']}, challenger only {p['challenger_only']}, "
                   f"both wrong {p['both_wrong']}")  # fmt: skip


def _header(st: dict) -> None:
    import time

    hours = (time.time() - st["started"]) / 3600
    share = f" at {st['percent']:g} % of clients" if st["mode"] == "canary" else f", {st['shadow_sample'] * 100:g} % of requests shadowed"
    typer.echo(f"rollout      : {st['model_name']} v{st['version']} in {st['stage']}{share}, against champion v{st['champion']}")
    typer.echo(f"started      : {_when(st['started'])} ({hours:.1f} h ago)")


@rollout_app.command("start")
def start(
    version: Annotated[str | None, typer.Argument(help="version of visionflow-classifier to roll out [default: the challenger]")] = None,
    mode: Annotated[str | None, typer.Option("--mode", help="shadow or canary [default: selection.rollout.mode; shadow when that is off]")] = None,
    percent: Annotated[float | None, typer.Option("--percent", help="canary: % of clients the challenger answers [default: selection.rollout.percent]")] = None,
    shadow_sample: Annotated[
        float | None, typer.Option("--shadow-sample", help="shadow: share of requests the challenger also answers [default: selection.rollout.shadow_sample]")
    ] = None,
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    root: RootOpt = Path("."),
) -> None:
    """Start a rollout: the version becomes @challenger with stage shadow or canary; a running service picks it up on its next poll."""
    cfg, ws = _setup(root, profile, set_)
    ro = cfg.selection.rollout
    mode = mode or (ro.mode if ro.mode != "off" else "shadow")
    if mode not in ("shadow", "canary"):
        _fail(f"--mode must be shadow or canary (got {mode!r})", 2)
    percent = ro.percent if percent is None else percent
    if mode == "canary" and not 0 < percent <= 100:
        _fail(f"--percent must be in (0, 100] (got {percent:g})", 2)
    if shadow_sample is not None and not 0 < shadow_sample <= 1:
        _fail(f"--shadow-sample must be in (0, 1] (got {shadow_sample:g})", 2)
    from components.delivery import rollout
    from components.tracking import mlflow_store as store

    store.configure(ws, cfg.tracking.uri, cfg.tracking.experiment)

    st = _call(rollout.start, version, mode, percent, ro.shadow_sample if shadow_sample is None else shadow_sample, reason="started by hand")
    _header(st.as_dict())
    typer.secho(f"started      : {st.model_name}@challenger = v{st.version}, stage {st.stage}; a running `visionflow serve` picks it up on its next poll",
                fg=typer.colors.GREEN)  # fmt: skip
    typer.echo("next         : `visionflow rollout status` (evidence), `visionflow rollout evaluate` (decide; scheduled by `visionflow schedule`)")


@rollout_app.command("status")
def status(profile: ProfileOpt = None, set_: SetOpt = None, root: RootOpt = Path(".")) -> None:
    """The rollout under way: stage, requests, agreement, error rate, latency, live accuracy of both, and the decision rule's verdict now."""
    cfg, ws = _registry(root, profile, set_)
    from components.delivery import rollout

    res = _call(rollout.evaluate, ws, cfg, act=False)
    if res["verdict"] is None:
        last = _call(rollout.status)
        if last is None:
            typer.echo("rollout      : none has run (start one with `visionflow rollout start [VERSION]`)")
        else:
            typer.echo(f"rollout      : none running; the last: {last.model_name} v{last.version} ({last.mode}) {last.stage} at {_when(last.ended)}: "
                       f"{last.reason or '-'}")  # fmt: skip
        return
    st = res["state"]
    _header(st)
    _evidence(res)
    if st.get("verdict"):
        typer.echo(f"last decision: {st['verdict']} at {_when(st.get('evaluated'))}")
    typer.echo(f"verdict now  : {res['verdict']} ({res['reason']})")


@rollout_app.command("promote")
def promote(reason: ReasonOpt = "", root: RootOpt = Path(".")) -> None:
    """Promote the version under rollout now: it becomes champion (recorded as manual), stage promoted, @challenger removed."""
    _registry(root)
    from components.delivery import rollout

    st = _call(rollout.promote, reason, manual=True)
    typer.secho(f"champion is now {st.model_name} v{st.version} (after its {st.mode} rollout); stage promoted, @challenger removed", fg=typer.colors.GREEN)


@rollout_app.command("abort")
def abort(reason: ReasonOpt = "", root: RootOpt = Path(".")) -> None:
    """End the rollout without promoting: stage rolled_back, @challenger removed, the champion untouched."""
    _registry(root)
    from components.delivery import rollout

    st = _call(rollout.abort, reason, manual=True)
    typer.secho(f"rolled back  : {st.model_name} v{st.version} ({st.mode}); @challenger removed, champion v{st.champion} keeps serving", fg=typer.colors.GREEN)


@rollout_app.command("evaluate")
def evaluate(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="decide and print only: record nothing, move nothing")] = False,
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    root: RootOpt = Path("."),
) -> None:
    """Run the automatic decision now (rollout_flow): read the inference log's window, decide, record, promote or roll back."""
    cfg, ws = _registry(root, profile, set_)
    from flows.rollout import rollout_flow

    res = _result_or_fail(rollout_flow(root=str(ws.root), profile=cfg.profile, cfg=cfg, act=not dry_run, return_state=True))
    if res["verdict"] is None:
        typer.echo("rollout      : none running; nothing to decide")
        return
    _header(res["started_state"])
    _evidence(res)
    done = {"promote": "promoted: it is champion now", "rollback": "rolled back: @challenger removed", "continue": "continue: collecting evidence"}
    typer.echo(f"decision     : {res['verdict']} ({res['reason']})")
    typer.echo(f"applied      : {'nothing (--dry-run)' if dry_run else done[res['verdict']]}" + (f"; MLflow run {res['run_id']}" if res.get("run_id") else ""))
