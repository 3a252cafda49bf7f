"""Cutting a stream of request items into calls the server accepts.

The server refuses a request message over 1 MiB (RESOURCE_EXHAUSTED) and a batch of more than
its item limit (1,000 sessions for BatchCreateSessions and PublishMetrics, 10,000 metric entries
in all for PublishMetrics). :func:`batches` cuts items into consecutive chunks that stay under
every limit, reading the input lazily so that an import of millions of lines holds one batch in
memory at a time.

Sizes are the exact protobuf encoding: an item of a ``repeated`` message field costs its tag
(one byte for field numbers up to 15), the varint of its length and its bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from flightlog.errors import FlightlogError

__all__ = [
    "MAX_BATCH_BYTES",
    "MAX_BATCH_ITEMS",
    "batch_call",
    "batches",
    "field_size",
]

_T = TypeVar("_T")

MAX_BATCH_ITEMS = 1_000
"""Items per batch call: the server's limit for BatchCreateSessions, BatchGetSessions and
PublishMetrics."""

MAX_BATCH_BYTES = 900 * 1024
"""Encoded bytes per batch call: under the server's 1 MiB message limit, with room for the
envelope and the call's metadata."""


def _varint_size(value: int) -> int:
    """Bytes of ``value`` as a protobuf varint."""
    size = 1
    while value >= 0x80:
        value >>= 7
        size += 1
    return size


def field_size(payload_bytes: int) -> int:
    """Encoded size of one item of a length-delimited repeated field numbered 1 to 15."""
    return 1 + _varint_size(payload_bytes) + payload_bytes


def batches(
    items: Iterable[_T],
    size_of: Callable[[_T], int],
    *,
    max_items: int = MAX_BATCH_ITEMS,
    max_bytes: int = MAX_BATCH_BYTES,
    weight_of: Callable[[_T], int] | None = None,
    max_weight: int | None = None,
) -> Iterator[list[_T]]:
    """Yield consecutive, non-empty chunks of ``items``, in order, each within the limits.

    A chunk holds at most ``max_items`` items whose ``size_of`` sum is at most ``max_bytes``
    and, when ``weight_of`` is given, whose weights sum to at most ``max_weight`` (for example
    the metric entries of a PublishMetrics call). A chunk is closed as soon as the next item
    would break a limit. An item that breaks a limit on its own is yielded alone: the server
    then says what is wrong with it, and the items before it have been sent.

    The input is read lazily, one item ahead at most: a chunk that reaches ``max_items`` is
    yielded before the next item is read; a chunk closed by a size or weight limit, when the
    item that does not fit is read. An exception raised by the iterable (a bad line of a
    file) propagates at once: every chunk closed before it has been yielded, and the chunk
    being filled, to which the failing item would have belonged, never is.

    >>> from flightlog._batching import batches
    >>> list(batches(["aa", "b", "cc", "d"], len, max_items=3, max_bytes=3))
    [['aa', 'b'], ['cc', 'd']]
    """
    if max_items < 1 or max_bytes < 1:
        raise ValueError("max_items and max_bytes must be at least 1")
    chunk: list[_T] = []
    chunk_bytes = 0
    chunk_weight = 0
    for item in items:
        size = size_of(item)
        weight = weight_of(item) if weight_of is not None else 0
        full = chunk and (
            chunk_bytes + size > max_bytes
            or (max_weight is not None and chunk_weight + weight > max_weight)
        )
        if full:
            yield chunk
            chunk, chunk_bytes, chunk_weight = [], 0, 0
        chunk.append(item)
        chunk_bytes += size
        chunk_weight += weight
        if len(chunk) >= max_items:
            yield chunk
            chunk, chunk_bytes, chunk_weight = [], 0, 0
    if chunk:
        yield chunk


@contextmanager
def batch_call(offset: int, size: int) -> Iterator[None]:
    """The call of one batch: a ``FlightlogError`` it raises is told which input items the
    batch held (``batch_offset``, ``batch_size``), so that the caller knows what was written."""
    try:
        yield
    except FlightlogError as error:
        error.batch_offset, error.batch_size = offset, size
        raise
