"""Does the search pay on data the defaults were not tuned for? The default profile's champion against
`visionflow tune --budget B` then `visionflow run --profile tuned`, on a gray set that is not digits
in a fresh project: the generated photos ingested as gray images (`gray-photos`), or patches of the
pictures scikit-image ships (`textures`, bench_recipes.py). Choices are made on validation; the
champion's test accuracy is reported for both.

Run:
    .venv/bin/python benchmarks/bench_tune.py [--dataset gray-photos|textures] [--budget 10m] [--family cnn] [--per-class 300] [--side 32] [--keep]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
VISIONFLOW = str(Path(sys.executable).with_name("visionflow"))
SETS = ["--set", "models.gan.enabled=false", "--set", "packaging.enabled=false"]  # the classifiers are what the search tunes


def _run(args: list[str], cwd: Path) -> tuple[str, float]:
    t = time.perf_counter()
    res = subprocess.run([VISIONFLOW, *args], cwd=cwd, capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"visionflow {' '.join(args)} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res.stdout, time.perf_counter() - t


def _best_of_last_run(project: Path) -> tuple[str, float, float]:
    """The classifier the last run chose on validation (its visionflow-classifier version, promoted
    or not): key, test and validation accuracy."""
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{project / '.visionflow' / 'mlflow' / 'mlflow.db'}")
    versions = mlflow.MlflowClient().search_model_versions("name='visionflow-classifier'")
    mv = max(versions, key=lambda v: int(v.version))
    return mv.tags["model_key"], float(mv.tags["test_accuracy"]), float(mv.tags["val_accuracy"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", default="10m")
    ap.add_argument("--family", action="append", default=[], help="tune only these families (repeatable; default: every one)")
    ap.add_argument("--dataset", choices=["gray-photos", "textures"], default="gray-photos")
    ap.add_argument("--per-class", type=int, default=None, help="gray-photos (5 classes): default 300; textures (10 classes): default 500")
    ap.add_argument("--side", type=int, default=32)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_recipes import TEXTURE_PICTURES, photos, textures  # the same sets as the recipe benchmark

    tmp = Path(tempfile.mkdtemp(prefix="visionflow-tune-"))
    data_sets = ["--set", "data.channels=gray", "--set", f"data.image_size={args.side}"]
    if args.dataset == "textures":
        per_class, classes = args.per_class or 500, len(TEXTURE_PICTURES)
        project = textures(tmp, per_class, args.side).parent
        what = f"{per_class * classes} patches of scikit-image's pictures, gray {args.side}×{args.side}, {classes} classes"
    else:
        per_class, classes = args.per_class or 300, 5
        project = photos(tmp, per_class, args.side).parent
        what = f"{per_class * classes} generated photos as gray {args.side}×{args.side}, {classes} classes"
    _, t_default = _run(["run", *data_sets, *SETS], project)
    default = _best_of_last_run(project)
    out, t_tune = _run(["tune", "--budget", args.budget, *(a for f in args.family for a in ("--family", f)), *data_sets], project)
    print("\n".join(line for line in out.splitlines() if line.strip()), flush=True)
    _, t_tuned = _run(["run", "--profile", "tuned", *SETS], project)
    tuned = _best_of_last_run(project)
    print(f"\n{what}")
    print("| profile | best on validation | val acc | test acc | seconds |\n|---|---|---|---|---|")
    print(f"| default | {default[0]} | {100 * default[2]:.2f} % | {100 * default[1]:.2f} % | {t_default:.0f} |")
    print(f"| tune --budget {args.budget} | | | | {t_tune:.0f} |")
    print(f"| tuned | {tuned[0]} | {100 * tuned[2]:.2f} % | {100 * tuned[1]:.2f} % | {t_tuned:.0f} |")
    print(f"tuned − default, test accuracy of the model each run chose: {100 * (tuned[1] - default[1]):+.2f} points")
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        print(f"project kept: {project}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
