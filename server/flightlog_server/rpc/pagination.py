"""Resume tokens for streamed listings.

A token carries the keyset position after the last item sent, plus a fingerprint of the request
it belongs to (method, org, filter and order). It is opaque to clients; a garbled token, or one
used with another request, is INVALID_ARGUMENT (INVALID_PAGE_TOKEN). Tokens are not secret:
every query is scoped to the caller's org whatever the token says.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

from flightlog_server.domain.errors import InvalidPageToken


def fingerprint(*parts: bytes | str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()[:16]


def encode(scope: str, position: list[Any]) -> str:
    raw = json.dumps({"s": scope, "p": position}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(token: str, scope: str) -> list[Any] | None:
    """The position in ``token``, or None for an empty token (start from the beginning)."""
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        payload = json.loads(raw)
        position = payload["p"]
        token_scope = payload["s"]
    except (ValueError, KeyError, TypeError) as e:
        raise InvalidPageToken("is not a token this server issued") from e
    if token_scope != scope or not isinstance(position, list):
        raise InvalidPageToken("belongs to another request (filter, order or method differ)")
    if not all(_storable(value) for value in position):
        raise InvalidPageToken("is not a token this server issued")
    return position


def _storable(value: Any) -> bool:
    """A position value the database can compare: a forged token could carry others."""
    if isinstance(value, str):
        return "\x00" not in value
    if isinstance(value, bool) or value is None:
        return True
    if isinstance(value, int):
        return -(2**63) <= value < 2**63
    if isinstance(value, float):
        return math.isfinite(value)
    return False


Row = TypeVar("Row")
Message = TypeVar("Message")


async def stream_pages(
    *,
    scope: str,
    page_token: str,
    page_size: int,
    fetch: Callable[[list[Any] | None, int], Awaitable[Sequence[Row]]],
    position_of: Callable[[Row], list[Any]],
    build: Callable[[Sequence[Row], str], Message],
) -> AsyncIterator[Message]:
    """Streams a keyset-paginated listing, one batch per message.

    ``fetch(after, limit)`` returns the rows after the position ``after`` (from the start when
    None), each page read on its own (a use case's short transaction), so no connection is held
    while the client reads: a slow reader is held back by gRPC flow control at the ``yield``,
    with at most one batch in memory. ``build(rows, next_token)`` makes the message.
    """
    position = decode(page_token, scope)
    while True:
        rows = await fetch(position, page_size)
        if not rows:
            return
        position = position_of(rows[-1])
        yield build(rows, encode(scope, position))
        if len(rows) < page_size:
            return


def checked_position(position: list[Any] | None, *types: type) -> list[Any] | None:
    """``position`` when it holds one value of each of ``types`` in order (None passes through).

    Scopes are fingerprints, not signatures, so a hand-made token can carry a position of the
    wrong shape; that is INVALID_PAGE_TOKEN too, never an error deeper down.
    """
    if position is None:
        return None
    if len(position) != len(types) or not all(
        isinstance(value, t) and not (t is int and isinstance(value, bool))
        for value, t in zip(position, types, strict=False)
    ):
        raise InvalidPageToken("is not a token this server issued")
    return position
