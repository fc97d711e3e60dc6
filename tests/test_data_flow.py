"""End to end: `data_flow` in Prefect's ephemeral mode, real DVC (repo, remote, pull) and real GX."""

import subprocess
import sys
from pathlib import Path

import pytest

from components.data import versioning
from components.workspace import Workspace
from flows.data_flow import DataFlowResult, data_flow
from tests.conftest import make_folder

pytestmark = pytest.mark.integration  # a Prefect flow run with git and DVC subprocesses

DVC = str(Path(sys.executable).parent / "dvc")


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)


def test_data_flow_versions_validates_and_refuses_bad_data(project, tmp_path):
    ws = Workspace.at(project)
    src_a = make_folder(tmp_path / "a", classes=("cat", "dog", "owl"), size=(45, 61))
    result = data_flow(root=str(project), source=str(src_a))
    assert isinstance(result, DataFlowResult)
    assert result.n_images == 30 and result.classes == ["cat", "dog", "owl"]
    assert result.data_version == versioning.read_version(ws) and len(result.data_version) == 32
    assert (project / "data" / "manifest.csv").exists()
    assert Path(result.data_docs).exists() and str(ws.home) in result.data_docs
    assert any(ws.dvc_remote_dir.rglob("*")), "dvc push put nothing in the local remote"
    st = versioning.status(ws)
    assert st.workspace_matches and st.version == result.data_version
    _git(project, "add", "-A")
    _git(project, "commit", "-qm", "data A")

    # Bad data: the flow fails before versioning, naming the file; data/ and data.dvc are untouched.
    src_bad = make_folder(tmp_path / "bad", classes=("cat", "dog", "owl"))
    (src_bad / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    manifest_before = (project / "data" / "manifest.csv").read_bytes()
    dvc_before = (project / "data.dvc").read_text()
    state = data_flow(root=str(project), source=str(src_bad), return_state=True)
    assert state.is_failed()
    assert "every file decodes" in state.message and "dog/broken.png" in state.message
    assert (project / "data" / "manifest.csv").read_bytes() == manifest_before
    assert (project / "data.dvc").read_text() == dvc_before
    assert (ws.staging_dir / "rejected" / "manifest.csv").exists()

    # A second, different dataset gets a new version ...
    src_b = make_folder(tmp_path / "b", classes=("ant", "bee"), per_class=12, size=(32, 32))
    result_b = data_flow(root=str(project), source=str(src_b))
    assert result_b.data_version != result.data_version
    _git(project, "commit", "-qam", "data B")

    # ... and the earlier one comes back with git checkout + dvc pull (from the remote: cache wiped).
    import shutil

    shutil.rmtree(ws.dvc_cache_dir)
    shutil.rmtree(project / "data")
    _git(project, "checkout", "HEAD~1", "--", "data.dvc")
    subprocess.run([DVC, "pull", "-q"], cwd=project, check=True)
    assert (project / "data" / "manifest.csv").read_bytes() == manifest_before
    assert versioning.status(ws).workspace_matches
    assert versioning.read_version(ws) == result.data_version

    # Edits to data/ are reported as a mismatch.
    next((project / "data" / "train" / "cat").iterdir()).write_bytes(b"edited")
    st = versioning.status(ws)
    assert not st.workspace_matches and any("modified" in c for c in st.changes)
