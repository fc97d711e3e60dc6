"""The inference log: every served prediction (sampled by a knob) as one row of a SQLite table in
the workspace — the "inference table" of the big serving platforms, queryable with any SQL tool.

One file, WAL mode: BentoML's worker processes write to it at once, `POST /feedback` attaches the
true label to a row, and `visionflow monitor` reads a window of it. Bounded: at most `max_rows`
rows (oldest go first); kept images (off by default) at most `keep_images_mb`, oldest deleted first.
"""

from __future__ import annotations

import json
import random
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    request_id TEXT PRIMARY KEY,
    ts REAL NOT NULL,               -- unix time the answer was made
    endpoint TEXT NOT NULL,
    model_name TEXT NOT NULL,
    model_version TEXT NOT NULL,
    data_version TEXT,
    predicted TEXT NOT NULL,        -- class name
    confidence REAL NOT NULL,       -- the predicted class's probability
    width INTEGER, height INTEGER, channels INTEGER,   -- the upload as sent
    brightness REAL, contrast REAL, -- mean and std of the model's input pixels, 0..1 (data_stats' scale)
    latency_ms REAL,                -- decode + forward of the pass this image was in
    image_path TEXT,                -- kept upload (monitor.keep_images), relative to the log's folder
    image_bytes INTEGER,
    label TEXT,                     -- the true class, from POST /feedback
    feedback_ts REAL
);
CREATE INDEX IF NOT EXISTS predictions_ts ON predictions (ts);
CREATE TABLE IF NOT EXISTS models (
    model_name TEXT NOT NULL, model_version TEXT NOT NULL, classes TEXT NOT NULL,
    PRIMARY KEY (model_name, model_version)
);
CREATE TABLE IF NOT EXISTS monitor_decisions (
    ts REAL NOT NULL, model_name TEXT, model_version TEXT, n INTEGER, score REAL, live_accuracy REAL,
    retrain INTEGER NOT NULL, reason TEXT NOT NULL, report TEXT
);
"""
COLUMNS = ("request_id", "ts", "endpoint", "model_name", "model_version", "data_version", "predicted", "confidence",
           "width", "height", "channels", "brightness", "contrast", "latency_ms", "image_path", "image_bytes")  # fmt: skip


class FeedbackError(ValueError):
    """Feedback the client must fix (HTTP 400): the message says which part was wrong."""


@dataclass(frozen=True)
class Feedback:
    request_id: str
    label: str
    predicted: str
    correct: bool
    model_name: str
    model_version: str
    live_accuracy: float  # this model version's accuracy over all its feedback so far
    n_feedback: int


def connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path, timeout=30, check_same_thread=False, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")  # readers never block the writers (several workers)
    con.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; a crash loses at most the last few rows
    con.execute("PRAGMA busy_timeout=30000")
    con.executescript(SCHEMA)
    return con


class InferenceLog:
    """Writer side (the service) and reader side (feedback, monitor) of one log file."""

    def __init__(self, path: Path, *, sample: float = 1.0, keep_images: bool = False, keep_images_mb: float = 500, max_rows: int = 1_000_000):
        self.path = Path(path)
        self.images_dir = self.path.parent / "images"
        self.sample, self.keep_images = sample, keep_images
        self.keep_images_bytes, self.max_rows = int(keep_images_mb * 1024 * 1024), max_rows
        self._con = connect(self.path)
        self._lock = threading.Lock()  # one connection, several request threads
        self._writes = 0
        self._known_models: set[tuple[str, str]] = set()

    def sampled(self) -> bool:
        return self.sample >= 1 or random.random() < self.sample

    def record(self, rows: list[dict], images: list[tuple[bytes, str] | None] | None = None, classes: list[str] | None = None) -> None:
        """Append predictions (dicts with COLUMNS' keys); `images[i]` = (upload bytes, extension) to keep."""
        if not rows:
            return
        if self.keep_images and images:
            for row, image in zip(rows, images):
                if image is not None:
                    row["image_path"], row["image_bytes"] = self._keep(row["request_id"], *image), len(image[0])
        with self._lock:
            model = (rows[0]["model_name"], rows[0]["model_version"])
            new_model = classes is not None and model not in self._known_models
            self._con.execute("BEGIN")
            try:
                if new_model:
                    self._con.execute("INSERT OR IGNORE INTO models VALUES (?, ?, ?)", (*model, json.dumps(classes)))
                self._con.executemany(f"INSERT OR REPLACE INTO predictions ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
                                      [tuple(r.get(c) for c in COLUMNS) for r in rows])  # fmt: skip
                self._con.execute("COMMIT")
            except BaseException:
                self._con.execute("ROLLBACK")  # a failed write (a full disk) must not leave the transaction open for the next
                raise
            if new_model:  # known only once its classes are stored (a write without them must not hide them later)
                self._known_models.add(model)
            self._writes += len(rows)
            if self._writes >= 1000:  # bound the table and the kept images now and then, not per request
                self._writes = 0
                self._prune()

    def _keep(self, request_id: str, data: bytes, ext: str) -> str:
        rel = f"images/{time.strftime('%Y%m%d')}/{request_id}.{ext}"
        dest = self.path.parent / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
        return rel

    def _prune(self) -> None:
        (n,) = self._con.execute("SELECT COUNT(*) FROM predictions").fetchone()
        if n > self.max_rows:
            cut = self._con.execute("SELECT ts FROM predictions ORDER BY ts LIMIT 1 OFFSET ?", (n - self.max_rows,)).fetchone()
            for (rel,) in self._con.execute("SELECT image_path FROM predictions WHERE ts < ? AND image_path IS NOT NULL", cut).fetchall():
                (self.path.parent / rel).unlink(missing_ok=True)
            self._con.execute("DELETE FROM predictions WHERE ts < ?", cut)
        (kept,) = self._con.execute("SELECT COALESCE(SUM(image_bytes), 0) FROM predictions WHERE image_path IS NOT NULL").fetchone()
        if kept > self.keep_images_bytes:  # rotation: oldest images go first, down to 90 % of the cap
            excess = kept - int(self.keep_images_bytes * 0.9)
            rows = self._con.execute("SELECT request_id, image_path, image_bytes FROM predictions WHERE image_path IS NOT NULL ORDER BY ts").fetchall()
            for request_id, rel, size in rows:
                if excess <= 0:
                    break
                (self.path.parent / rel).unlink(missing_ok=True)
                self._con.execute("UPDATE predictions SET image_path = NULL, image_bytes = NULL WHERE request_id = ?", (request_id,))
                excess -= size or 0

    def prune(self) -> None:
        with self._lock:
            self._prune()

    def feedback(self, request_id: str, label: str) -> Feedback:
        """Attach the true class to a logged prediction; a FeedbackError names what was wrong."""
        with self._lock:
            row = self._con.execute(
                "SELECT p.predicted, p.model_name, p.model_version, m.classes FROM predictions p "
                "LEFT JOIN models m ON m.model_name = p.model_name AND m.model_version = p.model_version WHERE p.request_id = ?",
                (request_id,),
            ).fetchone()
            if row is None:
                raise FeedbackError(f"unknown request_id {request_id!r}: not in the inference log (never served, sampled out, or pruned)")
            predicted, name, version, classes = row
            known = json.loads(classes) if classes else None
            if known is not None and label not in known:
                raise FeedbackError(f"unknown label {label!r} for {name} v{version}; its classes: {', '.join(known)}")
            self._con.execute("UPDATE predictions SET label = ?, feedback_ts = ? WHERE request_id = ?", (label, time.time(), request_id))
            n, right = self._con.execute(
                "SELECT COUNT(*), COALESCE(SUM(label = predicted), 0) FROM predictions WHERE model_name = ? AND model_version = ? AND label IS NOT NULL",
                (name, version),
            ).fetchone()
        return Feedback(request_id, label, predicted, label == predicted, name, version, right / n, n)

    def rows(self, *, since: float = 0.0, model_name: str | None = None, model_version: str | None = None) -> list[dict]:
        """Predictions made at or after `since` (unix time), optionally of one model version, oldest first."""
        query, args = "SELECT * FROM predictions WHERE ts >= ?", [since]
        if model_name is not None:
            query, args = query + " AND model_name = ?", [*args, model_name]
        if model_version is not None:
            query, args = query + " AND model_version = ?", [*args, str(model_version)]
        with self._lock:
            cur = self._con.execute(query + " ORDER BY ts", args)
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r)) for r in cur.fetchall()]

    def classes(self, model_name: str, model_version: str) -> list[str] | None:
        with self._lock:
            row = self._con.execute("SELECT classes FROM models WHERE model_name = ? AND model_version = ?", (model_name, str(model_version))).fetchone()
        return json.loads(row[0]) if row else None

    def labelled_images(self) -> list[dict]:
        """Every prediction with feedback whose upload was kept (any model version: a label is a label)."""
        with self._lock:
            cur = self._con.execute("SELECT request_id, label, image_path FROM predictions WHERE label IS NOT NULL AND image_path IS NOT NULL ORDER BY ts")
            return [{"request_id": a, "label": b, "image_path": c} for a, b, c in cur.fetchall()]

    def record_decision(self, decision: dict) -> None:
        keys = ("ts", "model_name", "model_version", "n", "score", "live_accuracy", "retrain", "reason", "report")
        with self._lock:
            self._con.execute(f"INSERT INTO monitor_decisions VALUES ({', '.join('?' * len(keys))})", tuple(decision.get(k) for k in keys))

    def last_retrain(self) -> float:
        """When the monitor last started a retrain (0 if never): later windows begin after it."""
        with self._lock:
            (ts,) = self._con.execute("SELECT COALESCE(MAX(ts), 0) FROM monitor_decisions WHERE retrain = 1").fetchone()
        return float(ts)

    def absorb(self, other: Path) -> int:
        """Merge another inference log (a pod's file, copied from its volume) into this one: its
        predictions, their feedback (the later label wins) and class sets. Idempotent by request id;
        returns how many predictions were added or got newer feedback."""
        if not Path(other).is_file():
            raise FileNotFoundError(f"{other}: no such inference log")
        cols = ", ".join((*COLUMNS, "label", "feedback_ts"))
        newer = "q.label IS NOT NULL AND q.feedback_ts > COALESCE(predictions.feedback_ts, 0)"
        with self._lock:
            self._con.execute("ATTACH DATABASE ? AS pod", (str(Path(other).resolve()),))
            try:
                self._con.execute("BEGIN")
                added = self._con.execute(f"INSERT OR IGNORE INTO predictions ({cols}) SELECT {cols} FROM pod.predictions").rowcount
                updated = self._con.execute(
                    "UPDATE predictions SET (label, feedback_ts) = (SELECT q.label, q.feedback_ts FROM pod.predictions q WHERE q.request_id = predictions.request_id) "
                    f"WHERE EXISTS (SELECT 1 FROM pod.predictions q WHERE q.request_id = predictions.request_id AND {newer})"
                ).rowcount
                self._con.execute("INSERT OR IGNORE INTO models SELECT * FROM pod.models")
                self._con.execute("COMMIT")
            except Exception:
                self._con.execute("ROLLBACK")
                raise
            finally:
                self._con.execute("DETACH DATABASE pod")
        return added + updated

    def close(self) -> None:
        self._con.close()
