"""What every bench module shares: the table's row and its columns, logging, call metadata, and
the driver of unary calls with a fixed number in flight."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
from grpc import aio

from flightlog.v1 import session_service_pb2 as pb
from flightlog.v1 import session_service_pb2_grpc
from tests.bench.rows import Row
from tests.support import Identity

__all__ = ["CHANNEL_OPTIONS", "Row", "aligned", "calls_per_second", "log", "metadata"]

CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def aligned(header: Sequence[object], lines: Sequence[Sequence[object]]) -> list[str]:
    """``header`` and ``lines`` as text in aligned columns, with a rule under the header."""
    widths = [max(len(str(x)) for x in column) for column in zip(header, *lines, strict=False)]
    out = []
    for i, line in enumerate([header, *lines]):
        out.append(" | ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)))
        if i == 0:
            out.append("-+-".join("-" * w for w in widths))
    return out


def metadata(identity: Identity) -> tuple[tuple[str, str | bytes], ...]:
    return (("authorization", f"Bearer {identity.api_key}"), ("x-org-id", identity.org_id))


async def calls_per_second(
    target: str, call: Callable[[Any], Awaitable[Any]], seconds: float, in_flight: int = 8
) -> float:
    async with aio.insecure_channel(target) as channel:
        stub = session_service_pb2_grpc.SessionServiceStub(channel)
        for _ in range(20):  # warm up
            await call(stub)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        count = 0

        async def worker() -> None:
            nonlocal count
            while loop.time() < deadline:
                await call(stub)
                count += 1

        started = loop.time()
        await asyncio.gather(*(worker() for _ in range(in_flight)))
        return count / (loop.time() - started)


def first_batches(
    target: str, identity: Identity, request: pb.ListSessionsRequest, repeats: int
) -> tuple[list[float], list[int]]:
    """ListSessions ``repeats`` times, each cancelled after its first batch: the seconds to that
    batch, and its size."""
    times: list[float] = []
    sizes: list[int] = []
    with grpc.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        stub = session_service_pb2_grpc.SessionServiceStub(channel)
        for _ in range(repeats):
            started = time.perf_counter()
            call = stub.ListSessions(request, metadata=metadata(identity))
            first = next(iter(call))
            times.append(time.perf_counter() - started)
            sizes.append(len(first.sessions))
            call.cancel()  # type: ignore[no-untyped-call]  # grpc-stubs leaves it untyped
    return times, sizes
