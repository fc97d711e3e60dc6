"""Where local state lives: one workspace root (default `.visionflow/`), nothing in the user's home.

`rm -rf .visionflow` resets a machine. `VISIONFLOW_HOME` moves the workspace.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# Telemetry off by default: this machine has no network and users expect privacy.
# setdefault: a user who wants any of these on can still export them.
TELEMETRY_OFF = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "BENTOML_DO_NOT_TRACK": "true",
    "GX_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


@dataclass(frozen=True)
class Workspace:
    """The project root (params.yaml, data.dvc, data/) and the state root inside it."""

    root: Path
    home: Path

    @classmethod
    def at(cls, root: str | Path = ".", home: str | Path | None = None) -> "Workspace":
        root = Path(root).resolve()
        home = Path(home or os.environ.get("VISIONFLOW_HOME") or root / ".visionflow")
        if not home.is_absolute():
            home = root / home
        return cls(root=root, home=home.resolve())

    @classmethod
    def for_config(cls, root: str | Path, cfg) -> "Workspace":
        """The workspace a resolved Config names (`workspace:` in params.yaml; VISIONFLOW_HOME wins)."""
        return cls.at(root, home=os.environ.get("VISIONFLOW_HOME") or cfg.workspace)

    def data_dir(self, name: str = "data") -> Path:
        return self.root / name

    @property
    def staging_dir(self) -> Path:
        return self.home / "staging"

    @property
    def dvc_remote_dir(self) -> Path:
        return self.home / "dvc-remote"

    @property
    def dvc_cache_dir(self) -> Path:
        return self.home / "dvc-cache"

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    @property
    def data_docs_dir(self) -> Path:
        return self.reports_dir / "data_docs"

    @property
    def inference_log(self) -> Path:
        """The served predictions (serving writes, `visionflow monitor` reads); kept images beside it.
        VISIONFLOW_INFERENCE_LOG moves it, for both."""
        moved = os.environ.get("VISIONFLOW_INFERENCE_LOG", "")
        return Path(moved) if moved and moved.lower() != "off" else self.home / "monitoring" / "inference.db"

    @property
    def prefect_home(self) -> Path:
        return self.home / "prefect"

    @property
    def mlflow_dir(self) -> Path:
        return self.home / "mlflow"

    @property
    def bentoml_home(self) -> Path:
        return self.home / "bentoml"

    def environment(self) -> dict[str, str]:
        """Environment variables that keep every tool's state under `home` and its telemetry off."""
        env = dict(TELEMETRY_OFF)
        env.update(
            {
                "PREFECT_HOME": str(self.prefect_home),
                "BENTOML_HOME": str(self.bentoml_home),
                "MPLCONFIGDIR": str(self.home / "matplotlib"),
                "DVC_GLOBAL_CONFIG_DIR": str(self.home / "dvc-global"),
                "DVC_SYSTEM_CONFIG_DIR": str(self.home / "dvc-system"),
                "TORCH_HOME": str(self.home / "torch"),
                # The first ephemeral start creates Prefect's database (~10-30 s on 2 cores).
                "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
                # Registry/tracking calls to a server: MLflow retries with backoff (1, 2, 4 s), then
                # the call fails and the run with it (never read as "no alias").
                "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
                "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
                # GX writes nothing to home in ephemeral mode; keep its analytics off as well.
            }
        )
        return env

    def activate(self) -> None:
        """Export `environment()` into this process (before the tools are imported)."""
        self.home.mkdir(parents=True, exist_ok=True)
        for key, value in self.environment().items():
            os.environ.setdefault(key, value)
