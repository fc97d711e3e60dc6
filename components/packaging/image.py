"""The champion as an OCI image, built with no network: `visionflow package --image`.

    base image ─► wheelhouse (host) ─► Containerfile + Bento ─► build --network none ─► image id
    (yours, or one made       (the exact versions            (non-root, lineage labels,
     from Debian's packages)   the host runs)                   HEALTHCHECK on /readyz)

Two flavours: `slim` serves the ONNX export with onnxruntime (no torch); `full` serves the PyTorch
model (every endpoint, /explain and /generate included). Nothing is downloaded inside the build: the
base image is local, Python packages come from a wheelhouse made on the host with the host's pip
configuration, and the build runs with `--network none`, so an air-gapped machine builds the same
image. podman, buildah and docker take the same Containerfile.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from components.errors import VisionflowError

BUILDERS = ("podman", "buildah", "docker")
DEFAULT_BASE = "localhost/visionflow-base:bookworm-py3.11"
PORT = 3000
UID = 10001
APP = "/opt/visionflow"  # the Bento; read-only at run time
DATA = "/var/lib/visionflow"  # the inference log: mount a volume here
# In-flight requests get this long after SIGTERM (requests time out at 30 s: serving/service.py);
# a pod's terminationGracePeriodSeconds must exceed it plus its preStop drain.
GRACEFUL_SHUTDOWN_S = 20
DEBIAN_PACKAGES = ["python3", "python3-venv", "ca-certificates", "tini"]


class ImageError(VisionflowError, RuntimeError):
    """A build, base-image or push step that failed; the message is one line a user can act on."""


@dataclass(frozen=True)
class ImageBuild:
    ref: str  # the local name:tag
    image_id: str  # sha256:… of the image config: the same bytes wherever the image is pushed or pulled
    flavour: str
    builder: str
    base_image: str
    size_bytes: int
    seconds: float
    labels: dict[str, str] = field(default_factory=dict, hash=False)


def _run(cmd: list[str], what: str, *, capture: bool = True, input_bytes: bytes | None = None, env: dict | None = None) -> str:
    try:
        done = subprocess.run(cmd, capture_output=capture, input=input_bytes, env=env, check=False)
    except FileNotFoundError as exc:
        raise ImageError(f"{what}: {cmd[0]} is not installed ({exc.strerror}); install it (Debian: sudo apt-get install {cmd[0]})") from None
    if done.returncode != 0:
        err = (done.stderr or b"").decode(errors="replace").strip().splitlines() if capture else []
        last = next((line for line in reversed(err) if line.strip()), f"exit code {done.returncode}")
        raise ImageError(f"{what} failed: {last.strip()[:300]}")
    return (done.stdout or b"").decode(errors="replace") if capture else ""


def choose_builder(name: str | None = None) -> str:
    """`name`, or the first of podman, buildah, docker on PATH."""
    if name:
        if name not in BUILDERS:
            raise ImageError(f"unknown builder {name!r}: use one of {', '.join(BUILDERS)}")
        if shutil.which(name) is None:
            raise ImageError(f"--builder {name}: {name} is not on PATH; install it or pick another ({', '.join(BUILDERS)})")
        return name
    for candidate in BUILDERS:
        if shutil.which(candidate):
            return candidate
    raise ImageError("no image builder found: install podman (Debian: sudo apt-get install podman buildah runc) or docker")


def _engine(builder: str) -> str:
    """The command that holds images for `builder` (buildah shares podman's storage)."""
    if builder == "buildah":
        return "podman" if shutil.which("podman") else "buildah"
    return builder


def _inspect_command(builder: str, ref: str) -> list[str]:
    engine = _engine(builder)
    return [engine, "image", "inspect", ref] if engine != "buildah" else ["buildah", "inspect", "--type", "image", ref]


def image_exists(builder: str, ref: str) -> bool:
    return subprocess.run(_inspect_command(builder, ref), capture_output=True, check=False).returncode == 0


def inspect_image(builder: str, ref: str) -> dict:
    data = json.loads(_run(_inspect_command(builder, ref), f"inspect {ref}"))
    return data[0] if isinstance(data, list) else data


# ---- the base image: Debian's packages, no registry ----


def debian_mirror() -> str:
    """The Debian mirror apt uses on this machine (deb822 .sources or a sources.list line)."""
    files = sorted(Path("/etc/apt/sources.list.d").glob("*.sources")) + sorted(Path("/etc/apt/sources.list.d").glob("*.list"))
    files.append(Path("/etc/apt/sources.list"))
    for f in files:
        if not f.is_file():
            continue
        for line in f.read_text().splitlines():
            line = line.strip()
            if line.startswith("URIs:"):
                for uri in line.split()[1:]:
                    if "security" not in uri:
                        return uri
            elif line.startswith("deb ") and "security" not in line:
                parts = [p for p in line.split()[1:] if not p.startswith("[")]
                if parts:
                    return parts[0]
    return "http://deb.debian.org/debian"


def debian_base_image(builder: str, *, tag: str = DEFAULT_BASE, suite: str = "bookworm", mirror: str | None = None, cache: Path | None = None,
                      rebuild: bool = False) -> str:  # fmt: skip
    """A minimal Debian with python3 (+ venv, CA certificates, tini) made by debootstrap from the
    machine's own apt mirror and imported as `tag`; cached: an existing `tag` is reused.
    Its Python must match the host's minor version (the wheelhouse is built on the host)."""
    if not rebuild and image_exists(builder, tag):
        return tag
    if os.geteuid() != 0:
        raise ImageError("making the base image needs root (debootstrap): run it with sudo, or name one with --base-image")
    if shutil.which("debootstrap") is None:
        raise ImageError("debootstrap is not installed: sudo apt-get install debootstrap (or name a base image with --base-image)")
    mirror = mirror or debian_mirror()
    cache = cache or Path(tempfile.gettempdir())
    cache.mkdir(parents=True, exist_ok=True)
    rootfs = Path(tempfile.mkdtemp(prefix="rootfs-", dir=cache))
    try:
        _run(["debootstrap", "--variant=minbase", f"--include={','.join(DEBIAN_PACKAGES)}", suite, str(rootfs), mirror], f"debootstrap {suite} from {mirror}")
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man", "usr/share/locale", "usr/share/info"):
            target = rootfs / junk
            if target.is_dir():
                for child in target.iterdir():
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child, ignore_errors=True)
                    else:
                        child.unlink(missing_ok=True)
        py = _run(["chroot", str(rootfs), "python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], "python3 in the base image").strip()
        host = f"{sys.version_info.major}.{sys.version_info.minor}"
        if py != host:
            raise ImageError(f"{suite}'s python3 is {py} but visionflow runs on {host}: the wheelhouse would not fit; pick a suite with Python {host}")
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE)
        engine = _engine(builder)
        importer = [engine, "import", "-", tag] if engine != "buildah" else None
        if importer is None:
            raise ImageError("importing a root filesystem needs podman or docker (buildah alone cannot import a tarball)")
        done = subprocess.run(importer, stdin=tar.stdout, capture_output=True, check=False)
        tar.wait()
        if done.returncode != 0 or tar.returncode != 0:
            raise ImageError(f"import of the base image failed: {done.stderr.decode(errors='replace').strip()[-300:]}")
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)
    return tag


# ---- the wheelhouse: the host's exact versions, built or downloaded on the host ----


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned_closure(packages: list[str]) -> dict[str, str]:
    """{distribution: version} for `packages` and everything they require, as installed on this
    host, extras included where a requirement asks for them (torch → cuda-toolkit[cublas, …]);
    environment markers evaluated for this interpreter."""
    from packaging.requirements import Requirement

    seen: dict[str, str] = {}
    done: set[tuple[str, str]] = set()  # (name, extra) already followed
    todo: list[tuple[str, frozenset[str]]] = [(p, frozenset()) for p in packages]
    while todo:
        raw, extras = todo.pop()
        name = _canonical(raw)
        wanted = [e for e in ("", *sorted(extras)) if (name, e) not in done]
        if not wanted:
            continue
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            raise ImageError(f"{name} is needed in the image but not installed here; pip install it (the wheelhouse takes the host's versions)") from None
        seen[name] = dist.version
        for extra in wanted:
            done.add((name, extra))
            for text in dist.requires or []:
                req = Requirement(text)
                if req.marker is not None and not req.marker.evaluate({"extra": extra}):
                    continue
                if req.marker is None and extra:
                    continue  # unconditional requirements were followed with extra ""
                todo.append((req.name, frozenset(req.extras)))
    return dict(sorted(seen.items()))


def wheelhouse(packages: list[str], cache: Path) -> tuple[Path, dict[str, str]]:
    """A folder of wheels for `packages`' pinned closure, made with the host's pip (its index and
    proxy settings); cached by the pins, so a warm build touches no network at all."""
    pins = pinned_closure(packages)
    key = hashlib.sha256(json.dumps([pins, sys.version_info[:2]]).encode()).hexdigest()[:16]
    house = cache / key
    if (house / "requirements.txt").is_file():
        return house, pins
    tmp = cache / f"{key}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    reqs = [f"{name}=={ver}" for name, ver in pins.items()]
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-q", "-w", str(tmp), *reqs],
         "building the wheelhouse (pip wheel on the host)")  # fmt: skip
    (tmp / "requirements.txt").write_text("\n".join(reqs) + "\n")
    shutil.rmtree(house, ignore_errors=True)
    tmp.rename(house)
    return house, pins


# ---- the image ----


def oci_labels(lineage: dict[str, str | None], flavour: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """OCI annotations plus the lineage of the served version (io.visionflow.*)."""
    from datetime import UTC, datetime

    labels = {
        "org.opencontainers.image.title": "visionflow",
        "org.opencontainers.image.description": f"visionflow: {lineage.get('model_name')} v{lineage.get('model_version')}, served ({flavour})",
        "org.opencontainers.image.version": f"{lineage.get('model_name')}-v{lineage.get('model_version')}",
        "org.opencontainers.image.revision": lineage.get("git_commit") or "",
        "org.opencontainers.image.created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "io.visionflow.flavour": flavour,
    }
    for key in ("model_name", "model_version", "run_id", "data_version", "params_hash", "git_commit"):
        labels[f"io.visionflow.{key.replace('_', '-')}"] = lineage.get(key) or ""
    labels.update(extra or {})
    return labels


def containerfile(base: str, labels: dict[str, str], *, port: int = PORT, uid: int = UID) -> str:
    """Two stages: the venv is made from the wheelhouse in the first, only the venv and the Bento
    reach the second (no wheels, no pip cache). Bytecode is compiled at build time because the root
    filesystem is read-only at run time (a few packages ship files for other Pythons: not fatal).
    HEALTHCHECK needs the docker image format."""
    label_lines = " \\\n      ".join(f"{k}={json.dumps(v)}" for k, v in labels.items())
    probe = "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('BENTOML_PORT', '3000'), timeout=4)"
    return f"""\
FROM {base} AS venv
COPY wheels /wheels
RUN python3 -m venv /opt/venv \\
 && /opt/venv/bin/python -m pip install --no-index --no-cache-dir --disable-pip-version-check -q --find-links /wheels -r /wheels/requirements.txt \\
 && find /opt/venv -name __pycache__ -prune -exec rm -rf {{}} + \\
 && (/opt/venv/bin/python -m compileall -q /opt/venv/lib > /dev/null || true)

FROM {base}
RUN groupadd --system --gid {uid} visionflow && useradd --system --uid {uid} --gid {uid} --home-dir /tmp --shell /usr/sbin/nologin visionflow \\
 && mkdir -p {DATA} && chown {uid}:{uid} {DATA}
COPY --from=venv /opt/venv /opt/venv
COPY bento {APP}
ENV PATH=/opt/venv/bin:$PATH HOME=/tmp BENTOML_HOME=/tmp/bentoml VISIONFLOW_ROOT=/tmp/visionflow BENTOML_HOST=0.0.0.0 BENTOML_PORT={port} \\
    VISIONFLOW_INFERENCE_LOG={DATA}/inference.db VISIONFLOW_LOG_VOLUME={DATA} VISIONFLOW_POLL_SECONDS=3600 PYTHONUNBUFFERED=1 \\
    BENTOML_DO_NOT_TRACK=true MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=1
LABEL {label_lines}
USER {uid}:{uid}
WORKDIR {APP}
VOLUME {DATA}
EXPOSE {port}
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 CMD ["python3", "-c", "{probe}"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["bentoml", "serve", "{APP}", "--timeout-graceful-shutdown", "{GRACEFUL_SHUTDOWN_S}"]
"""


def build_image(builder: str, bento_path: Path, *, ref: str, base: str, flavour: str, lineage: dict[str, str | None], wheel_cache: Path,
                context_dir: Path, models: dict[str, Path] | None = None, extra_labels: dict[str, str] | None = None, no_cache: bool = False) -> ImageBuild:  # fmt: skip
    """Build `ref` from the Bento at `bento_path` with no network; returns its id, size and time.
    `models` ({"name:version": folder in the BentoML store}) go into the Bento's own model store,
    where `bentoml serve <bento folder>` looks first (a Bento in the local store only refers to them)."""
    if not image_exists(builder, base):
        raise ImageError(f"base image {base} is not in {_engine(builder)}'s store: make it with --base-image-from-debian, or load/pull it first")
    t0 = time.perf_counter()
    from components.packaging.bento import RUNTIME_PACKAGES

    house, _ = wheelhouse(RUNTIME_PACKAGES[flavour], wheel_cache)
    shutil.rmtree(context_dir, ignore_errors=True)
    context_dir.mkdir(parents=True)
    wheels = context_dir / "wheels"
    wheels.mkdir()
    for f in house.iterdir():  # hard links: the context costs no copy of a GB of wheels
        try:
            os.link(f, wheels / f.name)
        except OSError:
            shutil.copy2(f, wheels / f.name)
    shutil.copytree(bento_path, context_dir / "bento", ignore=shutil.ignore_patterns("__pycache__", "env"))
    for tag, folder in (models or {}).items():
        name, version = tag.split(":", 1)
        shutil.copytree(folder, context_dir / "bento" / "models" / name / version)
        (context_dir / "bento" / "models" / name / "latest").write_text(version)
    for path in (context_dir / "bento").rglob("*"):  # BentoML writes some files 0600: the non-root server must read them
        path.chmod(0o755 if path.is_dir() else 0o644)
    labels = oci_labels(lineage, flavour, extra_labels)
    (context_dir / "Containerfile").write_text(containerfile(base, labels))
    (context_dir / ".dockerignore").write_text("Containerfile\n")
    if builder == "docker":
        cmd = ["docker", "build", "--network", "none", "-t", ref, "-f", str(context_dir / "Containerfile"), str(context_dir)]
    elif builder == "buildah":
        cmd = ["buildah", "bud", "--network", "none", "--format", "docker", "--layers", "-t", ref, "-f", str(context_dir / "Containerfile"), str(context_dir)]
    else:
        cmd = ["podman", "build", "--network", "none", "--format", "docker", "--layers", "-t", ref, "-f", str(context_dir / "Containerfile"), str(context_dir)]
    if no_cache:
        cmd.insert(2, "--no-cache")
    if builder != "docker":  # the base is local: never reach for a registry (docker uses a present image by default)
        cmd.insert(2, "--pull=never")
    _run(cmd, f"{builder} build of {ref}")
    info = inspect_image(builder, ref)
    image_id = info.get("Id") or info.get("FromImageID") or ""
    if not image_id.startswith("sha256:"):
        image_id = f"sha256:{image_id}"
    size = int(info.get("Size") or info.get("VirtualSize") or 0)
    return ImageBuild(ref, image_id, flavour, builder, base, size, time.perf_counter() - t0, labels)


# ---- the registry ----


def registry_host(ref: str) -> str:
    """The registry part of REGISTRY/REPO[:TAG] (docker.io when the first part is not a host)."""
    first = ref.split("/", 1)[0]
    return first if ("." in first or ":" in first or first == "localhost") and "/" in ref else "docker.io"


def is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 or host.startswith("[") else host
    name = name.strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def push_image(builder: str, local_ref: str, target: str) -> str:
    """Push `local_ref` as `target` (REGISTRY/REPO[:TAG]; the local tag when none is given); returns
    `REGISTRY/REPO@sha256:…`, the digest the registry stores. TLS is verified except for a registry
    on this machine's loopback."""
    repo, tag = _split_tag(target)
    tag = tag or _split_tag(local_ref)[1] or "latest"
    remote = f"{repo}:{tag}"
    insecure = is_loopback(registry_host(remote))
    engine = _engine(builder)
    if engine == "docker":
        _run(["docker", "tag", local_ref, remote], f"docker tag {remote}")
        _run(["docker", "push", remote], f"docker push {remote}")
        digests = inspect_image("docker", remote).get("RepoDigests") or []
        digest = next((d.split("@", 1)[1] for d in digests if d.startswith(repo + "@")), None)
        if digest is None:
            raise ImageError(f"docker pushed {remote} but reports no digest for it")
        return f"{repo}@{digest}"
    with tempfile.TemporaryDirectory() as tmp:
        digest_file = Path(tmp) / "digest"
        cmd = [engine, "push", f"--tls-verify={'false' if insecure else 'true'}", "--digestfile", str(digest_file), local_ref, f"docker://{remote}"]
        _run(cmd, f"push to {remote}")
        digest = digest_file.read_text().strip()
    if not digest.startswith("sha256:"):
        raise ImageError(f"push to {remote} returned no digest")
    return f"{repo}@{digest}"


def pull_image(builder: str, ref: str) -> str:
    """Pull `ref` (e.g. by digest); returns the pulled image's id."""
    engine = _engine(builder)
    insecure = is_loopback(registry_host(ref))
    cmd = [engine, "pull", "-q", ref] if engine == "docker" else [engine, "pull", "-q", f"--tls-verify={'false' if insecure else 'true'}", ref]
    out = _run(cmd, f"pull {ref}").strip().splitlines()
    image_id = inspect_image(builder, ref).get("Id") or (out[-1] if out else "")
    return image_id if image_id.startswith("sha256:") else f"sha256:{image_id}"


def _split_tag(ref: str) -> tuple[str, str]:
    if "@" in ref:
        raise ImageError(f"--push {ref}: name a repository (REGISTRY/REPO or REGISTRY/REPO:TAG), not a digest")
    last = ref.rsplit("/", 1)[-1]
    if ":" in last:
        repo, tag = ref.rsplit(":", 1)
        return repo, tag
    return ref, ""


# ---- the whole step: the version that serves → image → registry, recorded on the version ----


@dataclass(frozen=True)
class ImageRelease:
    build: ImageBuild
    bento_tag: str
    model_name: str
    model_version: str
    pushed: str | None  # REGISTRY/REPO@sha256:… when pushed
    onnx: dict[str, str] | None = field(default=None, hash=False)


def default_ref(model_name: str, version: str, flavour: str) -> str:
    return f"localhost/{model_name}:v{version}-{flavour}"


def release_image(ws, *, flavour: str = "slim", builder: str | None = None, base_image: str | None = None, base_from_debian: bool = False,
                  ref: str | None = None, push: str | None = None, version: str | None = None, no_cache: bool = False) -> ImageRelease:  # fmt: skip
    """The champion (or `version`) → Bento of `flavour` → image built with no network → pushed when
    asked. The image id (and the pushed digest) are tagged on the registered version, so the
    registry says which image serves which version."""
    from components.packaging.bento import package
    from components.tracking import mlflow_store as store

    builder = choose_builder(builder)
    if base_from_debian:
        base = debian_base_image(builder, tag=base_image or DEFAULT_BASE, cache=ws.home / "images")
    else:
        base = base_image or DEFAULT_BASE
        if not image_exists(builder, base):
            hint = "add --base-image-from-debian (makes one from Debian's packages, cached)" if base == DEFAULT_BASE else "load or build it first"
            raise ImageError(f"base image {base} is not in {_engine(builder)}'s store: {hint}, or name one with --base-image")
    res = package(ws, classifier_version=version, flavour=flavour, with_generator=flavour == "full")
    name, ver = res.classifier
    ref = ref or default_ref(name, ver, flavour)
    extra = {f"io.visionflow.{k.replace('.', '-')}": v for k, v in (res.onnx or {}).items()}
    extra["io.visionflow.bento"] = res.bento_tag
    import bentoml

    models = {tag: Path(bentoml.models.get(tag).path) for tag in res.model_tags.values()}
    built = build_image(builder, res.bento_path, ref=ref, base=base, flavour=flavour, lineage=res.lineage or {}, wheel_cache=ws.home / "images" / "wheelhouse",
                        context_dir=ws.home / "images" / f"context-{flavour}", models=models, extra_labels=extra, no_cache=no_cache)  # fmt: skip
    client = store.client()
    client.set_model_version_tag(name, ver, f"image.{flavour}.id", built.image_id)
    client.set_model_version_tag(name, ver, f"image.{flavour}.ref", built.ref)
    pushed = None
    if push:
        pushed = push_image(builder, built.ref, push)
        client.set_model_version_tag(name, ver, f"image.{flavour}.digest", pushed)
    return ImageRelease(built, res.bento_tag, name, ver, pushed, res.onnx)
