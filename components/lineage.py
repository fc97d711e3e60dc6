"""The code's version, for lineage tags and the training cache key: a hash of every `components/`
source file (what a model is made of), so a change to model or training code never reuses a stale model."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

CODE_ROOT = Path(__file__).resolve().parent  # components/


@functools.cache
def code_version() -> str:
    h = hashlib.sha256()
    for path in sorted(CODE_ROOT.rglob("*.py")):
        h.update(path.relative_to(CODE_ROOT).as_posix().encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()[:16]
