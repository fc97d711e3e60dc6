"""Issue 6's numbers: `visionflow run` (the default profile, as `make run` calls it) on a fresh clone,
and the orchestration overhead: wall time minus the time spent inside the component functions.

Run:
    .venv/bin/python benchmarks/bench_pipeline.py [--profile default] [--rerun] [--keep] [--no-t-ref]

Times are printed beside T_ref = 105,000 ÷ the bare-loop img/s of `bench_engine_vs_bare.py --epochs 1`
(30 epochs of the default cnn's bare loop), measured first in the same process tree, so the ratio
holds across machines that differ several-fold in speed. `--rerun` runs `visionflow run` a second
time on the same clone with nothing changed (the cached re-run: it should train and evaluate nothing).

It clones this repository (HEAD) into a temp folder, then runs the `visionflow run` command in this
process with every public function of the component modules wrapped by a timer (nested calls are
counted once), so "component time" is ingest + validate + version + train + evaluate + register
+ package, and everything else (Prefect's ephemeral server, task and flow bookkeeping, result
persistence, the CLI) is overhead. The wall clock starts before the first import of visionflow.
"""

from __future__ import annotations

import time

T_START = time.perf_counter()

import argparse  # noqa: E402
import functools  # noqa: E402
import importlib  # noqa: E402
import inspect  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
COMPONENT_MODULES = [
    "components.data.ingest", "components.data.validation", "components.data.versioning", "components.data.datasets",
    "components.training.runner", "components.evaluation.evaluate", "components.evaluation.report",
    "components.evaluation.drift", "components.tracking.mlflow_store", "components.tracking.selection",
    "components.packaging.bento",
]  # fmt: skip
FLOW_MODULES = ["flows.data_flow", "flows.training_pipeline"]

_local = threading.local()
_seconds: dict[str, float] = defaultdict(float)
_calls: dict[str, int] = defaultdict(int)
_lock = threading.Lock()


def _timed(name: str, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        depth = getattr(_local, "depth", 0)
        if depth:  # inside another component call: already counted
            return fn(*args, **kwargs)
        _local.depth = 1
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            _local.depth = 0
            with _lock:
                _seconds[name] += time.perf_counter() - t
                _calls[name] += 1

    return wrapper


def instrument() -> None:
    originals = {}
    for mod_name in COMPONENT_MODULES:
        mod = importlib.import_module(mod_name)
        for name, fn in vars(mod).copy().items():
            if inspect.isfunction(fn) and fn.__module__ == mod_name and not name.startswith("_"):
                wrapped = _timed(f"{mod_name.rsplit('.', 1)[1]}.{name}", fn)
                setattr(mod, name, wrapped)
                originals[fn] = wrapped
    for mod_name in FLOW_MODULES:  # names the flows imported directly (`from … import write_report`)
        mod = importlib.import_module(mod_name)
        for name, obj in vars(mod).copy().items():
            if inspect.isfunction(obj) and obj in originals:
                setattr(mod, name, originals[obj])


def measure_t_ref() -> float:
    """T_ref in seconds: 105,000 ÷ the bare-loop img/s of the default cnn (one epoch)."""
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_engine_vs_bare.py"), "--epochs", "1"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    bare = float(re.search(r"bare loop: (\d+(?:\.\d+)?) img/s", out).group(1))
    print(f"bare loop {bare:.0f} img/s → T_ref {105_000 / bare:.0f} s", flush=True)
    return 105_000 / bare


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="default")
    ap.add_argument("--keep", action="store_true", help="keep the clone (its .visionflow has the MLflow store)")
    ap.add_argument("--rerun", action="store_true", help="then run again with nothing changed and time the cached re-run")
    ap.add_argument("--no-t-ref", action="store_true", help="skip measuring T_ref (the bare loop, ~1-2 min)")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="a config override for `visionflow run` (repeatable)")
    args = ap.parse_args()
    t_ref = None if args.no_t_ref else measure_t_ref()
    clone = Path(tempfile.mkdtemp(prefix="visionflow-bench-")) / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    t_clone = time.perf_counter()

    sys.path.insert(0, str(REPO))
    instrument()
    from flows.cli import app

    t_run = time.perf_counter()
    rerun = None
    try:
        cmd = ["run", "--profile", args.profile, "--root", str(clone), *(a for kv in args.sets for a in ("--set", kv))]
        app(cmd, standalone_mode=False)
        t_end = time.perf_counter()
        first = (dict(_seconds), dict(_calls))  # the table below is the first run's
        if args.rerun:
            t0 = time.perf_counter()
            app(cmd, standalone_mode=False)
            rerun = time.perf_counter() - t0
    finally:
        if not args.keep:
            shutil.rmtree(clone.parent, ignore_errors=True)
    wall = t_end - T_START - (t_clone - T_START)  # the clone is set-up, not the run
    _seconds.clear(), _calls.clear()
    _seconds.update(first[0]), _calls.update(first[1])
    inside = sum(_seconds.values())
    print(f"\nprofile {args.profile}: visionflow run on a fresh clone")
    print("| figure | value |\n|---|---|")
    ratio = lambda secs: f" = {secs / t_ref:.2f} × T_ref" if t_ref else ""  # noqa: E731
    if t_ref:
        print(f"| T_ref (105,000 ÷ bare-loop img/s) | {t_ref:.0f} s |")
    print(f"| wall time (imports + `visionflow run`) | {wall:.0f} s ({wall / 60:.1f} min){ratio(wall)} |")
    if rerun is not None:
        print(f"| cached re-run, nothing changed | {rerun:.1f} s{ratio(rerun)} |")
    print(f"| of which imports before the run | {t_run - t_clone:.1f} s |")
    print(f"| inside component functions | {inside:.0f} s |")
    print(f"| orchestration overhead | {wall - inside:.1f} s ({(wall - inside) / wall:.1%}) |")
    print("\n| component function | calls | seconds |\n|---|---|---|")
    for name, secs in sorted(_seconds.items(), key=lambda kv: -kv[1])[:15]:
        print(f"| {name} | {_calls[name]} | {secs:.1f} |")


if __name__ == "__main__":
    main()
