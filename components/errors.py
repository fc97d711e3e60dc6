"""One base for visionflow's own errors, so callers (the CLI above all) handle them in one place.

Each error's message is one actionable line; `exit_code` is what the CLI exits with (2: a usage or
configuration mistake, 1: anything else). Subclasses keep their stdlib base (ValueError, RuntimeError,
LookupError) too, so existing `except ValueError` callers still catch them.
"""

from __future__ import annotations


class VisionflowError(Exception):
    """Base of every visionflow error: a one-line message and the CLI's exit code."""

    exit_code: int = 1
