"""Page tokens, over every listing: a token the server did not issue for this very request is
INVALID_ARGUMENT with reason INVALID_PAGE_TOKEN and a BadRequest violation on ``page_token``,
never INTERNAL, and refusing it logs nothing at ERROR; a genuine token resumes exactly.

The listings are the RPCs whose request has a ``page_token``, enumerated from the service
descriptors; a new one without an entry in ``OTHER_REQUESTS`` fails the first test. Per listing,
hypothesis (derandomized) generates:

* arbitrary text, and arbitrary bytes base64-encoded, as the token;
* arbitrary JSON (deep nesting, huge numbers, lone surrogates, NUL, NaN, floats, objects where a
  list belongs, ...) inside well-encoded tokens: in the unsigned format of earlier releases, and
  in today's signed format with a wrong MAC, another key, or an unknown key id;
* the same JSON, and positions of the right length with values of any type, signed with the
  server's own key (as if it had leaked): the strict decoding behind the MAC must still answer
  OK or INVALID_PAGE_TOKEN, never anything else.

Deterministic companions: tokens of another org, of another request of the same listing (other
filter or parent), and of every other listing; and every genuine token of a listing resumes with
exactly the items after its batch. A server started while the database is down reads (here:
makes) its key on the first listing once the database is back, and a failed read is retried.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from flightlog.v1 import catalog_service_pb2 as catalog_pb
from flightlog.v1 import custom_field_service_pb2 as fields_pb
from flightlog.v1 import session_service_pb2 as pb
from flightlog_server.app import ServerSettings
from flightlog_server.domain.errors import DatabaseUnavailable
from flightlog_server.rpc.pagination import MAX_TOKEN_CHARS, TokenCodec, TokenKeys
from flightlog_server.storage.database import Database, DatabaseSettings
from flightlog_server.storage.migrate import upgrade
from flightlog_server.storage.page_token_keys import page_token_keys
from tests.reliability.helpers import PROPERTY_SETTINGS, record
from tests.reliability.private_postgres import PrivatePostgres
from tests.reliability.rpc_cases import (
    METHODS,
    Outcome,
    World,
    build_world,
    invoke,
    method_name,
    requests_for,
)
from tests.rpc.factories import add_files, register_file, unique
from tests.support import (
    ServerThread,
    Stubs,
    b64,
    create_identity,
    failure,
    run_in_database,
    seal_page_token,
    server_page_token_keys,
)

M = TypeVar("M", bound=Message)
LISTINGS = [m for m in METHODS if "page_token" in m.input_type.fields_by_name]
LISTINGS_BY_NAME = {m.name: m for m in LISTINGS}
CALL_TIMEOUT_S = 15.0

# Per listing: a valid request of the same listing with another scope (another filter or parent)
# than the first request of ``rpc_cases``, naming the org's second world; None when the org is
# the listing's only scope.
OTHER_REQUESTS: dict[str, Callable[[World], Message] | None] = {
    "ListSessions": lambda w: pb.ListSessionsRequest(filter=pb.SessionFilter(tags_any=["t1"])),
    "ListSessionFiles": lambda w: pb.ListSessionFilesRequest(session_id=w.session_id),
    "ListSessionDevices": lambda w: pb.ListSessionDevicesRequest(session_id=w.session_id),
    "ListSessionTopics": lambda w: pb.ListSessionTopicsRequest(session_id=w.session_id),
    "ListSessionMetrics": lambda w: pb.ListSessionMetricsRequest(session_id=w.session_id),
    "ListDevices": None,
    "ListDatasets": None,
    "ListFiles": lambda w: catalog_pb.ListFilesRequest(),
    "ListFileTopics": lambda w: catalog_pb.ListFileTopicsRequest(file_id=w.file_id),
    "ListCustomFields": lambda w: fields_pb.ListCustomFieldsRequest(
        entity_type=fields_pb.ENTITY_TYPE_SESSION
    ),
}


@dataclass(frozen=True)
class Listing:
    """A listing read to its end one item a batch: its request, items and tokens."""

    method: MethodDescriptor
    request: Message  # page_size 1
    items: list[bytes]  # serialized
    tokens: list[str]  # one per batch
    scope: str  # what the tokens are bound to (read from a genuine token)
    position: list[Any]  # the position of the first token


@dataclass(frozen=True)
class TokenWorld:
    stubs: Stubs  # org A
    second: World  # org A's second world, which OTHER_REQUESTS name
    listings: dict[str, Listing]  # org A's, from its first world
    foreign: dict[str, list[str]]  # org B's tokens of the same listings
    key: bytes  # the servers' signing key (id 1)


def items_of(response: Message) -> list[bytes]:
    (field,) = [f for f in response.DESCRIPTOR.fields if f.name != "next_page_token"]
    return [item.SerializeToString() for item in getattr(response, field.name)]


def read_whole(
    stubs: Stubs, method: MethodDescriptor, request: Message
) -> tuple[list[bytes], list[str]]:
    """Every item (serialized) and every batch's token of a listing read to its end."""
    out = invoke(stubs, method, request, CALL_TIMEOUT_S)
    assert out.code == grpc.StatusCode.OK, (method_name(method), out.code)
    items = [item for response in out.responses for item in items_of(response)]
    return items, [response.next_page_token for response in out.responses]


def paged(request: M, size: int, token: str = "") -> M:
    copy = type(request)()
    copy.CopyFrom(request)
    # Every listing request has these fields; Message declares none, and Python's types cannot
    # say "a Message with paging fields" (no intersection types).
    copy.page_size = size  # type: ignore[attr-defined]
    copy.page_token = token  # type: ignore[attr-defined]
    return copy


def make_org(database_url: str, grpc_target: str, label: str) -> tuple[Stubs, World, World]:
    """An org with two of everything (every listing has two pages), and more files (with
    topics) and metrics in the session the listings look into."""
    name = unique(label)
    who = create_identity(database_url, name)
    stubs = Stubs(grpc_target, who.api_key, who.org_id)
    first, second = build_world(stubs, who, name), build_world(stubs, who, name)
    spare = register_file(stubs, first.dataset_id, [("/gps", [(120, 130)])])
    add_files(stubs, first.session_id, spare.file_id)
    stubs.sessions.PublishSessionMetrics(
        pb.PublishSessionMetricsRequest(
            session_id=first.session_id,
            metrics=[pb.MetricEntry(name=n, value=1.0) for n in ("alt", "temp")],
            no_device=True,
        )
    )
    return stubs, first, second


@pytest.fixture(scope="module")
def world(database_url: str, grpc_target: str) -> Iterator[TokenWorld]:
    stubs, a, second = make_org(database_url, grpc_target, "tokens-a-")
    b_stubs, b, _ = make_org(database_url, grpc_target, "tokens-b-")
    keys = server_page_token_keys(database_url)
    codec = TokenCodec(keys)
    listings: dict[str, Listing] = {}
    foreign: dict[str, list[str]] = {}
    for method in LISTINGS:
        request = paged(requests_for(method, a, a)[0], 1)
        items, tokens = read_whole(stubs, method, request)
        assert len(items) >= 2, f"{method.name} has one page only"
        scope, position = codec.verify(tokens[0])
        listings[method.name] = Listing(method, request, items, tokens, scope, position)
        _, foreign[method.name] = read_whole(
            b_stubs, method, paged(requests_for(method, b, b)[0], 1)
        )
    yield TokenWorld(stubs, second, listings, foreign, keys[1])
    stubs.close()
    b_stubs.close()


# --- what every refusal must look like -----------------------------------------------------------


FORGED: dict[str, int] = {}  # per listing, tokens tried, for the figures


def answer(w: TokenWorld, listing: Listing, token: str, request: Message | None = None) -> Outcome:
    """The outcome of resuming ``listing`` (or ``request``) with ``token``."""
    FORGED[listing.method.name] = FORGED.get(listing.method.name, 0) + 1
    return invoke(
        w.stubs, listing.method, paged(request or listing.request, 1, token), CALL_TIMEOUT_S
    )


def assert_refused(
    w: TokenWorld, listing: Listing, token: str, request: Message | None = None
) -> str:
    """Asserts that ``token`` is refused as INVALID_PAGE_TOKEN on ``page_token``; returns the
    violation's description."""
    out = answer(w, listing, token, request)
    assert out.code == grpc.StatusCode.INVALID_ARGUMENT, (listing.method.name, token[:80], out.code)
    assert out.error is not None
    refusal = failure(out.error)
    assert refusal.reason == "INVALID_PAGE_TOKEN", (listing.method.name, token[:80])
    assert set(refusal.fields) == {"page_token"}
    return refusal.fields["page_token"]


def assert_quiet(server_log: list[logging.LogRecord]) -> None:
    """Nothing at ERROR, and the server's own INFO lines were seen (so the capture works)."""
    errors = [f"{r.name}: {r.getMessage()[:200]}" for r in server_log if r.levelno >= logging.ERROR]
    assert errors == []
    assert any(r.name == "flightlog.calls" for r in server_log), "the server's log was not seen"
    record(
        "page tokens",
        f"{sum(FORGED.values())} forged, foreign or re-signed tokens over {len(FORGED)} listings; "
        "INTERNAL: 0, records at ERROR: 0",
    )


def test_every_listing_has_a_case() -> None:
    listings = sorted(m.name for m in LISTINGS)
    assert listings == sorted(OTHER_REQUESTS)
    # WatchSessions resumes from a revision, not a token; an aggregation streams a bounded
    # result (at most 10,000 groups) in one go, with nothing to resume.
    unpaged = {"WatchSessions", "AggregateSessionMetrics", "AggregateSessions"}
    streams = sorted(m.name for m in METHODS if m.server_streaming and m.name not in unpaged)
    assert listings == streams


# --- generators ----------------------------------------------------------------------------------


ODD_JSON = [
    "null", "true", "false", "0", "-0", "1.5", "1e999", "-1e999", "NaN", "Infinity", "-Infinity",
    '"\\ud800"', '"\\udfff"', '"a\\u0000b"', '"\\ud83d\\ude00"', '""', "9" * 5000,
    '"' + "x" * 3000 + '"', '"2026-11-27T09:00:00+00:00"', '"0001-01-01T00:00:00-14:00"',
    "[", "}", "",
]  # fmt: skip
ODD_STRINGS = [
    "", "\x00", "2026-11-27T09:00:00", "9999-12-31T23:59:59.999999+00:00",
    "0001-01-01T00:00:00-14:00", "ss_", "1e309",
]  # fmt: skip


def json_texts() -> Any:
    """JSON text, valid or not quite: deep nesting, huge numbers, lone surrogates, NUL, NaN."""
    leaves = st.one_of(
        st.sampled_from(ODD_JSON),
        st.integers(-(2**80), 2**80).map(str),
        st.floats(allow_nan=False, allow_infinity=False).map(json.dumps),
        st.text(max_size=12).map(json.dumps),
    )
    nested = st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4).map(lambda xs: "[" + ",".join(xs) + "]"),
            st.dictionaries(st.text(max_size=4).map(json.dumps), inner, max_size=3).map(
                lambda d: "{" + ",".join(f"{k}:{v}" for k, v in d.items()) + "}"
            ),
        ),
        max_leaves=10,
    )
    deep = st.integers(2, 3_000).flatmap(
        lambda depth: st.sampled_from(
            ["[" * depth + "]" * depth, '{"a":' * depth + "1" + "}" * depth]
        )
    )
    return st.one_of(nested, deep)


def shaped_positions(listing: Listing) -> Any:
    """Positions of the listing's length with values of any JSON type."""
    value = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=20),
        st.sampled_from(ODD_STRINGS),
        st.just([]),
        st.just({}),
    )
    return st.lists(value, min_size=len(listing.position), max_size=len(listing.position)).map(
        lambda position: json.dumps(position, ensure_ascii=False)
    )


def unsigned(scope: str, text: str) -> str:
    """The token format of earlier releases: base64 of ``{"s": scope, "p": position}``."""
    return b64(('{"s":' + json.dumps(scope) + ',"p":' + text + "}").encode())


def forgeries(w: TokenWorld, listing: Listing) -> Any:
    """(kind, token) pairs that must all be refused: JSON in every well-encoded wrapping."""
    return st.tuples(
        st.sampled_from(["unsigned", "wrong MAC", "another key", "unknown key id"]),
        json_texts(),
        st.binary(min_size=16, max_size=16),
    ).map(lambda case: (case[0], wrap(w, listing, *case)))


def wrap(w: TokenWorld, listing: Listing, kind: str, text: str, noise: bytes) -> str:
    payload = text.encode()
    if kind == "unsigned":
        return unsigned(listing.scope, text)
    if kind == "wrong MAC":
        scope = listing.scope.encode()
        return b64(bytes([1]) + noise + bytes([len(scope)]) + scope + payload)
    if kind == "another key":
        return seal_page_token(1, noise * 2, listing.scope, payload)
    return seal_page_token(noise[0] | 2, w.key, listing.scope, payload)  # ids other than 1


# --- the properties ------------------------------------------------------------------------------


@pytest.mark.parametrize("method", LISTINGS, ids=method_name)
def test_arbitrary_text_and_bytes_are_invalid_page_tokens(
    method: MethodDescriptor, world: TokenWorld, server_log: list[logging.LogRecord]
) -> None:
    listing = world.listings[method.name]

    @PROPERTY_SETTINGS
    @given(
        st.one_of(
            st.text(min_size=1),
            st.binary(min_size=1, max_size=600).map(b64),
            st.integers(MAX_TOKEN_CHARS - 2, MAX_TOKEN_CHARS + 2).map(lambda n: "A" * n),
        )
    )
    def property_(token: str) -> None:
        assert_refused(world, listing, token)

    property_()
    assert_quiet(server_log)


@pytest.mark.parametrize("method", LISTINGS, ids=method_name)
def test_any_json_in_a_token_the_server_did_not_sign_is_an_invalid_page_token(
    method: MethodDescriptor, world: TokenWorld, server_log: list[logging.LogRecord]
) -> None:
    listing = world.listings[method.name]

    @PROPERTY_SETTINGS
    @given(forgeries(world, listing))
    def property_(forged: tuple[str, str]) -> None:
        kind, token = forged
        description = assert_refused(world, listing, token)
        if len(token) <= MAX_TOKEN_CHARS:
            assert "not a token this server issued" in description, kind

    property_()
    assert_quiet(server_log)


@pytest.mark.parametrize("method", LISTINGS, ids=method_name)
def test_any_position_signed_with_the_servers_key_is_ok_or_an_invalid_page_token(
    method: MethodDescriptor, world: TokenWorld, server_log: list[logging.LogRecord]
) -> None:
    """Defence in depth behind the MAC, as if the key had leaked."""
    listing = world.listings[method.name]

    @PROPERTY_SETTINGS
    @given(st.one_of(json_texts(), shaped_positions(listing)))
    def property_(text: str) -> None:
        token = seal_page_token(1, world.key, listing.scope, text.encode())
        out = answer(world, listing, token)
        if out.error is not None:
            assert out.code == grpc.StatusCode.INVALID_ARGUMENT, (text[:80], out.code)
            assert failure(out.error).reason == "INVALID_PAGE_TOKEN", text[:80]

    property_()
    assert_quiet(server_log)


# --- tokens of other requests, and genuine ones ---------------------------------------------------


@pytest.mark.parametrize("method", LISTINGS, ids=method_name)
def test_a_token_issued_for_another_request_is_an_invalid_page_token(
    method: MethodDescriptor, world: TokenWorld, server_log: list[logging.LogRecord]
) -> None:
    listing = world.listings[method.name]
    # The same listing in another org.
    for token in world.foreign[method.name]:
        assert "another request" in assert_refused(world, listing, token)
    # The same listing with another filter or parent: both ways round.
    other = OTHER_REQUESTS[method.name]
    if other is not None:
        request = paged(other(world.second), 1)
        for token in listing.tokens:
            assert "another request" in assert_refused(world, listing, token, request)
        out = invoke(world.stubs, method, request, CALL_TIMEOUT_S)
        for token in [r.next_page_token for r in out.responses]:
            assert "another request" in assert_refused(world, listing, token)
    # Every other listing's tokens.
    for name, theirs in world.listings.items():
        if name != method.name:
            assert "another request" in assert_refused(world, listing, theirs.tokens[0])
    assert_quiet(server_log)


@pytest.mark.parametrize("method", LISTINGS, ids=method_name)
def test_every_genuine_token_resumes_with_exactly_the_items_after_its_batch(
    method: MethodDescriptor, world: TokenWorld
) -> None:
    listing = world.listings[method.name]
    for batch, token in enumerate(listing.tokens):
        rest, _ = read_whole(world.stubs, method, paged(listing.request, 2, token))
        assert rest == listing.items[batch + 1 :], (method.name, batch)


# --- the key is read lazily --------------------------------------------------------------------


def test_the_key_is_read_by_the_first_listing_even_after_starting_with_the_database_down(
    private_postgres: PrivatePostgres,
) -> None:
    url = private_postgres.url.replace("postgresql://", "postgresql+psycopg://", 1)
    upgrade(url)
    who = create_identity(url, unique("late-"))
    private_postgres.stop("fast")
    server = ServerThread(
        ServerSettings(database=DatabaseSettings(url=url, pool_size=2), bind="127.0.0.1:0"),
        wait_until_serving=False,
    )  # it listens, waiting for the database: nothing reads the key before a listing
    stubs = Stubs(f"127.0.0.1:{server.port}", who.api_key, who.org_id)
    try:
        devices = catalog_pb.ListDevicesRequest(page_size=1)
        down = invoke(stubs, LISTINGS_BY_NAME["ListDevices"], devices, 5)
        assert down.code == grpc.StatusCode.UNAVAILABLE
        private_postgres.start()
        server.started()
        for device_id in ("a", "b"):
            stubs.catalog.CreateDevice(catalog_pb.CreateDeviceRequest(device_id=device_id))
        assert run_in_database(url, count_keys) == 0  # no listing yet, so no key
        first = next(iter(stubs.catalog.ListDevices(devices)))
        assert run_in_database(url, count_keys) == 1
        rest = list(stubs.catalog.ListDevices(paged(devices, 10, first.next_page_token)))
        assert [d.device_id for r in rest for d in r.devices] == ["b"]
    finally:
        stubs.close()
        server.stop()

    # A read of the keys that fails is not remembered: the next listing reads them again.
    async def retried() -> None:
        database = Database(DatabaseSettings(url=url, pool_size=1))
        keys = TokenKeys(functools.partial(database.run, page_token_keys))
        try:
            await asyncio.to_thread(private_postgres.stop, "fast")
            with pytest.raises(DatabaseUnavailable):
                await keys.codec()
            await asyncio.to_thread(private_postgres.start)
            codec = await keys.codec()
            assert codec.verify(first.next_page_token)[1] == ["a"]  # the servers' key
            assert await keys.codec() is codec  # read once, then kept
        finally:
            await database.close()

    asyncio.run(retried())


async def count_keys(session: AsyncSession) -> int:
    return int(await session.scalar(text("SELECT count(*) FROM page_token_keys")) or 0)
