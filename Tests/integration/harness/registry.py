"""The process registry: whatever the harness starts is torn down at interpreter exit, in reverse
order, so a failing or interrupted test leaves nothing running."""
from __future__ import annotations

import atexit
import weakref
from typing import Any

_live: "weakref.WeakSet[Any]" = weakref.WeakSet()
_live_order: list[weakref.ref] = []


def register(obj: Any) -> None:
    _live.add(obj)
    _live_order.append(weakref.ref(obj))


def cleanup_all() -> None:
    for ref in reversed(_live_order):
        obj = ref()
        if obj is not None:
            try:
                obj.cleanup()
            except Exception as e:  # noqa: BLE001
                print(f"harness cleanup of {obj!r} failed: {e!r}")
    _live_order.clear()


atexit.register(cleanup_all)
