"""Per-call context shared by the layers without threading it through every signature.

The RPC layer sets these at the start of a call; the storage layer reads the deadline to bound
database work by the caller's deadline.
"""

from __future__ import annotations

import contextvars
import time

# Monotonic time (``time.monotonic()``) by which the current call must be answered, or None.
call_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "call_deadline", default=None
)
# The request id of the current call, for logs.
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


def seconds_left() -> float | None:
    """Seconds until the current call's deadline, or None when it has none."""
    deadline = call_deadline.get()
    return None if deadline is None else deadline - time.monotonic()
