"""The light side of the service (no torch: BentoML's supervisor process imports only this):
settings from the environment, safe decoding of untrusted uploads, and the ASGI middlewares for
load shedding and for per-request answers through adaptive batching."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from PIL import Image
from pydantic import ValidationInfo, field_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, NoDecode, SettingsConfigDict

from components.config import DataConfig
from components.errors import VisionflowError

IMAGE_FORMATS = {"PNG", "JPEG", "BMP", "MPO", "WEBP", "TIFF", "GIF"}  # MPO: camera JPEGs; as ingest reads


class InputError(VisionflowError, ValueError):
    """A request the client must fix (HTTP 4xx); the message says what was wrong."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


BENTO_DEFAULTS = Path(__file__).with_name("bento_defaults.json")  # written into a Bento by components/packaging/bento.py
FLAGS = {"1": True, "true": True, "on": True, "yes": True, "0": False, "false": False, "off": False, "no": False}


class Settings(BaseSettings):
    """The service's knobs, each from VISIONFLOW_<FIELD> (flags: on/off, true/false, 1/0; empty: the default)."""

    model_config = SettingsConfigDict(env_prefix="VISIONFLOW_", frozen=True, extra="ignore")

    model_uri: str = "models:/visionflow-classifier@champion"
    generator_uri: str | None = "models:/visionflow-gan@generator"  # 'none' or empty: no generator
    poll_seconds: float = 5.0
    max_pixels: int = DataConfig.model_fields["max_pixels"].default  # the same decompression-bomb cap as ingest's
    max_bytes: int = 10 * 1024 * 1024
    max_generate: int = 64
    # process shape, measured side by side in benchmarks/bench_serving.py (docs/benchmarks.md, Serving)
    workers: int = 1  # 2 serve more but need about twice the memory (docs/benchmarks.md)
    max_in_flight: int = 32  # per worker; beyond it a 503 with Retry-After (load shedding)
    batching: bool = True  # concurrent requests share one forward pass (BentoML batchable APIs)
    max_batch_size: int = 32
    max_latency_ms: int = 500  # BentoML's dispatcher sheds (503) a request it expects to miss this for
    batch_wait_ms: float = 1.0  # longest a request waits for others to join its batch (cap_batch_wait)
    access_log: bool = False  # one log line per request costs throughput; on for debugging
    torch_threads: int = 1  # small models: one intra-op thread leaves the other core to HTTP
    # production monitoring (docs/guide/maintenance.md)
    inference_log: str | None = None  # SQLite file of served predictions; None = <workspace>/monitoring/inference.db; "off" = none
    log_sample: float = 1.0  # fraction of predictions logged
    keep_images: bool = False  # keep the uploaded images next to the log (privacy: off unless asked)
    keep_images_mb: float = 500.0  # cap on the kept images; the oldest are deleted first
    log_max_rows: int = 1_000_000
    rollout: bool = True  # serve the challenger's shadow/canary stage when the registry records one (serving/rollout.py)
    rollout_metrics_seconds: float = 15.0  # visionflow_rollout_* refresh: a window query over the log, kept off most polls
    api_key: str | None = None  # with a key, every path but open_paths needs Authorization: Bearer <key>
    open_paths: Annotated[frozenset[str], NoDecode] = frozenset({"/", "/healthz", "/livez", "/readyz", "/metrics"})  # env: a comma list

    @classmethod
    def from_env(cls) -> Settings:
        """Environment first; inside a Bento, serving/bento_defaults.json names the packaged models."""
        return cls()

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings):  # type: ignore[no-untyped-def]
        return init_settings, env_settings, _BentoDefaults(settings_cls)

    @field_validator("generator_uri", mode="before")
    @classmethod
    def _no_generator(cls, value: Any) -> Any:
        return None if value in ("", "none") else value

    @field_validator("inference_log", "api_key", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return value or None

    @field_validator("batching", "access_log", "keep_images", "rollout", mode="before")
    @classmethod
    def _flag(cls, value: Any, info: ValidationInfo) -> Any:
        if not isinstance(value, str):
            return value
        if not value.strip():
            return cls.model_fields[info.field_name].default  # type: ignore[index]
        if value.strip().lower() not in FLAGS:
            raise ValueError(f"expected on/off, true/false or 1/0, got {value!r}")
        return FLAGS[value.strip().lower()]

    @field_validator("open_paths", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        return frozenset(p.strip() for p in value.split(",") if p.strip()) if isinstance(value, str) else value


class _BentoDefaults(EnvSettingsSource):
    """BENTO_DEFAULTS (VISIONFLOW_* names → values), read as the environment is but under it."""

    def _load_env_vars(self) -> Mapping[str, str | None]:
        raw = json.loads(BENTO_DEFAULTS.read_text()) if BENTO_DEFAULTS.exists() else {}
        return {(k if self.case_sensitive else k.lower()): str(v) for k, v in raw.items()}


def cap_batch_wait(max_wait_ms: float) -> None:
    """Cap how long BentoML's batch dispatcher (1.4) holds a request back to wait for company.

    The dispatcher learns that wait as the mean time recent requests spent queued. Under load that
    is queueing delay, and it feeds on itself: after a 200-client burst a lone request waited
    ~150 ms for minutes (idle p50 10.7 ms before, 164 → 139 ms over the 20 s after; measured with
    benchmarks/bench_serving.py). Batches still form while the previous batch runs, which is
    where batching pays on a CPU, so the extra wait is capped (default 1 ms)."""
    from bentoml._internal.marshal.dispatcher import Optimizer

    if getattr(Optimizer.trigger_refresh, "_visionflow_cap", None) is not None:
        return
    learn = Optimizer.trigger_refresh

    def trigger_refresh(self) -> None:
        learn(self)
        self.wait = min(self.wait, max_wait_ms / 1000)

    trigger_refresh._visionflow_cap = max_wait_ms  # type: ignore[attr-defined]
    Optimizer.trigger_refresh = trigger_refresh


def lineage_of(name: str, version: str, run_id: str, tags: dict[str, str]) -> dict[str, Any]:
    """What every answer says about the model that gave it (both runtimes: PyTorch and ONNX)."""
    return {"model": {"name": name, "version": version, "run_id": run_id}, "data_version": tags.get("data_version"),
            "params_hash": tags.get("params_hash"), "git_commit": tags.get("git_commit")}  # fmt: skip


def answers(probs, classes: list[str], lineage: dict[str, Any]) -> list[dict[str, Any]]:
    """One answer per row of class probabilities (a numpy array's or a torch tensor's rows), rounded as served."""
    out = []
    for p in probs:
        label = int(p.argmax())
        out.append({"label": label, "class_name": classes[label], "confidence": round(float(p[label]), 6),
                    "probabilities": {c: round(float(v), 6) for c, v in zip(classes, p)}, **lineage})  # fmt: skip
    return out


class NotServedHere:
    """ASGI middleware: answer `paths` with one JSON error and `status` before the service sees them
    (BentoML hides the message of a 5xx raised inside an API; a 501 must say what to do instead)."""

    def __init__(self, app, paths: dict[str, str], status: int = 501):
        self.app, self.status = app, status
        self.bodies = {path: json.dumps({"error": message}).encode() for path, message in paths.items()}

    async def __call__(self, scope, receive, send):
        body = self.bodies.get(scope["path"]) if scope["type"] == "http" else None
        if body is None:
            return await self.app(scope, receive, send)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class LoadShedder:
    """ASGI middleware: at most `limit` requests in flight per worker; beyond it a deliberate 503
    with Retry-After, answered at once (BentoML's own limit answers 429 without Retry-After).
    Probes, metadata and metrics always pass, so an overloaded server still reports itself."""

    BYPASS = frozenset({"/healthz", "/livez", "/readyz", "/metrics", "/metadata"})

    def __init__(self, app, limit: int, retry_after_s: int = 1):
        self.app, self.limit, self.retry_after = app, limit, str(retry_after_s).encode()
        self.in_flight = 0  # one event loop per worker: no lock needed
        self.body = json.dumps({"error": f"server busy: {limit} requests in flight; retry after {retry_after_s} s"}).encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in self.BYPASS:
            return await self.app(scope, receive, send)
        if self.in_flight >= self.limit:
            headers = [(b"content-type", b"application/json"), (b"retry-after", self.retry_after), (b"content-length", str(len(self.body)).encode())]
            await send({"type": "http.response.start", "status": 503, "headers": headers})
            await send({"type": "http.response.body", "body": self.body})
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


def decode_image(data: bytes, max_pixels: int, max_bytes: int) -> Image.Image:
    """Untrusted bytes → a loaded PIL image, or an InputError that says what was wrong."""
    if not data:
        raise InputError("empty image: the 'image' field has no bytes")
    if len(data) > max_bytes:
        raise InputError(f"image is {len(data):,} bytes, over the {max_bytes:,}-byte cap", 413)
    try:
        img = Image.open(io.BytesIO(data))
    except Exception:
        raise InputError("not an image: expected PNG, JPEG, BMP, WebP, TIFF or GIF bytes") from None
    if img.format not in IMAGE_FORMATS:
        raise InputError(f"unsupported image format {img.format}: send PNG, JPEG, BMP, WebP, TIFF or GIF")
    w, h = img.size
    if w * h > max_pixels:  # checked from the header, before decoding: decompression bombs
        raise InputError(f"image is {w}x{h} = {w * h:,} pixels, over the {max_pixels:,}-pixel cap", 413)
    try:
        img.load()
    except Exception as exc:
        raise InputError(f"truncated or corrupt image: {str(exc).splitlines()[0][:120]}") from None
    return img


class BatchAnswers:
    """ASGI middleware for the batched APIs (`Settings.batching`). A batched API answers one item
    per image, and an item {"error", "status"} (a bad image) becomes that request's 4xx, so one
    client's bad upload never fails the requests it was batched with. `one` (/classify) answers a
    single object, as without batching; X-Model-Version is added as on every other answer."""

    def __init__(self, app, one: str, many: str):
        self.app, self.one, self.many = app, one, many

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] not in (self.one, self.many):
            return await self.app(scope, receive, send)
        single = scope["path"] == self.one
        start: dict = {}
        chunks: list[bytes] = []

        async def capture(message):
            if message["type"] == "http.response.start":
                start.update(message)
                return
            if message["type"] != "http.response.body":
                return await send(message)
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            status, body = start["status"], b"".join(chunks)
            headers = [(k, v) for k, v in start.get("headers", []) if k.lower() not in (b"content-length", b"content-type")]
            if status == 503 and not any(k.lower() == b"retry-after" for k, _ in headers):
                headers.append((b"retry-after", b"1"))  # BentoML's dispatcher sheds load too, without saying when to retry
            items = _json_list(body) if status == 200 else None
            if items is not None:
                status, answer = _one_answer(items, single)
                body = json.dumps(answer).encode()
                if status == 200:
                    m = (answer if single else answer[0])["model"]
                    headers.append((b"x-model-version", f"{m['name']}/{m['version']}".encode()))
                    if single:  # the prediction's id; /classify_batch's items carry one each
                        headers.append((b"x-request-id", answer["request_id"].encode()))
            headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, capture)


def _one_answer(items: list, single: bool) -> tuple[int, Any]:
    if not items:
        return 400, {"error": "no images: send one or more multipart fields named 'images'"}
    if single and len(items) != 1:
        return 400, {"error": f"/classify takes one image (got {len(items)}); send several to /classify_batch"}
    for i, it in enumerate(items):
        if isinstance(it, dict) and "error" in it:
            return int(it.get("status", 400)), {"error": it["error"] if single else f"images[{i}]: {it['error']}"}
    return 200, items[0] if single else items


def _json_list(body: bytes) -> list | None:
    try:
        items = json.loads(body)
    except ValueError:
        return None
    return items if isinstance(items, list) else None


class MultipartGuard:
    """ASGI middleware: the upload endpoints take multipart/form-data with file fields of one name
    (`image` for /classify, `images` for /classify_batch). Anything else is a 400 that says what to
    send, in every serving configuration: BentoML's own parser answers 500 to a file under another
    field name (it tries to read it as JSON) and a pydantic dump to a missing one. Only the part
    headers are scanned; the body is then handed on unchanged."""

    def __init__(self, app, fields: dict[str, tuple[str, bool]]):
        self.app = app
        self.fields = fields  # path → (field name, several files allowed)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] not in self.fields or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        problem = multipart_problem(headers.get(b"content-type", b"").decode("latin-1"), body, *self.fields[scope["path"]])
        if problem:
            payload = json.dumps({"error": problem}).encode()
            await send({"type": "http.response.start", "status": 400,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})  # fmt: skip
            await send({"type": "http.response.body", "body": payload})
            return
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def multipart_problem(content_type: str, body: bytes, field: str, many: bool) -> str | None:
    """None when `body` is multipart with only file parts named `field` (one, unless `many`); else what to fix."""
    how = f"send the image{'s' if many else ''} as multipart/form-data file field{'s' if many else ''} named '{field}' (curl -F {field}=@photo.jpg)"
    ctype, _, params = content_type.partition(";")
    if ctype.strip().lower() != "multipart/form-data":
        return f"expected multipart/form-data, got {ctype.strip() or 'no content type'}: {how}"
    boundary = next((p.split("=", 1)[1].strip().strip('"') for p in params.split(";") if p.strip().lower().startswith("boundary=")), "")
    if not boundary:
        return f"multipart body without a boundary: {how}"
    files, others = 0, []
    delim = b"--" + boundary.encode()
    pos = body.find(delim)
    while pos != -1:  # only each part's headers are read: the image bytes are never copied
        start = pos + len(delim)
        if body.startswith(b"--", start):
            break  # the closing delimiter
        pos = body.find(delim, start)
        end = pos if pos != -1 else len(body)
        head_end = body.find(b"\r\n\r\n", start, end)
        head = body[start : head_end if head_end != -1 else end].decode("latin-1")
        disposition = next((line for line in head.split("\r\n") if line.lower().startswith("content-disposition:")), "")
        name = _param(disposition, "name")
        if name == field and _param(disposition, "filename") is not None:
            files += 1
        else:
            others.append(f"'{name}'" + ("" if _param(disposition, "filename") is not None else " (not a file)"))
    if others:
        return f"unexpected field(s) {', '.join(others)}: {how}"
    if files == 0:
        return f"no image in the form: {how}"
    if files > 1 and not many:
        return f"/classify takes one image (got {files}); send several to /classify_batch"
    return None


def _param(disposition: str, key: str) -> str | None:
    import re

    m = re.search(rf';\s*{key}="([^"]*)"', disposition) or re.search(rf";\s*{key}=([^;\s]+)", disposition)
    return m.group(1) if m else None
