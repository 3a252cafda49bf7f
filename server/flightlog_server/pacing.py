"""Long CPU work of one call, cut into slices so that the event loop keeps serving other calls.

One event loop serves every call of a server process, so a call that computes for 300 ms without
awaiting stalls every other call (health checks included) for 300 ms. Work over many items (a
file's 100,000 extents, checked and then copied to PostgreSQL) therefore goes through a
:class:`Pacer`, which yields to the loop once a slice of work has run.

Why not a worker thread: the work is mostly protobuf field access, C code that holds the GIL, and
Python bytecode, which gives the GIL up only every ``sys.getswitchinterval()`` (5 ms). A thread
would make each of the loop's own steps wait for the GIL, and the work would be no faster.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Generator
from typing import TypeVar

T = TypeVar("T")

# Work runs at most this long before other calls get the loop. Short enough that a call waiting
# behind a few slices is not noticeably delayed; long enough that yielding costs little.
SLICE_SECONDS = 0.005


class Pacer:
    """Yields to the event loop when ``slice_seconds`` have passed since it last did."""

    def __init__(self, slice_seconds: float = SLICE_SECONDS) -> None:
        self.slice_seconds = slice_seconds
        self._slice_started = time.perf_counter()

    async def tick(self) -> None:
        """Call between small units of work (each well under a slice)."""
        if time.perf_counter() - self._slice_started >= self.slice_seconds:
            await asyncio.sleep(0)
            self._slice_started = time.perf_counter()


async def run_sliced(steps: Generator[None, None, T]) -> T:
    """Runs a generator that yields between units of work, letting other calls run between
    slices, and returns what it returns. Plain (non-async) code, such as the domain's
    validation, can so be paced without knowing about the event loop."""
    pacer = Pacer()
    while True:
        try:
            next(steps)
        except StopIteration as done:
            result: T = done.value
            return result
        await pacer.tick()


def run_at_once(steps: Generator[None, None, T]) -> T:
    """What ``steps`` returns, its slices run one after the other without yielding: for work
    already bounded small enough to run whole, or outside the event loop (tests)."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            result: T = done.value
            return result
