"""Data versioning with DVC 3: `data.dvc` at the project root tracks `data/`.

The data version is the md5 in `data.dvc` (a plain string): the lineage key of every later run.
The default remote is a local folder inside the workspace; `data.dvc_remote` points at any DVC URL.
Per-machine settings (cache and remote folders inside the workspace) go to `.dvc/config.local`,
so the committed `.dvc/config` stays the same on every machine.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import yaml

from components.errors import VisionflowError
from components.workspace import Workspace

REMOTE_NAME = "visionflow"


class VersioningError(VisionflowError, RuntimeError):
    pass


@dataclass(frozen=True)
class DataStatus:
    version: str | None  # md5 in data.dvc, None when data.dvc does not exist
    workspace_matches: bool
    changes: list[str]
    n_files: int | None


def _dvc_file(ws: Workspace, data_name: str) -> Path:
    return ws.root / f"{data_name}.dvc"


def _quiet_dvc() -> None:
    import logging

    # DVC's "git add data.dvc" / autostage / init hints are for its own CLI; we print our own summary.
    logging.getLogger("dvc").setLevel(logging.WARNING)


def _repo(ws: Workspace):
    from dvc.repo import Repo

    _quiet_dvc()
    return Repo(str(ws.root))


def ensure_repo(ws: Workspace, remote_url: str | None = None) -> None:
    """`dvc init` if needed (with --no-scm outside git), then point cache + remote into the workspace."""
    from dvc.repo import Repo

    if not (ws.root / ".dvc").is_dir():
        _quiet_dvc()
        Repo.init(str(ws.root), no_scm=not (ws.root / ".git").exists())
    repo = _repo(ws)
    try:
        with repo.config.edit("repo") as conf:  # committed: same on every machine
            conf["core"]["analytics"] = False
            if remote_url:  # a shared remote is the project's remote: a teammate's clone pulls with no set-up
                conf["core"]["remote"] = REMOTE_NAME
                conf["remote"][REMOTE_NAME] = {"url": remote_url}
        with repo.config.edit("local") as conf:  # machine-specific: inside the workspace
            conf["cache"]["dir"] = str(ws.dvc_cache_dir)
            conf["core"]["site_cache_dir"] = str(ws.home / "dvc-site-cache")
            if remote_url:
                conf["core"].pop("remote", None)  # the committed default applies
                conf["remote"].pop(REMOTE_NAME, None)
            else:  # the local default remote lives in this machine's workspace
                conf["core"]["remote"] = REMOTE_NAME
                conf["remote"][REMOTE_NAME] = {"url": str(ws.dvc_remote_dir)}
    finally:
        repo.close()
    if remote_url is None:
        ws.dvc_remote_dir.mkdir(parents=True, exist_ok=True)


def read_version(ws: Workspace, data_name: str = "data") -> str | None:
    """The md5 of the tracked folder in `data.dvc` (without DVC's '.dir' suffix), or None."""
    path = _dvc_file(ws, data_name)
    if not path.exists():
        return None
    outs = (yaml.safe_load(path.read_text()) or {}).get("outs") or []
    if not outs or "md5" not in outs[0]:
        raise VersioningError(f"{path}: no 'outs[0].md5'; re-create it with `visionflow ingest`")
    return str(outs[0]["md5"]).removesuffix(".dir")


def _same_content(a: Path, b: Path) -> bool:
    names = ("manifest.csv", "dataset.json")  # the manifest holds every file's sha256
    return all((a / n).is_file() and (b / n).is_file() and (a / n).read_bytes() == (b / n).read_bytes() for n in names)


def install_dataset(ws: Workspace, staged: Path, data_name: str = "data") -> Path:
    """Swap a validated staging folder into `data/` (the old folder is removed only after the swap).

    When the staged dataset equals what `data/` already holds and `data/` matches `data.dvc`, the
    existing files are kept: DVC then has nothing to re-hash (a re-run of the same source is fast).
    """
    target = ws.data_dir(data_name)
    if target.exists() and _same_content(staged, target) and status(ws, data_name).workspace_matches:
        shutil.rmtree(staged)
        return target
    trash = ws.staging_dir / f"old-{uuid.uuid4().hex[:8]}"
    if target.exists():
        trash.parent.mkdir(parents=True, exist_ok=True)
        target.rename(trash)
    shutil.move(str(staged), str(target))
    if trash.exists():
        shutil.rmtree(trash, ignore_errors=True)
    return target


def add_and_push(ws: Workspace, data_name: str = "data") -> str:
    """`dvc add data` + `dvc push`; returns the new data version."""
    repo = _repo(ws)
    try:
        repo.add(str(ws.data_dir(data_name)))
        repo.push(targets=[str(_dvc_file(ws, data_name))])
    finally:
        repo.close()
    version = read_version(ws, data_name)
    assert version is not None
    return version


def status(ws: Workspace, data_name: str = "data") -> DataStatus:
    """Which version `data.dvc` points at and whether `data/` matches it."""
    version = read_version(ws, data_name)
    if version is None:
        return DataStatus(None, False, [f"{data_name}.dvc does not exist"], None)
    data_dir = ws.data_dir(data_name)
    if not data_dir.exists():
        return DataStatus(version, False, [f"{data_name}/ is missing (run `visionflow data pull`)"], None)
    repo = _repo(ws)
    try:
        result = repo.data_status(granular=True, untracked_files="no")
    finally:
        repo.close()
    changes: list[str] = []
    for kind in ("added", "deleted", "modified", "renamed"):
        for path in (result.get("uncommitted") or {}).get(kind, []):
            changes.append(f"{kind}: {path}")
    n_files = sum(1 for p in data_dir.rglob("*") if p.is_file())
    return DataStatus(version, not changes, sorted(changes), n_files)


def pull(ws: Workspace, data_name: str = "data") -> str:
    """`dvc pull` of the version `data.dvc` points at (after e.g. `git checkout OLD -- data.dvc`)."""
    repo = _repo(ws)
    try:
        repo.pull(targets=[str(_dvc_file(ws, data_name))], force=True)
    finally:
        repo.close()
    version = read_version(ws, data_name)
    assert version is not None
    return version


def resolve_version(ws: Workspace, ref: str, data_name: str = "data") -> str:
    """A data version given as its md5 (32 hex digits, with or without '.dir') or as a git revision
    of `data.dvc` → the md5."""
    ref = ref.strip().removesuffix(".dir")
    if len(ref) == 32 and all(ch in "0123456789abcdef" for ch in ref):
        return ref
    try:
        out = subprocess.run(["git", "show", f"{ref}:{data_name}.dvc"], cwd=ws.root, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        raise VersioningError(f"--data-version {ref}: neither a 32-hex DVC md5 nor a git revision that has {data_name}.dvc") from None
    outs = (yaml.safe_load(out.stdout) or {}).get("outs") or []
    if not outs or "md5" not in outs[0]:
        raise VersioningError(f"--data-version {ref}: {data_name}.dvc at that revision has no outs[0].md5")
    return str(outs[0]["md5"]).removesuffix(".dir")


def checkout(ws: Workspace, version: str, data_name: str = "data") -> str:
    """Point `data.dvc` at `version` and bring `data/` to it (DVC cache first, then the remote).
    A failed pull puts the previous `data.dvc` back: nothing changes."""
    dvc_file = _dvc_file(ws, data_name)
    before = dvc_file.read_text() if dvc_file.exists() else None
    dvc_file.write_text(yaml.safe_dump({"outs": [{"md5": f"{version}.dir", "hash": "md5", "path": data_name}]}, sort_keys=False))
    try:
        return pull(ws, data_name)
    except Exception as exc:
        if before is None:
            dvc_file.unlink()
        else:
            dvc_file.write_text(before)
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise VersioningError(f"data version {version} is neither in the DVC cache nor on the remote ({first}); was it pushed?") from None


@dataclass(frozen=True)
class DataPlan:
    """Which data a run trains on, decided before any work (docs/guide/data.md: "Which data a run uses")."""

    action: str  # "ingest" (source), "use" (data/ as checked out), "checkout" (pull `version`, else ingest `source`)
    source: str | None
    version: str | None
    reason: str


def plan_data(ws: Workspace, data_name: str, *, source: str | None, data_version: str | None, default_source: str) -> DataPlan:
    """`--source` ingests; `--data-version` checks out; otherwise the checked-out `data.dvc` is used
    (pulled when `data/` is missing; re-created from `data.source` when no remote has it, e.g. the
    bundled digits on a fresh clone); nothing versioned yet → ingest `data.source`."""
    if source and data_version:
        raise VersioningError("give --source (ingest new data) or --data-version (an earlier version), not both")
    if source:
        return DataPlan("ingest", source, None, f"ingest {source} (--source)")
    if data_version:
        version = resolve_version(ws, data_version, data_name)
        return DataPlan("checkout", None, version, f"data version {version} (--data-version {data_version})")
    current = read_version(ws, data_name)
    if current is None:
        return DataPlan("ingest", default_source, None, f"nothing versioned yet: ingest {default_source} (data.source)")
    st = status(ws, data_name)
    if st.workspace_matches:
        return DataPlan("use", None, current, f"data version {current} (checked out in {data_name}.dvc)")
    if not ws.data_dir(data_name).exists():
        return DataPlan("checkout", default_source, current, f"data version {current} ({data_name}.dvc; {data_name}/ missing: pull it)")
    changes = "; ".join(st.changes[:3]) + (f"; ... {len(st.changes) - 3} more" if len(st.changes) > 3 else "")
    raise VersioningError(
        f"{data_name}/ differs from {data_name}.dvc ({changes}): version the change with `visionflow ingest --source FOLDER`, "
        f"or discard it with `visionflow data pull`"
    )


def git_commit(root: Path) -> str | None:
    """The current git commit of the project, for lineage tags (None outside git)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None
