"""Does bf16 autocast / channels_last pay on this machine? ms per training step of each configured classifier family.

Run: .venv/bin/python benchmarks/bench_precision.py [--families cnn rnn cnn_lstm]
`precision: auto` picks bf16 only where this pays (CUDA, or CPUs with AMX / AVX512-BF16).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from components.config import load_config  # noqa: E402
from components.models import create_model  # noqa: E402
from components.training.device import cpu_has_fast_bf16  # noqa: E402


def step_ms(model, x, y, bf16: bool, steps: int = 5) -> float:
    opt = torch.optim.AdamW(model.parameters())
    for i in range(steps + 2):
        if i == 2:
            start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (time.perf_counter() - start) / steps * 1000


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--families", nargs="+", default=["cnn"])
    args = ap.parse_args()
    models = load_config("params.yaml").models
    print(f"CPU has AMX/AVX512-BF16: {cpu_has_fast_bf16()}; torch CPU capability: {torch.backends.cpu.get_cpu_capability()}")
    x, y = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))
    for key in args.families:
        fam = models[key]
        for cl in (False, True):
            for bf16 in (False, True):
                torch.manual_seed(0)
                m = create_model(fam.model, num_classes=10, in_channels=1, image_size=(28, 28), **fam.hparams)
                fmt = torch.channels_last if cl else torch.contiguous_format
                ms = step_ms(m.to(memory_format=fmt), x.contiguous(memory_format=fmt), y, bf16)
                print(f"{key:<9} channels_last={cl!s:5} bf16={bf16!s:5} {ms:7.1f} ms/step (batch 128)", flush=True)


if __name__ == "__main__":
    main()
