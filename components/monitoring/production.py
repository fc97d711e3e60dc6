"""Production drift: the predictions a champion served (the inference log) against the data it was
trained on, with the drift score and threshold `retrain_flow` uses (components/evaluation/drift.py):

- input statistics: the pixel mean and std of what was served (from each request's brightness and
  contrast, which are exactly the mean and std of its model input) against the training split's;
- the predicted-class distribution against the training class balance (`class_tv`);
- where feedback exists: predictions against the true labels (`prediction_tv`) and live accuracy;
- the confidence of the answers, reported (it has no training-side reference).

`decide` is the policy (a frozen `MonitorDecision`); `write_report` the HTML with plots;
`feedback_source` turns labelled, kept images into an image folder for the usual ingest path.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from components.evaluation.drift import DriftReport, _tv, drift_report, histogram


@dataclass(frozen=True)
class MonitorDecision:
    model_name: str
    model_version: str
    since: float  # window start (unix time)
    n: int  # logged predictions in the window
    n_feedback: int
    live_accuracy: float | None  # None below monitor.min_feedback
    mean_confidence: float | None
    drift: DriftReport | None  # None without enough requests or a reference
    retrain: bool
    reason: str

    def as_metrics(self) -> dict[str, float]:
        out = {"prod_requests": float(self.n), "prod_feedback": float(self.n_feedback)}
        if self.live_accuracy is not None:
            out["prod_live_accuracy"] = self.live_accuracy
        if self.mean_confidence is not None:
            out["prod_mean_confidence"] = self.mean_confidence
        if self.drift is not None:
            out.update({k.replace("drift_", "prod_drift_"): v for k, v in self.drift.as_metrics().items() if not math.isnan(v)})
        return out

    def as_dict(self) -> dict:
        return {**asdict(self), "drift": None if self.drift is None else asdict(self.drift), "metrics": self.as_metrics()}


def production_stats(rows: list[dict], classes: list[str]) -> dict:
    """The inference log window in `data_stats`' shape (predicted classes stand in for labels)."""
    counts = [0] * len(classes)
    index = {c: i for i, c in enumerate(classes)}
    for r in rows:
        if r["predicted"] in index:
            counts[index[r["predicted"]]] += 1
    b = [float(r["brightness"]) for r in rows if r.get("brightness") is not None]
    c = [float(r["contrast"]) for r in rows if r.get("contrast") is not None]
    mean = sum(b) / len(b) if b else 0.0
    # every input of one model has the same pixel count: pooled variance = mean within-image + between-image
    var = (sum(x * x for x in c) / len(c) if c else 0.0) + (sum((x - mean) ** 2 for x in b) / len(b) if b else 0.0)
    return {"classes": classes, "class_counts": counts, "pixel_mean": mean, "pixel_std": math.sqrt(var), "n": len(rows),
            "brightness_hist": histogram(b), "contrast_hist": histogram(c)}  # fmt: skip


def decide(reference: dict | None, rows: list[dict], classes: list[str], *, model_name: str, model_version: str, since: float,
           threshold: float, min_requests: int, accuracy_floor: float, min_feedback: int) -> MonitorDecision:  # fmt: skip
    """Retrain when the production drift score passes `threshold` or live accuracy falls below `accuracy_floor`."""
    labelled = [r for r in rows if r.get("label")]
    live = sum(r["label"] == r["predicted"] for r in labelled) / len(labelled) if len(labelled) >= min_feedback else None
    conf = sum(float(r["confidence"]) for r in rows) / len(rows) if rows else None
    base = dict(model_name=model_name, model_version=str(model_version), since=since, n=len(rows), n_feedback=len(labelled),
                live_accuracy=live, mean_confidence=conf)  # fmt: skip
    enough = len(rows) >= min_requests
    drift = _drift(reference, rows, labelled, classes) if enough or live is not None else None
    reasons = []
    if enough and drift is not None and drift.comparable and drift.score > threshold:
        reasons.append(f"production drift score {drift.score:.3f} > {threshold:g} over {len(rows)} predictions")
    if live is not None and live < accuracy_floor:
        reasons.append(f"live accuracy {live:.3f} < floor {accuracy_floor:g} over {len(labelled)} feedback")
    if reasons:
        return MonitorDecision(**base, drift=drift, retrain=True, reason="; ".join(reasons))
    if not enough:
        why = f"only {len(rows)} logged predictions in the window; need {min_requests}"
    elif reference is None:
        why = "the champion's run has no data_stats.json to compare with"
    elif not drift.comparable:
        why = "the champion's training classes differ from the served model's"
    else:
        why = f"production drift score {drift.score:.3f} <= {threshold:g} over {len(rows)} predictions"
    return MonitorDecision(**base, drift=drift, retrain=False, reason=why)


def _drift(reference: dict | None, rows: list[dict], labelled: list[dict], classes: list[str]) -> DriftReport | None:
    if reference is None or not rows:
        return None
    report = drift_report(reference, production_stats(rows, classes), None, None, None)
    if not report.comparable or not labelled:
        return report
    k = {c: i for i, c in enumerate(classes)}
    pred, true = [0] * len(classes), [0] * len(classes)
    for r in labelled:
        if r["predicted"] in k and r["label"] in k:
            pred[k[r["predicted"]]] += 1
            true[k[r["label"]]] += 1
    pred_tv = _tv(pred, true)
    acc = sum(r["label"] == r["predicted"] for r in labelled) / len(labelled)
    return DriftReport(report.class_tv, report.pixel_mean_shift, report.pixel_std_ratio, pred_tv, acc, max(report.score, pred_tv))


def write_report(path: Path, decision: MonitorDecision, reference: dict | None, rows: list[dict], classes: list[str]) -> Path:
    """One self-contained HTML page: the decision, its numbers, and three plots (inputs, classes, confidence)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    prod = production_stats(rows, classes)
    figs = []
    edges = [i / 20 for i in range(20)]
    for key, title in (("brightness_hist", "input brightness (pixel mean per image)"), ("contrast_hist", "input contrast (pixel std per image)")):
        fig, ax = plt.subplots(figsize=(5, 2.6), dpi=90)
        for stats, name in ((reference, "training"), (prod, "production")):
            if stats and stats.get(key):
                total = sum(stats[key]) or 1
                ax.step(edges, [v / total for v in stats[key]], where="post", label=name)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=8)
        figs.append(fig)
    fig, ax = plt.subplots(figsize=(5, 2.6), dpi=90)
    xs = range(len(classes))
    if reference:
        total = sum(reference["class_counts"]) or 1
        ax.bar([x - 0.2 for x in xs], [v / total for v in reference["class_counts"]], 0.4, label="training labels")
    total = sum(prod["class_counts"]) or 1
    ax.bar([x + 0.2 for x in xs], [v / total for v in prod["class_counts"]], 0.4, label="production predictions")
    ax.set_xticks(list(xs), classes, fontsize=7, rotation=45 if len(classes) > 10 else 0)
    ax.set_title("class distribution", fontsize=9)
    ax.legend(fontsize=8)
    figs.append(fig)
    fig, ax = plt.subplots(figsize=(5, 2.6), dpi=90)
    ax.hist([float(r["confidence"]) for r in rows], bins=20, range=(0, 1))
    ax.set_title("confidence of the predicted class", fontsize=9)
    figs.append(fig)
    images = []
    for f in figs:
        buf = io.BytesIO()
        f.tight_layout()
        f.savefig(buf, format="png")
        plt.close(f)
        images.append(base64.b64encode(buf.getvalue()).decode())
    table = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.4f}</td></tr>" for k, v in decision.as_metrics().items())
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>visionflow monitor</title>
<style>body{{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto}} td{{padding:.1rem .8rem}} img{{margin:.3rem}}</style></head><body>
<h1>Production monitor — {html.escape(decision.model_name)} v{html.escape(decision.model_version)}</h1>
<p>{when} · window since {time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(decision.since))} · {decision.n} predictions, {decision.n_feedback} with feedback</p>
<h2>Decision: {"retrain" if decision.retrain else "no retrain"}</h2><p>{html.escape(decision.reason)}</p>
<table>{table}</table>{"".join(f'<img src="data:image/png;base64,{i}">' for i in images)}</body></html>"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page)
    return path


def feedback_source(data_dir: Path, log_dir: Path, labelled: list[dict], out: Path) -> int:
    """An image folder for ingest: the current data's train/val/test images plus every labelled,
    kept image under train/<label>/feedback/ (files already in the data, by content, are left out:
    the same upload twice would be one file in two places). Returns how many images were added."""
    if out.exists():
        shutil.rmtree(out)
    seen: set[str] = set()
    for split in ("train", "val", "test"):
        for f in sorted((data_dir / split).rglob("*")):
            if f.is_file():
                dest = out / f.relative_to(data_dir)
                dest.parent.mkdir(parents=True, exist_ok=True)
                try:
                    dest.hardlink_to(f)  # the data is read-only input here; no copy of a large dataset
                except OSError:
                    shutil.copy2(f, dest)
                seen.add(hashlib.sha256(f.read_bytes()).hexdigest())
    added = 0
    for r in labelled:
        src = log_dir / r["image_path"] if r.get("image_path") else None
        if src is None or not src.is_file():
            continue
        data = src.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest in seen:
            continue
        seen.add(digest)
        dest = out / "train" / r["label"] / "feedback" / src.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
        added += 1
    return added
