"""The inference log: every served prediction (sampled by a knob) as one row of a SQLite table in
the workspace — the "inference table" of the big serving platforms, queryable with any SQL tool.

One file, WAL mode: BentoML's worker processes write to it at once, `POST /feedback` attaches the
true label to a row, and `visionflow monitor` reads a window of it. Bounded: at most `max_rows`
rows (oldest go first); kept images (off by default) at most `keep_images_mb`, oldest deleted first.
"""

from __future__ import annotations

import json
import math
import random
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from components.errors import VisionflowError

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
CREATE TABLE IF NOT EXISTS rollout_log (       -- a rollout's evidence (components/delivery/rollout.py)
    request_id TEXT NOT NULL,       -- shadow: the served request's id; canary: the id the client got
    ts REAL NOT NULL,
    mode TEXT NOT NULL,             -- shadow | canary (the challenger's attempts) | champion (a champion failure during a rollout)
    model_name TEXT NOT NULL,
    model_version TEXT NOT NULL,
    predicted TEXT,                 -- NULL when it failed
    confidence REAL,
    latency_ms REAL,
    error TEXT,                     -- the failure, one line; NULL when it answered
    PRIMARY KEY (request_id, model_version)
);
CREATE INDEX IF NOT EXISTS rollout_log_ts ON rollout_log (ts);
CREATE TABLE IF NOT EXISTS rollout_decisions (
    ts REAL NOT NULL, model_name TEXT NOT NULL, champion_version TEXT, challenger_version TEXT NOT NULL,
    stage TEXT NOT NULL, verdict TEXT NOT NULL, reason TEXT NOT NULL, numbers TEXT NOT NULL    -- numbers: JSON
);
"""
COLUMNS = ("request_id", "ts", "endpoint", "model_name", "model_version", "data_version", "predicted", "confidence",
           "width", "height", "channels", "brightness", "contrast", "latency_ms", "image_path", "image_bytes")  # fmt: skip
ROLLOUT_COLUMNS = ("request_id", "ts", "mode", "model_name", "model_version", "predicted", "confidence", "latency_ms", "error")
ROLLOUT_MODES = ("shadow", "canary", "champion")


class FeedbackError(VisionflowError, ValueError):
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


def p95(values: list[float]) -> float | None:
    """Nearest-rank 95th percentile (an observed value; None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    return float(ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)])


@dataclass(frozen=True)
class VersionStats:
    """One model version's side of a rollout window. Latency: the answered requests' (failures
    count in the error rate only); live accuracy: over the answers that got feedback."""

    model_name: str
    model_version: str
    requests: int = 0
    errors: int = 0
    p95_latency_ms: float | None = None
    labelled: int = 0
    correct: int = 0

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def live_accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None

    def as_dict(self) -> dict:
        return {**asdict(self), "error_rate": self.error_rate, "live_accuracy": self.live_accuracy}


@dataclass(frozen=True)
class PairedCounts:
    """Shadowed requests whose served (champion) answer got feedback: the label is the true class
    of the image, so it scores both versions on the same request."""

    both_right: int = 0
    champion_only: int = 0  # champion right, challenger wrong
    challenger_only: int = 0  # challenger right, champion wrong
    both_wrong: int = 0

    @property
    def n(self) -> int:
        return self.both_right + self.champion_only + self.challenger_only + self.both_wrong


@dataclass(frozen=True)
class RolloutWindow:
    """What the inference log holds about a rollout since `since` (`InferenceLog.rollout_window`)."""

    since: float
    until: float
    mode: str | None  # shadow | canary: how the challenger met traffic (None: not yet)
    champion: VersionStats
    challenger: VersionStats
    paired: PairedCounts = PairedCounts()
    shadowed: int = 0  # shadow requests both versions answered
    agreed: int = 0  # ... with the same class

    @property
    def agreement(self) -> float | None:
        return self.agreed / self.shadowed if self.shadowed else None

    def as_dict(self) -> dict:
        return {"since": self.since, "until": self.until, "mode": self.mode, "champion": self.champion.as_dict(), "challenger": self.challenger.as_dict(),
                "paired": asdict(self.paired), "shadowed": self.shadowed, "agreed": self.agreed, "agreement": self.agreement}  # fmt: skip


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
        self._rollout_writes = 0
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
        return self._select("predictions", since, model_name=model_name, model_version=model_version)

    def _select(self, table: str, since: float, **equal: str | None) -> list[dict]:
        """Rows of `table` at or after `since` whose columns equal the given values (None: any), oldest first."""
        conditions = [f"{column} = ?" for column, value in equal.items() if value is not None]
        args = [since, *(str(value) for value in equal.values() if value is not None)]
        with self._lock:
            cur = self._con.execute(f"SELECT * FROM {table} WHERE {' AND '.join(['ts >= ?', *conditions])} ORDER BY ts", args)
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
        predictions, their feedback (the later label wins), class sets and rollout evidence. Idempotent by request id;
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
                if self._con.execute("SELECT 1 FROM pod.sqlite_master WHERE name = 'rollout_log'").fetchone():  # a pod's rollout evidence
                    cols_r = ", ".join(ROLLOUT_COLUMNS)
                    self._con.execute(f"INSERT OR IGNORE INTO rollout_log ({cols_r}) SELECT {cols_r} FROM pod.rollout_log")
                self._con.execute("COMMIT")
            except Exception:
                self._con.execute("ROLLBACK")
                raise
            finally:
                self._con.execute("DETACH DATABASE pod")
        return added + updated

    def record_rollout(self, rows: list[dict]) -> None:
        """Append a rollout's evidence (dicts with ROLLOUT_COLUMNS' keys) in one transaction: each
        challenger attempt (mode shadow or canary, its answer or its error) and each champion
        failure during a rollout (mode champion)."""
        if not rows:
            return
        bad = {r.get("mode") for r in rows} - set(ROLLOUT_MODES)
        if bad:
            raise ValueError(f"rollout_log mode must be one of {', '.join(ROLLOUT_MODES)} (got {', '.join(map(str, bad))})")
        with self._lock:
            self._con.execute("BEGIN")
            try:
                self._con.executemany(f"INSERT OR REPLACE INTO rollout_log ({', '.join(ROLLOUT_COLUMNS)}) VALUES ({', '.join('?' * len(ROLLOUT_COLUMNS))})",
                                      [tuple(r.get(c) for c in ROLLOUT_COLUMNS) for r in rows])  # fmt: skip
                self._con.execute("COMMIT")
            except BaseException:
                self._con.execute("ROLLBACK")
                raise
            self._rollout_writes += len(rows)
            if self._rollout_writes >= 1000:  # bounded like predictions: max_rows, oldest first
                self._rollout_writes = 0
                (n,) = self._con.execute("SELECT COUNT(*) FROM rollout_log").fetchone()
                if n > self.max_rows:
                    cut = self._con.execute("SELECT ts FROM rollout_log ORDER BY ts LIMIT 1 OFFSET ?", (n - self.max_rows,)).fetchone()
                    self._con.execute("DELETE FROM rollout_log WHERE ts < ?", cut)

    def rollout_window(self, since: float, champion: tuple[str, str], challenger: tuple[str, str]) -> RolloutWindow:
        """Both versions' numbers since `since`. Champion: its served predictions + its failures
        logged during the rollout. Challenger: its rollout_log rows; its labels come from the
        predictions row of the same request id — in canary the challenger's own served answer, in
        shadow the champion's (the feedback on the served answer is the image's true class, so it
        scores both: the paired counts)."""
        champion, challenger = (champion[0], str(champion[1])), (challenger[0], str(challenger[1]))
        until = time.time()
        # its own read connection, not the writer's lock: WAL readers never block the service's writes
        con = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30)
        try:
            served = con.execute(
                "SELECT latency_ms, label IS NOT NULL, label = predicted FROM predictions WHERE ts >= ? AND model_name = ? AND model_version = ?",
                (since, *champion),
            ).fetchall()
            (champion_errors,) = con.execute(
                "SELECT COUNT(*) FROM rollout_log WHERE ts >= ? AND mode = 'champion' AND model_name = ? AND model_version = ?", (since, *champion)
            ).fetchone()
            attempts = con.execute(
                "SELECT r.mode, r.predicted, r.latency_ms, r.error, p.model_name, p.model_version, p.predicted, p.label "
                "FROM rollout_log r LEFT JOIN predictions p ON p.request_id = r.request_id "
                "WHERE r.ts >= ? AND r.mode IN ('shadow', 'canary') AND r.model_name = ? AND r.model_version = ?",
                (since, *challenger),
            ).fetchall()
        finally:
            con.close()
        champ = VersionStats(*champion, requests=len(served) + champion_errors, errors=champion_errors,
                             p95_latency_ms=p95([lat for lat, _, _ in served if lat is not None]),
                             labelled=sum(1 for _, has, _ in served if has), correct=sum(1 for _, has, right in served if has and right))  # fmt: skip
        errors = labelled = correct = shadowed = agreed = n_shadow = n_canary = 0
        latencies: list[float] = []
        pairs = [0, 0, 0, 0]  # both right, champion only, challenger only, both wrong
        for mode, predicted, latency, error, served_name, served_version, served_predicted, label in attempts:
            if mode == "canary":
                n_canary += 1
            else:
                n_shadow += 1
            if error is not None:
                errors += 1
                continue
            if latency is not None:
                latencies.append(latency)
            if mode == "canary":
                if (served_name, served_version) == challenger and label is not None:
                    labelled, correct = labelled + 1, correct + (predicted == label)
            elif (served_name, served_version) == champion:
                shadowed, agreed = shadowed + 1, agreed + (predicted == served_predicted)
                if label is not None:
                    labelled, correct = labelled + 1, correct + (predicted == label)
                    champ_right, chall_right = served_predicted == label, predicted == label
                    pairs[0 if champ_right and chall_right else 1 if champ_right else 2 if chall_right else 3] += 1
        mode = "canary" if n_canary > n_shadow else "shadow" if n_shadow else None
        chall = VersionStats(*challenger, requests=n_shadow + n_canary, errors=errors, p95_latency_ms=p95(latencies), labelled=labelled, correct=correct)
        return RolloutWindow(since, until, mode, champ, chall, PairedCounts(*pairs), shadowed, agreed)

    def record_rollout_decision(self, *, ts: float, model_name: str, champion_version: str | None, challenger_version: str, stage: str, verdict: str,
                                reason: str, numbers: dict) -> None:  # fmt: skip
        """One row of `rollout_decisions`: what the rollout flow decided, with its numbers (JSON)."""
        with self._lock:
            self._con.execute("INSERT INTO rollout_decisions VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                              (ts, model_name, champion_version, str(challenger_version), stage, verdict, reason, json.dumps(numbers, default=str)))  # fmt: skip

    def rollout_decisions(self, model_name: str | None = None, challenger_version: str | None = None) -> list[dict]:
        """Recorded rollout decisions, oldest first (numbers parsed back)."""
        rows = self._select("rollout_decisions", 0.0, model_name=model_name, challenger_version=challenger_version)
        return [{**r, "numbers": json.loads(r["numbers"])} for r in rows]

    def close(self) -> None:
        self._con.close()
