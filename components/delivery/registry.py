"""A real OCI registry on this machine: the CNCF Distribution registry (Debian's `docker-registry`),
for trying the delivery path without a cloud account and for the tests. Binds 127.0.0.1 only; TLS
is off, which push/pull accept for loopback alone (`components.packaging.image.is_loopback`).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from components.errors import VisionflowError

BINARY = "docker-registry"


class RegistryError(VisionflowError, RuntimeError):
    pass


def registry_config(storage: Path, port: int, host: str = "127.0.0.1") -> str:
    return f"""version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
http:
  addr: {host}:{port}
"""


def registry_command(folder: Path, port: int) -> list[str]:
    """The command that serves a registry on 127.0.0.1:`port` with its blobs under `folder`."""
    binary = shutil.which(BINARY) or (f"/usr/bin/{BINARY}" if Path(f"/usr/bin/{BINARY}").exists() else None)
    if binary is None:
        raise RegistryError(f"{BINARY} is not installed: sudo apt-get install docker-registry (or use any OCI registry you have)")
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "config.yml"
    config.write_text(registry_config(folder / "storage", port))
    return [binary, "serve", str(config)]


def start_registry(folder: Path, port: int) -> subprocess.Popen:
    """Start it in the background (the caller stops it); ready when GET /v2/ answers 200."""
    cmd = registry_command(folder, port)
    with open(folder / "registry.log", "ab") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
