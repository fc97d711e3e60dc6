"""One classifier family on several processes or GPUs: torchrun + DistributedDataParallel.

    torchrun --standalone --nproc-per-node 2 -m components.training.ddp --family cnn
    visionflow train-ddp --family cnn --nproc-per-node 2        # the same, through the CLI

The engine (`classifier.fit`) turns DDP on by itself inside a process group: every rank takes an
equal, disjoint share of each epoch (the same global batch as one process), gradients are averaged,
BatchNorm statistics come from rank 0 before each validation so every rank makes the same
early-stopping decision, and rank 0 alone writes checkpoints and the model file. NCCL on GPUs (one
per rank, LOCAL_RANK), gloo on CPUs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m components.training.ddp", description=__doc__.splitlines()[0])
    ap.add_argument("--family", required=True, help="a classifier section of params.yaml: cnn, rnn, cnn_lstm, feature_fusion")
    ap.add_argument("--profile", default="default")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="override a knob (repeatable)")
    ap.add_argument("--root", type=Path, default=Path("."), help="project folder holding params.yaml and data/")
    ap.add_argument("--out", type=Path, help="output folder (default: <workspace>/ddp)")
    args = ap.parse_args(argv)

    from components.config import ConfigError, load_config
    from components.workspace import Workspace

    try:
        cfg = load_config(args.root / "params.yaml", args.profile, args.overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    families = cfg.models.classifiers()
    if args.family not in families:
        print(f"error: --family {args.family!r} is not an enabled classifier family (choose from: {', '.join(families)})", file=sys.stderr)
        return 2
    ws = Workspace.for_config(args.root, cfg)
    ws.activate()
    data_dir = ws.data_dir(cfg.data.dir)
    if not (data_dir / "manifest.csv").exists():
        print(f"error: {data_dir}/manifest.csv is missing; run `visionflow ingest` first", file=sys.stderr)
        return 2

    cuda = torch.cuda.is_available() and cfg.engine.device in ("auto", "cuda")
    if cuda:
        from components.training.device import select_device

        torch.cuda.set_device(select_device("cuda"))  # cuda:LOCAL_RANK
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    try:
        from components.training.runner import train_classifier

        out = args.out or ws.home / "ddp"
        result = train_classifier(args.family, families[args.family], cfg.engine, data_dir, out)
        # DDP keeps the replicas identical: every rank scored its own replica on validation each epoch,
        # so identical validation losses across ranks show it (check rather than trust)
        val_losses: list = [None] * dist.get_world_size()
        dist.all_gather_object(val_losses, [h["val_loss"] for h in result["history"]])
        if dist.get_rank() == 0:
            summary = {k: v for k, v in result.items() if k != "history"}
            summary.update(world_size=dist.get_world_size(), backend=dist.get_backend(), replicas_in_sync=all(v == val_losses[0] for v in val_losses),
                           rank_val_losses=val_losses, train_images_per_epoch=[h["train_images"] for h in result["history"]])  # fmt: skip
            (out / args.family / "ddp.json").write_text(json.dumps(summary, indent=2))
            print(json.dumps(summary))
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
