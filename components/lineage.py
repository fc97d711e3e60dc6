"""The code's version, for lineage tags and the cache keys: a hash of the `components/` source files
a result is made of, so a change to that code never reuses a stale model or evaluation (and a change
elsewhere, say to the registry policy, retrains and re-evaluates nothing)."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

CODE_ROOT = Path(__file__).resolve().parent  # components/
TRAINING_CODE = ("config.py", "data", "models", "training", "results.py")  # what a trained model is made of
EVALUATION_CODE = ("data", "models", "training", "evaluation", "results.py")  # what an evaluation is made of (it loads and runs models)
NOT_A_MODEL = ("training/tune.py",)  # the search drives training; a model is made by the code it calls


@functools.cache
def code_version(parts: tuple[str, ...] | None = None) -> str:
    """A hash of every `components/` source file, or of those under `parts` (files or sub-packages)."""
    h = hashlib.sha256()
    for path in sorted(CODE_ROOT.rglob("*.py")):
        rel = path.relative_to(CODE_ROOT).as_posix()
        if parts is not None and (rel in NOT_A_MODEL or not any(rel == p or rel.startswith(f"{p}/") for p in parts)):
            continue
        h.update(rel.encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()[:16]
