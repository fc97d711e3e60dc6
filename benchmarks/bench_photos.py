"""The "your own photos" numbers: a generated photo-like folder (components/data/synthetic.py:
several hundred RGB JPEGs per class around 128 px, shapes on textured backgrounds, some grayscale
and EXIF-rotated files, no split folders) through the README's two commands in a fresh project:

    visionflow ingest --source DIR && visionflow run          (default profile)

Prints the wall time of each command (and as a ratio to T_ref, measured first: 105,000 ÷ the bare-loop
img/s of `bench_engine_vs_bare.py --epochs 1`, so it holds across machines), the peak resident memory
of the process tree (sampled every 0.2 s), the training size chosen, every model's test accuracy and
the champion's.

Run:
    .venv/bin/python benchmarks/bench_photos.py [--per-class 300] [--classes 5] [--profile default]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
VISIONFLOW = str(Path(sys.executable).parent / "visionflow")


def run_measured(cmd: list[str], cwd: Path) -> tuple[int, float, dict, str]:
    """(exit code, wall seconds, peak memory in MB, output). Memory, sampled every 0.2 s: the RSS of
    the command's own process, and the PSS summed over its process tree (Prefect's ephemeral server,
    workers: shared library pages counted once)."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = {"rss_main": 0.0, "pss_tree": 0.0}
    done = threading.Event()

    def sample():
        while not done.is_set():
            try:
                main = psutil.Process(proc.pid)
                peak["rss_main"] = max(peak["rss_main"], main.memory_info().rss / 2**20)
                pss = 0
                for p in [main, *main.children(recursive=True)]:
                    try:
                        pss += p.memory_full_info().pss
                    except psutil.Error:
                        pass
                peak["pss_tree"] = max(peak["pss_tree"], pss / 2**20)
            except psutil.Error:
                pass
            time.sleep(0.2)

    threading.Thread(target=sample, daemon=True).start()
    out = proc.communicate()[0]
    done.set()
    return proc.returncode, time.perf_counter() - t, {k: round(v) for k, v in peak.items()}, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-class", type=int, default=300)
    ap.add_argument("--classes", type=int, default=5)
    ap.add_argument("--profile", default="default")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="keep the temp project")
    ap.add_argument("--no-t-ref", action="store_true", help="skip measuring T_ref (needs the digits in data/)")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_pipeline import measure_t_ref

    t_ref = None if args.no_t_ref else measure_t_ref()
    from components.data.synthetic import SHAPES, make_photo_folder

    tmp = Path(tempfile.mkdtemp(prefix="visionflow-photos-"))
    src = make_photo_folder(tmp / "photos", args.per_class, SHAPES[: args.classes], seed=args.seed)
    project = tmp / "project"
    project.mkdir()
    shutil.copy(REPO / "params.yaml", project / "params.yaml")
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    n = args.per_class * args.classes
    print(f"{n} generated photos ({args.classes} classes) in {src}; project {project}")
    rc, t_ingest, rss_ingest, out = run_measured([VISIONFLOW, "ingest", "--source", str(src), "--profile", args.profile], project)
    print(out[-1500:] if rc else "\n".join(line for line in out.splitlines() if line.startswith(("validation", "ingested", "data version"))))
    if rc:
        return rc
    rc, t_run, rss_run, out = run_measured([VISIONFLOW, "run", "--profile", args.profile], project)
    if rc:
        print(out[-4000:])
        return rc
    print("\n".join(line for line in out.splitlines() if line.startswith(("|", "selection", "champion", "training on", "done in"))))
    train_s = {}  # each family's training seconds, from its last per-epoch progress line
    for m in re.finditer(r"^epoch family=(\S+) epoch=(\d+)/\d+ .* elapsed_s=([\d.]+)", out, re.M):
        train_s[m.group(1)] = (int(m.group(2)), float(m.group(3)))
    print("training: " + ", ".join(f"{k} {s:.0f} s ({e} epochs)" for k, (e, s) in train_s.items()))
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{project / '.visionflow' / 'mlflow' / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    mv = client.get_model_version_by_alias("visionflow-classifier", "champion")
    spec = mlflow.models.get_model_info(f"models:/visionflow-classifier/{mv.version}").metadata["visionflow_spec"]
    print(json.dumps({
        "images": n, "ingest_s": round(t_ingest, 1), "run_s": round(t_run, 1), "total_s": round(t_ingest + t_run, 1),
        "peak_mb_ingest": rss_ingest, "peak_mb_run": rss_run,
        "champion": f"{mv.tags.get('model_key')} v{mv.version}", "champion_test_accuracy": float(mv.tags["test_accuracy"]),
        "image_size": spec["image_size"], "resize": spec.get("resize"), "channels": spec["in_channels"],
        **({"t_ref_s": round(t_ref, 1), "total_over_t_ref": round((t_ingest + t_run) / t_ref, 2)} if t_ref else {}),
    }, indent=1))  # fmt: skip
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
