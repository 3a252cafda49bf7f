"""Page tokens (``rpc.pagination.TokenCodec``), without a server: what the server issues comes
back exactly, and nothing else gets through, whatever a caller makes up.

The RPC-level companion, over every listing, is ``tests/reliability/test_page_tokens.py``.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flightlog_server.domain.errors import InvalidPageToken
from flightlog_server.domain.rules import MAX_NAME_CHARS, MAX_STRING_VALUE_CHARS
from flightlog_server.rpc.pagination import MAX_TOKEN_CHARS, TokenCodec
from tests.support import b64, seal_page_token

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
SCOPE = "0123456789abcdef"
CODEC = TokenCodec({1: KEY})

# What a position may hold: the values of keyset columns (text PostgreSQL can store, int64,
# finite doubles, booleans, null).
storable_text = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=40
)
position_values = st.one_of(
    storable_text,
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
)
positions = st.lists(position_values, max_size=4)


def raw(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


def refused(token: str, scope: str = SCOPE, codec: TokenCodec = CODEC) -> str:
    """The violation's description for a token the codec must refuse."""
    with pytest.raises(InvalidPageToken) as caught:
        codec.decode(token, scope)
    (violation,) = caught.value.violations
    assert violation.field == "page_token"
    return violation.description


@given(positions)
def test_a_token_decodes_to_the_position_it_was_issued_with(position: list[Any]) -> None:
    assert CODEC.decode(CODEC.encode(SCOPE, position), SCOPE) == position


def test_an_empty_token_starts_from_the_beginning() -> None:
    assert CODEC.decode("", SCOPE) is None


@given(positions)
def test_the_wire_form_is_the_documented_one(position: list[Any]) -> None:
    payload = json.dumps(position, separators=(",", ":"), ensure_ascii=False).encode()
    assert CODEC.encode(SCOPE, position) == seal_page_token(1, KEY, SCOPE, payload)


@given(positions, st.data())
def test_any_changed_byte_makes_a_token_invalid(position: list[Any], data: st.DataObject) -> None:
    token = raw(CODEC.encode(SCOPE, position))
    index = data.draw(st.integers(0, len(token) - 1), label="index")
    flip = data.draw(st.integers(1, 255), label="xor")
    forged = token[:index] + bytes([token[index] ^ flip]) + token[index + 1 :]
    refused(b64(forged))


@given(positions, st.data())
def test_a_cut_or_extended_token_is_invalid(position: list[Any], data: st.DataObject) -> None:
    token = raw(CODEC.encode(SCOPE, position))
    cut = data.draw(st.integers(0, len(token) - 1), label="kept bytes")
    refused(b64(token[:cut]) or "A")
    refused(b64(token + data.draw(st.binary(min_size=1, max_size=8), label="appended")))


@given(st.text(min_size=1))
def test_arbitrary_text_is_invalid(token: str) -> None:
    refused(token)


@given(st.binary(min_size=1, max_size=400))
def test_arbitrary_bytes_encoded_as_a_token_are_invalid(data: bytes) -> None:
    refused(b64(data))


def test_a_token_of_another_request_belongs_to_another_request() -> None:
    token = CODEC.encode("fedcba9876543210", ["dv_1"])
    assert "another request" in refused(token)


def test_a_token_signed_with_another_key_is_not_one_the_server_issued() -> None:
    token = TokenCodec({1: OTHER_KEY}).encode(SCOPE, ["dv_1"])
    assert "not a token this server issued" in refused(token)


def test_tokens_of_the_unsigned_format_of_earlier_releases_are_invalid() -> None:
    earlier = b64(json.dumps({"s": SCOPE, "p": ["dv_1"]}).encode())
    assert "restart the listing" in refused(earlier)


def test_a_token_longer_than_the_limit_is_refused_before_it_is_decoded() -> None:
    assert "longer than any token" in refused("A" * (MAX_TOKEN_CHARS + 1))


@pytest.mark.parametrize(
    "position",
    [
        # ListSessions sorted by a string custom field: the value JSON-escapes to 6 bytes a
        # character when it is made of control characters (allowed, except NUL).
        [0, "\x01" * MAX_STRING_VALUE_CHARS, "ss_" + "a" * 60],
        [0, "\U0010ffff" * MAX_STRING_VALUE_CHARS, "ss_" + "a" * 60],
        # ListFiles of a dataset: a relative path of 1,024 characters.
        ["\x01" * 1024],
        # ListSessionTopics: a topic name of 512 characters and its ID.
        ["\x01" * 512, "ti_" + "a" * 60],
        [0, '"' * MAX_NAME_CHARS, "ss_" + "a" * 60],
    ],
    ids=["string field", "non-BMP field", "relative path", "topic", "name"],
)
def test_the_longest_positions_the_server_issues_fit_within_the_limit(position: list[Any]) -> None:
    token = CODEC.encode(SCOPE, position)
    assert len(token) <= MAX_TOKEN_CHARS
    assert CODEC.decode(token, SCOPE) == position


def test_tokens_of_an_older_key_stay_valid_once_a_newer_key_signs() -> None:
    older = TokenCodec({1: KEY}).encode(SCOPE, ["dv_1"])
    rotated = TokenCodec({1: KEY, 2: OTHER_KEY})
    newer = rotated.encode(SCOPE, ["dv_2"])
    assert raw(newer)[0] == 2
    assert rotated.decode(older, SCOPE) == ["dv_1"]
    assert rotated.decode(newer, SCOPE) == ["dv_2"]
    # Once key 1 is retired, its tokens are refused.
    assert "not a token this server issued" in refused(older, codec=TokenCodec({2: OTHER_KEY}))


@pytest.mark.parametrize(
    "payload",
    [
        b'["\\ud800"]',  # a lone surrogate: no PostgreSQL text can hold it
        b'["a\\u0000b"]',  # NUL
        b"[9223372036854775808]",  # past int64
        b"[NaN]",
        b"[Infinity]",
        b"[1e999]",  # parses as infinity
        b"[" + b"1" * 5000 + b"]",  # past Python's digit limit for int()
        b'[["nested"]]',
        b'[{"$gt": ""}]',
        b'{"p": []}',
        b"[" * 4_000 + b"]" * 4_000,  # deeper than the parser's recursion limit
        b"\xff\xfe",  # not UTF-8
        b"",
    ],
    ids=lambda p: repr(p[:24]),
)
def test_a_signed_position_the_database_cannot_take_is_still_invalid(payload: bytes) -> None:
    """Defence in depth: even with a valid MAC (a leaked key), the position is parsed strictly."""
    token = seal_page_token(1, KEY, SCOPE, payload)
    assert len(token) <= MAX_TOKEN_CHARS  # so that it is the parsing that refuses it
    assert "not a token this server issued" in refused(token)


def test_a_codec_needs_keys_with_ids_that_fit_a_byte() -> None:
    for keys in ({}, {0: KEY}, {256: KEY}):
        with pytest.raises(ValueError):
            TokenCodec(keys)
