"""Data drift between the data a champion was trained on and new data — the retraining trigger.

Statistics of a dataset (`data_stats`, small JSON logged with every pipeline run): per-class counts and
pixel mean/std of the train split. `drift_report` compares new data with the champion's: the total
variation distance of the class distributions, the standardised shift of the pixel mean, the ratio
of pixel stds, and the champion's own predictions on the new data (their class distribution against
the new labels', and its accuracy there).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from components.data.datasets import DatasetSpec, ImageTensors


def data_stats(spec: DatasetSpec, train: ImageTensors) -> dict:
    from components.data.datasets import stats_sample

    x = stats_sample(train).float() / 255  # the images that set the normalisation (all, or a fixed sample)
    counts = torch.bincount(train.y, minlength=spec.num_classes).tolist()
    per_image = x.flatten(1)  # brightness/contrast per image: what the inference log records of each request
    return {"classes": spec.classes, "class_counts": counts, "pixel_mean": float(x.mean()), "pixel_std": float(x.std()), "n": len(train),
            "brightness_hist": histogram(per_image.mean(1).tolist()), "contrast_hist": histogram(per_image.std(1, correction=0).tolist())}  # fmt: skip


HIST_BINS = 20


def histogram(values: list[float]) -> list[int]:
    """Counts in HIST_BINS equal bins over [0, 1] (pixel statistics in 0..1; the last bin holds 1.0)."""
    counts = [0] * HIST_BINS
    for v in values:
        counts[min(HIST_BINS - 1, max(0, int(v * HIST_BINS)))] += 1
    return counts


def _tv(p: list[float], q: list[float]) -> float:
    sp, sq = sum(p) or 1, sum(q) or 1
    return 0.5 * sum(abs(a / sp - b / sq) for a, b in zip(p, q))


@dataclass(frozen=True)
class DriftReport:
    class_tv: float  # total variation distance of class frequencies, 0..1
    pixel_mean_shift: float  # |mean_new - mean_old| / std_old
    pixel_std_ratio: float  # std_new / std_old
    prediction_tv: float  # champion's predicted-class distribution vs the new labels', 0..1
    champion_accuracy: float  # the champion on the new data
    score: float  # the largest of the normalised signals
    comparable: bool = True

    def as_metrics(self) -> dict[str, float]:
        return {f"drift_{k}": float(v) for k, v in asdict(self).items() if k != "comparable"}


def drift_report(old: dict, new: dict, champion: nn.Module | None, champion_spec: DatasetSpec | None, new_data: ImageTensors | None) -> DriftReport:
    if old.get("classes") != new.get("classes"):
        return DriftReport(1.0, 0.0, 1.0, 1.0, 0.0, 1.0, comparable=False)
    class_tv = _tv(old["class_counts"], new["class_counts"])
    shift = abs(new["pixel_mean"] - old["pixel_mean"]) / max(old["pixel_std"], 1e-6)
    ratio = new["pixel_std"] / max(old["pixel_std"], 1e-6)
    pred_tv, acc = 0.0, float("nan")
    if champion is not None and champion_spec is not None and new_data is not None and len(new_data):
        from components.evaluation.metrics import probabilities

        preds = probabilities(champion, new_data.x.float() / 255, champion_spec).argmax(1)
        k = champion_spec.num_classes
        pred_tv = _tv(torch.bincount(preds, minlength=k).tolist(), torch.bincount(new_data.y, minlength=k).tolist())
        acc = float((preds == new_data.y).float().mean())
    score = max(class_tv, shift, abs(ratio - 1), pred_tv)
    return DriftReport(class_tv, shift, ratio, pred_tv, acc, score)
