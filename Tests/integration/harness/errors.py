"""The harness's own errors."""
from __future__ import annotations


class HarnessError(RuntimeError):
    pass


class Abort(HarnessError):
    """Raised inside a wait_for condition to stop waiting at once."""
