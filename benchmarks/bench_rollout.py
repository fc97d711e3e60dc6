"""Issue 20's numbers: what a rollout costs the champion's answers, how exact the canary share is,
and the automatic decision on real traffic with feedback.

    .venv/bin/python benchmarks/bench_rollout.py cost --seconds 15        # shadow vs rollout off, side by side
    .venv/bin/python benchmarks/bench_rollout.py canary --requests 2000   # share of answers from a 20 % canary
    .venv/bin/python benchmarks/bench_rollout.py scenario                 # worse challenger rolled back, equal one promoted

Each part runs in a throw-away workspace with real `visionflow serve` processes (the shipped process
shape: 1 worker, batching 32/500 ms) and the load generator of bench_serving.py on the same cores.
`cost` and `canary` use untrained cnns of the default widths on 28×28 gray (weights do not change the
compute); `scenario` trains two cnns on the bundled digits (a good one and a much worse one), serves
the test split with feedback and lets `visionflow rollout evaluate` decide.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serving import CLI, REPO, Server, load_profile  # noqa: E402


def _workspace():
    home = Path(tempfile.mkdtemp(prefix="bench-rollout-"))
    os.environ["VISIONFLOW_HOME"] = str(home)
    from components.tracking import mlflow_store as store
    from components.workspace import Workspace

    ws = Workspace.at(REPO, home=home)
    ws.activate()
    uri, experiment = store.configure(ws)
    return ws, home, uri, experiment


def _register(experiment: str, model, spec, lineage: dict) -> str:
    from components.tracking import mlflow_store as store

    c, h, w = spec.in_channels, *spec.image_size
    run = store.start_run(experiment, "cnn", lineage)
    uri = store.log_model(run, model, np.zeros((2, c, h, w), np.float32), spec.to_json(), extra_metadata={"task": "classification"})
    store.end_run(run, True)
    return store.register_version(
        uri, store.CLASSIFIER_MODEL, {**lineage, "task": "classification", "run_id": run, "evaluated": "true", "data_validated": "true"}
    )


def _untrained(experiment: str, seed: int) -> str:
    import torch

    from components.config import load_config
    from components.data.preprocess import DatasetSpec
    from components.models import create_model

    torch.manual_seed(seed)
    hparams = dict(load_config(REPO / "params.yaml").models["cnn"].hparams)
    model = create_model("cnn", num_classes=10, in_channels=1, image_size=(28, 28), **hparams).eval()
    spec = DatasetSpec([str(i) for i in range(10)], 1, (28, 28), [0.13], [0.3])
    return _register(experiment, model, spec, {"data_version": "bench", "params_hash": "bench", "git_commit": "bench"})


def _stage(version: str, stage: str, percent: float = 0.0) -> None:
    from mlflow import MlflowClient

    from components.tracking import mlflow_store as store

    store.set_alias(store.CLASSIFIER_MODEL, store.CHALLENGER, version)
    c = MlflowClient()
    for key, value in {"rollout.stage": stage, "rollout.percent": str(percent), "rollout.started": str(time.time())}.items():
        c.set_model_version_tag(store.CLASSIFIER_MODEL, version, key, value)


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (28, 28), dtype=np.uint8), "L").save(buf, format="PNG")
    return buf.getvalue()


def _wait_stage(url: str, stage: str | None, timeout: float = 60) -> None:
    import json
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        r = json.loads(urllib.request.urlopen(f"{url}/metadata", timeout=5).read()).get("rollout")
        if (r or {}).get("stage") == stage:
            return
        time.sleep(0.2)
    raise TimeoutError(f"stage {stage} not reached")


def cost(args) -> None:
    """Rollout off vs shadow (every request also answered by the challenger), same server shape, alternating."""
    from components.tracking import mlflow_store as store

    ws, home, uri, experiment = _workspace()
    v1, v2 = _untrained(experiment, 1), _untrained(experiment, 2)
    store.set_alias(store.CLASSIFIER_MODEL, store.CHAMPION, v1)
    _stage(v2, "shadow")
    body = _png(0)
    print(f"{args.seconds:.0f} s at c=32 closed loop, {args.open_seconds:.0f} s open loop at {args.rate:.0f} req/s; {args.rounds} round(s), alternating")
    print("| rollout | c=32 req/s (p50 / p99 ms) | open loop p50 / p99 ms | non-200 | server PSS MB |")
    print("|---|---|---|---|---|")
    totals: dict[str, list] = {"off": [], "shadow": []}
    for _ in range(args.rounds):
        for mode in ("off", "shadow"):
            env = {"VISIONFLOW_HOME": str(home), "MLFLOW_TRACKING_URI": uri, "VISIONFLOW_ROLLOUT": "on" if mode == "shadow" else "off"}
            server = Server(env, poll=1.0)
            try:
                server.wait_ready()
                if mode == "shadow":
                    _wait_stage(server.url, "shadow")
                run = load_profile(server, body, args.seconds, args.rate, args.open_seconds)
            finally:
                server.stop()
            closed, opened, pss, bad = run["closed"], run["open"], run["pss_mb"], run["errors"]
            totals[mode].append((closed["req_s"], opened["p99_ms"], pss))
            print(f"| {mode} | {closed['req_s']:.0f} ({closed['p50_ms']:.0f} / {closed['p99_ms']:.0f}) | {opened['p50_ms']:.1f} / {opened['p99_ms']:.1f} | "
                  f"{bad or 0} | {pss:.0f} |", flush=True)  # fmt: skip
    off = [np.mean([t[i] for t in totals["off"]]) for i in range(3)]
    on = [np.mean([t[i] for t in totals["shadow"]]) for i in range(3)]
    print(
        f"\nshadow vs off: c=32 throughput {on[0] / off[0]:.2f}× ({100 * (1 - on[0] / off[0]):+.1f} % cost), "
        f"open-loop p99 {on[1]:.1f} vs {off[1]:.1f} ms ({100 * (on[1] / off[1] - 1):+.1f} %), memory {on[2]:.0f} vs {off[2]:.0f} MB (two models loaded)"
    )


def canary(args) -> None:
    from components.tracking import mlflow_store as store

    ws, home, uri, experiment = _workspace()
    v1, v2 = _untrained(experiment, 1), _untrained(experiment, 2)
    store.set_alias(store.CLASSIFIER_MODEL, store.CHAMPION, v1)
    _stage(v2, "canary", args.percent)
    server = Server({"VISIONFLOW_HOME": str(home), "MLFLOW_TRACKING_URI": uri}, poll=1.0)
    import httpx

    try:
        server.wait_ready()
        _wait_stage(server.url, "canary")
        seen: Counter = Counter()
        body = _png(0)
        with httpx.Client(timeout=30) as client:
            for i in range(args.requests):
                r = client.post(f"{server.url}/classify", files={"image": ("x.png", body, "image/png")}, headers={"X-Client-Id": f"user-{i}"})
                seen[r.json()["model"]["version"] if r.status_code == 200 else f"HTTP {r.status_code}"] += 1
    finally:
        server.stop()
    share = 100 * seen[v2] / args.requests
    print(
        f"canary {args.percent:g} %: {seen[v2]} of {args.requests} requests (distinct X-Client-Id) answered by the challenger v{v2} = {share:.2f} % "
        f"({share - args.percent:+.2f} points); champion v{v1}: {seen[v1]}; other: {sum(v for k, v in seen.items() if k not in (v1, v2))}"
    )


def _train(widths: list[int], epochs: int, seed: int, data, spec):
    from components.config import load_config
    from components.models import create_model
    from components.training.classifier import fit

    cfg = load_config(REPO / "params.yaml")
    train = cfg.models["cnn"].train.model_copy(update={"epochs": epochs, "seed": seed})
    model = create_model("cnn", num_classes=spec.num_classes, in_channels=spec.in_channels, image_size=spec.image_size, widths=widths)
    fit(model, data["train"], data["val"], spec, train, workdir=Path(tempfile.mkdtemp(prefix="bench-rollout-train-")))
    return model.cpu().eval()


def scenario(args) -> None:
    """A worse challenger in canary with feedback is rolled back by `visionflow rollout evaluate`; an equal one is promoted."""
    import httpx

    from components.data.datasets import load_dataset
    from components.tracking import mlflow_store as store

    data_dir = Path(args.data)
    if not (data_dir / "test").is_dir():
        raise SystemExit("needs the bundled digits in data/: run `make run` (or `visionflow ingest`) first")
    spec, data = load_dataset(data_dir)
    ws, home, uri, experiment = _workspace()
    lineage = {"data_version": "bench", "params_hash": "bench", "git_commit": "bench"}
    t0 = time.perf_counter()
    good = _register(experiment, _train([16, 32, 64], 4, 0, data, spec), spec, lineage)
    worse = _register(experiment, _train([4, 8], 1, 0, data, spec), spec, lineage)
    equal = _register(experiment, _train([16, 32, 64], 4, 1, data, spec), spec, lineage)
    print(f"trained 3 cnns in {time.perf_counter() - t0:.0f} s; champion v{good}, worse challenger v{worse}, equal challenger v{equal}")
    store.set_alias(store.CLASSIFIER_MODEL, store.CHAMPION, good)
    tests = sorted((data_dir / "test").rglob("*.png"))
    env = {"VISIONFLOW_HOME": str(home), "MLFLOW_TRACKING_URI": uri}
    server = Server(env, poll=1.0)
    codes: Counter = Counter()
    try:
        server.wait_ready()
        for challenger in (worse, equal):
            cmd = [CLI, "rollout", "start", challenger, "--mode", "canary", "--percent", str(args.percent), "--root", str(REPO)]
            out = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True)
            print(f"$ visionflow rollout start {challenger} --mode canary --percent {args.percent:g}: {out.stdout.strip() or out.stderr.strip()}")
            _wait_stage(server.url, "canary")
            with httpx.Client(timeout=30) as client:
                for i, path in enumerate(tests):
                    r = client.post(
                        f"{server.url}/classify", files={"image": (path.name, path.read_bytes(), "image/png")}, headers={"X-Client-Id": f"user-{i}"}
                    )
                    codes[r.status_code] += 1
                    if r.status_code == 200:
                        client.post(f"{server.url}/feedback", json={"request_id": r.json()["request_id"], "label": path.parent.name})
            out = subprocess.run([CLI, "rollout", "evaluate", "--root", str(REPO)], env={**os.environ, **env}, capture_output=True, text=True)
            print(f"$ visionflow rollout evaluate\n{out.stdout.strip()}{out.stderr.strip()}")
            champion = store.alias_version(store.CLASSIFIER_MODEL, store.CHAMPION)
            print(f"→ champion is now v{champion} (challenger v{challenger} {'promoted' if champion == challenger else 'not promoted'})\n")
    finally:
        server.stop()
    print(f"requests: {dict(codes)} (failed: {sum(v for k, v in codes.items() if k != 200)})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("cost")
    a.add_argument("--seconds", type=float, default=15)
    a.add_argument("--open-seconds", type=float, default=30)
    a.add_argument("--rate", type=float, default=50)
    a.add_argument("--rounds", type=int, default=2)
    b = sub.add_parser("canary")
    b.add_argument("--requests", type=int, default=2000)
    b.add_argument("--percent", type=float, default=20)
    c = sub.add_parser("scenario")
    c.add_argument("--percent", type=float, default=50)
    c.add_argument("--data", default=str(REPO / "data"), help="an ingested dataset (data/ of a project)")
    args = ap.parse_args()
    {"cost": cost, "canary": canary, "scenario": scenario}[args.cmd](args)


if __name__ == "__main__":
    main()
