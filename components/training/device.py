"""Device and precision: cuda → mps → cpu, and bf16 autocast only where the hardware has it.

On CPUs, bf16 pays only with AMX or AVX512-BF16 (2.5–2.8× in calibration); without them it is
emulated and slower, so `auto` detects instead of assuming.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch


def local_rank() -> int | None:
    """This process's GPU slot under torchrun (LOCAL_RANK), None outside it."""
    value = os.environ.get("LOCAL_RANK")
    return int(value) if value not in (None, "") else None


def _cuda(rank: int | None) -> torch.device:
    # one GPU per rank: cuda:LOCAL_RANK (an explicit index, so DDP's device_ids are right on every rank)
    index = rank if rank is not None else 0
    if index >= torch.cuda.device_count():
        raise RuntimeError(f"LOCAL_RANK={index} but torch sees {torch.cuda.device_count()} GPU(s); start at most that many processes per node")
    return torch.device("cuda", index)


def select_device(preference: str = "auto") -> torch.device:
    if preference != "auto":
        if preference == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("engine.device=cuda but torch sees no CUDA GPU; use engine.device=auto")
        return _cuda(local_rank()) if preference == "cuda" else torch.device(preference)
    if torch.cuda.is_available():
        return _cuda(local_rank())
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@functools.cache
def cpu_has_fast_bf16() -> bool:
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def use_bf16(preference: str, device: torch.device) -> bool:
    """`auto`: bf16 on CUDA GPUs that support it and on CPUs with AMX/AVX512-BF16; fp32 elsewhere."""
    if preference == "fp32":
        return False
    if preference == "bf16":
        return True
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_has_fast_bf16()
    return False


def set_threads(threads: int | None) -> None:
    """Pin torch's CPU threads for this process (`engine.threads`); None keeps torch's default."""
    if threads is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
