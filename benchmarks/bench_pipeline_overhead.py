"""Issue 12's "families train slower inside the pipeline": one family (default profile) trained the
same way under each ingredient the pipeline adds, one at a time, to find which one costs.

Run (after `make run` has ingested data/):  .venv/bin/python benchmarks/bench_pipeline_overhead.py --family rnn
Variants: bare (as bench_families.py), + the rich progress bar, + an MLflow run with system metrics
and per-epoch logging, + a Prefect task called in the flow's thread, all of them; thread / thread-all:
the task submitted to the task runner, i.e. run in a worker thread (the pipeline's way).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components.workspace import Workspace  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--family", default="rnn")
    ap.add_argument("--variants", nargs="+", default=["bare", "progress", "mlflow", "prefect", "all", "thread", "thread-all"])
    ap.add_argument("--epochs", type=int, default=None)
    args = ap.parse_args()
    ws = Workspace.at(".")
    ws.activate()
    from components.config import load_config
    from components.data.datasets import load_dataset
    from components.tracking import mlflow_store as store
    from components.training.runner import train_classifier

    loaded = load_dataset(ws.data_dir())
    over = [f"models.{args.family}.train.epochs={args.epochs}"] if args.epochs else []
    base = load_config("params.yaml", "default", over)
    tmp = Path(tempfile.mkdtemp())
    uri, exp = store.configure(Workspace.at(tmp, home=tmp / ".visionflow"))

    def train(progress: bool, mlflow: bool, label: str) -> float:
        cfg = base.model_copy(update={"engine": base.engine.model_copy(update={"progress": progress})})
        fam = getattr(cfg.models, args.family)
        with ExitStack() as stack:
            callback = None
            if mlflow:
                run_id = store.start_run(exp, f"{args.family}-{label}", {})
                stack.enter_context(store.active_run(run_id, log_system_metrics=True))
                callback = store.EpochLogger(run_id)
            t = time.perf_counter()
            res = train_classifier(args.family, fam, cfg.engine, ws.data_dir(), tmp / label, loaded=loaded, on_epoch_end=callback)
            seconds = time.perf_counter() - t
            if mlflow:
                store.end_run(run_id, ok=True)
        print(f"| {label} | {seconds:.1f} s | {res['val_acc']:.4f} |", flush=True)
        return seconds

    print(f"| {args.family}: variant | training wall | val acc |\n|---|---|---|", flush=True)
    for v in args.variants:
        if v == "bare":
            train(False, False, v)
        elif v == "progress":
            train(True, False, v)
        elif v == "mlflow":
            train(False, True, v)
        elif v == "plain-thread":  # a bare threading.Thread, joined: a thread without Prefect around it
            import threading

            th = threading.Thread(target=train, args=(False, False, v))
            th.start()
            th.join()
        elif v in ("prefect", "all", "thread", "thread-all"):
            from prefect import flow, task

            @task(name=f"train-{v}")
            def in_task(v=v):
                return train(v.endswith("all"), v.endswith("all"), v)

            @flow(name=f"overhead-{v}")
            def in_flow(v=v):
                # "thread": submitted to the task runner, so it runs in a worker thread as in the pipeline
                return in_task.submit().result() if v.startswith("thread") else in_task()

            in_flow()


if __name__ == "__main__":
    main()
