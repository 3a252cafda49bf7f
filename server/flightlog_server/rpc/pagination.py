"""Resume tokens for streamed listings.

A token carries the keyset position after the last item sent, bound to the request it belongs
to by a *scope* (``fingerprint`` of the method, org, filter and order), and signed by the
server. It is opaque to clients. Its bytes, sent base64url-encoded without padding, are::

    key_id (1 byte) | MAC (16 bytes) | len(scope) (1 byte) | scope | position (JSON, UTF-8)

where the MAC is HMAC-SHA256 under key ``key_id`` of everything but itself, truncated to 16
bytes. The keys live in the database (``storage.page_token_keys``), so every server process
accepts what any of them issued; a process reads them once, on its first listing
(``TokenKeys``). Signing uses the highest ``key_id`` and checking accepts any known one, so keys
can be rotated by adding one.

Anyone holding an API key can send any token, so checking one is cheap and happens in this
order: its length (at most ``MAX_TOKEN_CHARS``), strict base64, the key id, the MAC (a
constant-time compare). Only a token the server issued is parsed any further; then its scope
must be the request's, and its position is still checked for values the database can take
(and, by each listing, for its shape: ``checked_position``), in case a key leaks or a listing
changes its keyset between releases. Every failure is INVALID_ARGUMENT (INVALID_PAGE_TOKEN).
Tokens from before signing was introduced are refused like any other: a client restarts the
listing. Tokens are signed, not encrypted: the position they carry is the caller's own data,
and every query is scoped to the caller's org whatever the token says.

``encode`` and ``decode`` use the codec the call interceptor binds (``use``) for each call of an
RPC whose request has a ``page_token`` field, so listings call them without carrying keys.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextvars
import hashlib
import hmac
import json
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from flightlog_server.domain.errors import InvalidPageToken

# Longer than any token the server issues: the longest position is a 1,024-character string
# custom field value, about 8,300 characters once JSON-escaped, signed and encoded (a test
# checks the worst case). Anything longer is refused before it is decoded.
MAX_TOKEN_CHARS = 12 * 1024
MAC_BYTES = 16
_HEADER_BYTES = 1 + MAC_BYTES + 1  # key id, MAC, scope length


def fingerprint(*parts: bytes | str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()[:16]


def _not_issued() -> InvalidPageToken:
    return InvalidPageToken(
        "is not a token this server issued (tokens from before an upgrade may no longer be "
        "valid: restart the listing without one)"
    )


class TokenCodec:
    """Signs positions into tokens and checks tokens, with ``keys`` (by key id)."""

    def __init__(self, keys: Mapping[int, bytes]) -> None:
        if not keys or not all(0 < key_id < 256 for key_id in keys):
            raise ValueError("page token keys need ids from 1 to 255")
        self._keys = dict(keys)
        self._signing = max(keys)

    def encode(self, scope: str, position: list[Any]) -> str:
        scope_bytes = scope.encode()
        if len(scope_bytes) > 255:
            raise ValueError("a token scope is a fingerprint, at most 255 bytes")
        body = b"".join(
            [
                bytes([len(scope_bytes)]),
                scope_bytes,
                json.dumps(
                    position, separators=(",", ":"), ensure_ascii=False, allow_nan=False
                ).encode(),
            ]
        )
        raw = b"".join([bytes([self._signing]), self._mac(self._signing, body), body])
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    def verify(self, token: str) -> tuple[str, list[Any]]:
        """The scope and position of a token this server issued; INVALID_PAGE_TOKEN otherwise."""
        if len(token) > MAX_TOKEN_CHARS:
            raise InvalidPageToken("is longer than any token this server issues")
        try:
            raw = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True)
        except (binascii.Error, ValueError) as e:  # ValueError: characters outside ASCII
            raise _not_issued() from e
        if len(raw) < _HEADER_BYTES:
            raise _not_issued()
        key_id, mac, body = raw[0], raw[1 : 1 + MAC_BYTES], raw[1 + MAC_BYTES :]
        if key_id not in self._keys or not hmac.compare_digest(mac, self._mac(key_id, body)):
            raise _not_issued()
        # From here on the bytes are the server's own.
        scope_end = 1 + body[0]
        try:
            scope = body[1:scope_end].decode()
            position = json.loads(body[scope_end:].decode(), parse_constant=_no_constant)
        except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
            raise _not_issued() from e
        if not isinstance(position, list) or not all(_storable(value) for value in position):
            raise _not_issued()
        return scope, position

    def decode(self, token: str, scope: str) -> list[Any] | None:
        """The position in ``token``, or None for an empty token (start from the beginning)."""
        if not token:
            return None
        token_scope, position = self.verify(token)
        if token_scope != scope:
            raise InvalidPageToken("belongs to another request (filter, order or method differ)")
        return position

    def _mac(self, key_id: int, body: bytes) -> bytes:
        signed = hmac.new(self._keys[key_id], bytes([key_id]), hashlib.sha256)
        signed.update(body)
        return signed.digest()[:MAC_BYTES]


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a position value")  # NaN and ±Infinity


def _storable(value: Any) -> bool:
    """A position value the database can compare."""
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:  # a lone surrogate: no PostgreSQL text holds one
            return False
        return "\x00" not in value
    if isinstance(value, bool) or value is None:
        return True
    if isinstance(value, int):
        return -(2**63) <= value < 2**63
    if isinstance(value, float):
        return math.isfinite(value)
    return False


class TokenKeys:
    """This process's page-token keys, read by ``load`` (from the database, wired in ``app``)
    for the first call that needs them, so that a server started while the database is down
    still starts; then kept."""

    def __init__(self, load: Callable[[], Awaitable[Mapping[int, bytes]]]) -> None:
        self._load = load
        self._codec: TokenCodec | None = None
        self._loading = asyncio.Lock()

    async def codec(self) -> TokenCodec:
        """The codec; the first calls wait for the keys, and a failed read is retried by the
        next call (its error, such as DatabaseUnavailable, reaches this one's caller)."""
        if self._codec is None:
            async with self._loading:
                if self._codec is None:
                    self._codec = TokenCodec(await self._load())
        return self._codec


_current: contextvars.ContextVar[TokenCodec] = contextvars.ContextVar("page_token_codec")


def use(codec: TokenCodec) -> None:
    """Makes ``codec`` the one ``encode`` and ``decode`` use for the rest of the current call."""
    _current.set(codec)


def encode(scope: str, position: list[Any]) -> str:
    return _current.get().encode(scope, position)


def decode(token: str, scope: str) -> list[Any] | None:
    """The position in ``token``, or None for an empty token (start from the beginning)."""
    return _current.get().decode(token, scope)


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

    A signed token always carries the position its listing issued; this holds the line should a
    key leak or a listing change the shape of its positions between releases: a position of
    another shape is INVALID_PAGE_TOKEN too, never an error deeper down.
    """
    if position is None:
        return None
    if len(position) != len(types) or not all(
        isinstance(value, t) and not (t is int and isinstance(value, bool))
        for value, t in zip(position, types, strict=False)
    ):
        raise _not_issued()
    return position
