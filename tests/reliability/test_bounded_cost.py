"""Every request has a bounded cost (issue 11): memory in proportion to its size on the wire, no
long hold of the event loop, and the server keeps serving everyone else meanwhile.

The memory test runs the real server as a process of its own (``tests.bench.processes``), so that
its resident memory is its own: the peak is reset just before a RegisterFile at the documented
limits and read just after, and the growth must stay within 10 times the request's size. (Before
the fix, one registration of 500 partitions x 200 extents grew the server by about 100 MB.)

The concurrency test holds a lock that the registration's insert of its extents needs, from a
connection of its own, so the registration stays in flight, with its request parsed, checked and
copied to the database, for as long as the test wants, without depending on timing: health
checks, reads and other registrations must be answered meanwhile, and the registration must then
complete with every extent stored. Cancelled there instead, it must leave nothing behind.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc
import psycopg
import pytest
from google.protobuf.descriptor import Descriptor, MethodDescriptor
from grpc_health.v1 import health_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flightlog.v1 import catalog_service_pb2 as pb
from flightlog.v1 import common_pb2
from flightlog.v1 import custom_field_service_pb2 as fields_pb
from flightlog.v1 import session_service_pb2 as sessions_pb
from flightlog_server.domain import catalog, rules
from flightlog_server.storage.urls import libpq_conninfo
from tests.bench.processes import ServerProcess
from tests.reliability.helpers import SERVING, blocked_by, checked_out, health, poll, record
from tests.reliability.rpc_cases import METHODS
from tests.rpc.factories import (
    densest_register_file_request,
    drain,
    make_custom_field,
    make_dataset,
    make_session,
    maximal_register_file_request,
    partition,
    register_file,
    register_file_request,
    unique,
    warm_up_registrations,
)
from tests.support import ServerThread, Stubs, create_identity, delimited, rpc_error

MEBIBYTE = 1 << 20
T0 = 1_700_000_000_000_000_000


@pytest.fixture
def own_process(database_url: str) -> Iterator[ServerProcess]:
    """The real server in a process of its own, whose memory is only what it serves (a new one
    for each test: memory an earlier call freed would be reused and hide a later one's)."""
    with ServerProcess("real", database_url) as server:
        yield server


# --- memory ------------------------------------------------------------------------------------


def _one_partition_of_100000_extents(dataset_id: str) -> pb.RegisterFileRequest:
    return register_file_request(
        dataset_id, [("/one", [(n, n + 1) for n in range(catalog.MAX_EXTENTS_PER_FILE)])]
    )


def _the_issues_shape(dataset_id: str) -> pb.RegisterFileRequest:
    """500 partitions x 200 extents: about 100 MB of server memory before the fix."""
    return register_file_request(
        dataset_id, [(f"/t{n}", [(k * 10, k * 10 + 5) for k in range(200)]) for n in range(500)]
    )


@pytest.mark.parametrize(
    "shape",
    [
        maximal_register_file_request,
        densest_register_file_request,
        _one_partition_of_100000_extents,
        _the_issues_shape,
    ],
    ids=["10000-partitions-x-10", "densest", "1-partition-x-100000", "500-partitions-x-200"],
)
def test_register_file_at_its_limits_grows_the_server_by_at_most_10_times_the_request(
    own_process: ServerProcess,
    database_url: str,
    shape: Callable[[str], pb.RegisterFileRequest],
) -> None:
    who = create_identity(database_url, unique("memory-"))
    stubs = Stubs(own_process.target, who.api_key, who.org_id)
    try:
        dataset = make_dataset(stubs)
        warm_up_registrations(stubs, dataset.dataset_id)
        request = shape(dataset.dataset_id)
        size = request.ByteSize()
        assert size <= rules.MAX_REQUEST_BYTES
        own_process.reset_peaks()
        file = stubs.catalog.RegisterFile(request, timeout=300).file
        growth = own_process.peaks().rss_growth_bytes
        record(
            f"RSS growth of RegisterFile {len(request.partitions):,} partitions"
            f" ({request.partitions[0].topic_name}, ...)",
            f"{growth / 1e6:.1f} MB for {size / 1e6:.2f} MB sent ({growth / size:.1f}x)",
        )
        assert growth <= 10 * size, f"{growth / size:.1f} times the request's size"
        stored, _ = drain(
            stubs.catalog.ListFileTopics(pb.ListFileTopicsRequest(file_id=file.file_id)),
            "partitions",
        )
        assert len(stored) == len(request.partitions)
        assert sum(len(p.extents) for p in stored) == sum(
            len(p.extents) for p in request.partitions
        )
    finally:
        stubs.close()


# --- other calls keep being served -------------------------------------------------------------


@pytest.fixture
def extents_locked(database_url: str) -> Iterator[psycopg.Connection]:
    """A transaction holding ``timeline_extents`` in SHARE mode, which a registration's insert
    of its extents waits for (reads are not blocked); released when the test ends."""
    with psycopg.connect(libpq_conninfo(database_url)) as conn:
        conn.execute("LOCK TABLE timeline_extents IN SHARE MODE")
        yield conn
        conn.rollback()


def test_calls_are_served_while_a_maximal_register_file_is_in_flight(
    server: ServerThread,
    stubs: Stubs,
    grpc_target: str,
    database_url: str,
    extents_locked: psycopg.Connection,
) -> None:
    dataset = make_dataset(stubs)
    request = maximal_register_file_request(dataset.dataset_id)
    in_flight = stubs.catalog.RegisterFile.future(request, timeout=300)
    conninfo, holder = libpq_conninfo(database_url), extents_locked.info.backend_pid
    poll(
        lambda: any("INSERT INTO timeline_extents" in q for q in blocked_by(conninfo, holder)),
        120,
        "the registration waits to insert its extents",
    )
    # Its request is parsed, checked and copied, its topics and partitions written: everyone
    # else is still served.
    session = make_session(stubs, name="while registering")
    assert stubs.sessions.GetSession(
        sessions_pb.GetSessionRequest(session_id=session.session_id)
    ).session.name == ("while registering")
    assert health(grpc_target) == SERVING
    assert health(grpc_target, "") == health_pb2.HealthCheckResponse.SERVING
    other = register_file(stubs, make_dataset(stubs).dataset_id)  # no partitions: no insert
    assert not in_flight.done()

    extents_locked.rollback()
    file = in_flight.result(timeout=300).file
    assert other.file_id != file.file_id
    stored, _ = drain(
        stubs.catalog.ListFileTopics(
            pb.ListFileTopicsRequest(file_id=file.file_id, page_size=1000)
        ),
        "partitions",
    )
    assert sum(len(p.extents) for p in stored) == catalog.MAX_EXTENTS_PER_FILE


def test_a_cancelled_register_file_stores_nothing_and_returns_its_connection(
    server: ServerThread,
    stubs: Stubs,
    database_url: str,
    extents_locked: psycopg.Connection,
) -> None:
    dataset = make_dataset(stubs)
    in_flight = stubs.catalog.RegisterFile.future(
        maximal_register_file_request(dataset.dataset_id), timeout=300
    )
    conninfo, holder = libpq_conninfo(database_url), extents_locked.info.backend_pid
    poll(
        lambda: any("INSERT INTO timeline_extents" in q for q in blocked_by(conninfo, holder)),
        120,
        "the registration waits to insert its extents",
    )
    in_flight.cancel()  # type: ignore[no-untyped-call]  # grpc-stubs leaves Call.cancel untyped
    poll(lambda: not blocked_by(conninfo, holder), 30, "the registration's insert is gone")
    extents_locked.rollback()
    poll(lambda: checked_out(server) == 0, 30, "no connection stays checked out")
    files, _ = drain(
        stubs.catalog.ListFiles(pb.ListFilesRequest(dataset_id=dataset.dataset_id)), "files"
    )
    assert files == []


# --- limits ------------------------------------------------------------------------------------


def test_a_request_over_1_mib_is_resource_exhausted_before_it_is_parsed(stubs: Stubs) -> None:
    # Bytes that do not even parse: over the limit, they are never looked at.
    send = stubs.channel.unary_unary(
        "/flightlog.v1.CatalogService/RegisterFile",
        request_serializer=None,
        response_deserializer=None,
    )
    too_big = b"\xff" * (rules.MAX_REQUEST_BYTES + 1)
    error = rpc_error(lambda: send(too_big, timeout=60))
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.reason == "LIMIT_EXCEEDED"
    assert error.metadata == {
        "limit_bytes": str(rules.MAX_REQUEST_BYTES),
        "request_bytes": str(len(too_big)),
    }
    assert rpc_error(lambda: send(b"\xff" * 1000, timeout=60)).code == (
        grpc.StatusCode.INVALID_ARGUMENT
    )


def test_a_request_of_exactly_1_mib_is_served(stubs: Stubs) -> None:
    request = pb.RegisterFileRequest(
        dataset_id=make_dataset(stubs).dataset_id, relative_path=unique("exact/")
    )
    filler = rules.MAX_REQUEST_BYTES - request.ByteSize()
    request.partitions.add(topic_name="/pad", schema_name="")
    # Extents of (1, 1) are 6 bytes each; the schema name takes up the rest, to the byte.
    request.partitions[0].extents.extend(
        [pb.TimelineExtent(min_timestamp_ns=1, max_timestamp_ns=1)] * 100_000
    )
    request.partitions[0].schema_name = "s" * (filler - request.ByteSize() - 10)
    while request.ByteSize() < rules.MAX_REQUEST_BYTES:
        request.partitions[0].schema_name += "s"
    while request.ByteSize() > rules.MAX_REQUEST_BYTES:
        request.partitions[0].schema_name = request.partitions[0].schema_name[:-1]
    assert request.ByteSize() == rules.MAX_REQUEST_BYTES
    error = rpc_error(lambda: stubs.catalog.RegisterFile(request, timeout=300))
    # Served, that is checked: the schema name is over its own limit of 512 characters.
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert set(error.fields) == {"partitions[0].schema_name"}


def test_grpc_refuses_a_request_over_4_mib_unread(stubs: Stubs) -> None:
    error = rpc_error(
        lambda: stubs.sessions.CreateSession(
            sessions_pb.CreateSessionRequest(description="x" * (4 * MEBIBYTE + 1)), timeout=60
        )
    )
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_a_count_over_its_limit_is_refused_before_any_item_is_looked_at(stubs: Stubs) -> None:
    # 257 malformed device IDs: one violation for their number, none for each of them.
    error = rpc_error(
        lambda: stubs.sessions.CreateSession(
            sessions_pb.CreateSessionRequest(device_ids=["bad id"] * 257)
        )
    )
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.fields == {"device_ids": "must hold at most 256 device IDs"}
    # 10,001 files that name nothing.
    request = sessions_pb.AddSessionFilesRequest(
        session_id=make_session(stubs).session_id,
        files=[sessions_pb.SessionFileSpec()] * (rules.MAX_FILES_PER_CALL + 1),
    )
    error = rpc_error(lambda: stubs.sessions.AddSessionFiles(request))
    assert error.fields == {"files": "must hold at most 10,000 files"}


def repeated_paths(
    descriptor: Descriptor, seen: frozenset[str] = frozenset()
) -> Iterator[tuple[list[int], str]]:
    """Every way down to a repeated field that is not packed (messages, maps, strings) in a
    request of type ``descriptor``: the field numbers crossed (one element of each repeated
    field), and the path as a ``BadRequest`` names it. A type already crossed is not entered
    again (Struct)."""
    if descriptor.full_name in seen:
        return
    seen = seen | {descriptor.full_name}
    for field in descriptor.fields:
        inner = field.message_type
        if field.is_repeated and (inner is not None or field.type == field.TYPE_STRING):
            yield [field.number], field.name
        if inner is None:
            continue
        numbers, prefix = [field.number], field.name + ("[0]" if field.is_repeated else "")
        if inner.GetOptions().map_entry:  # into a map's value, if it is a message
            value = inner.fields_by_name["value"]
            inner = value.message_type
            if inner is None:
                continue
            numbers, prefix = [*numbers, value.number], f"{prefix}.value"
        for rest, named in repeated_paths(inner, seen):
            yield numbers + rest, f"{prefix}.{named}"


def empty_elements(numbers: list[int]) -> bytes:
    """A request of just under 1 MiB whose repeated field at the end of ``numbers`` holds only
    empty elements, two bytes each: the parser's densest input."""
    *outer, last = numbers
    payload = delimited(last, b"") * ((rules.MAX_REQUEST_BYTES - 64) // 2)
    for number in reversed(outer):
        payload = delimited(number, payload)
    assert len(payload) <= rules.MAX_REQUEST_BYTES
    return payload


REPEATED_CASES = [
    pytest.param(method, numbers, named, id=f"{method.name}:{named}")
    for method in METHODS
    for numbers, named in repeated_paths(method.input_type)
]
TOO_MANY_ITEMS = (
    f"the request holds more than {rules.MAX_REQUEST_ITEMS:,} items (elements of repeated"
    " message fields and map entries, at any depth, all counted together)"
)
TOO_COSTLY = "building the request would take more than"
# RegisterFile's and AddSessionFiles' requests are read piece by piece, never built whole
# (``rpc.piecewise``): their own limits refuse them as soon as they are passed, naming the field
# they are documented on.
READ_FROM_WIRE = {
    "AddSessionFiles:files": ("files", "must hold at most 10,000 files"),
    "RegisterFile:partitions": ("partitions", "must hold at most 10,000 partitions"),
    "RegisterFile:partitions[0].extents": (
        "partitions",
        "must hold at most 100,000 extents in all (524,256 sent)",
    ),
}


@pytest.mark.parametrize(("method", "numbers", "named"), REPEATED_CASES)
def test_a_request_of_too_many_elements_is_refused_naming_where_before_it_is_built(
    stubs: Stubs, method: MethodDescriptor, numbers: list[int], named: str
) -> None:
    # Before issue 11's last fixes, 1 MiB of empty elements was built whole first (16-47 MB,
    # 20-110 ms of the event loop), then refused by a count, or not at all where none applies
    # (strings), or counted on a shape of the request that took 11-18 MB itself.
    send = stubs.channel.unary_stream if method.server_streaming else stubs.channel.unary_unary
    call = send(
        f"/{method.containing_service.full_name}/{method.name}",
        request_serializer=None,
        response_deserializer=None,
    )
    error = rpc_error(lambda: call(empty_elements(numbers), timeout=60))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT, error
    case = f"{method.name}:{named}"
    if case in READ_FROM_WIRE:
        assert error.fields == dict([READ_FROM_WIRE[case]])
        return
    assert list(error.fields) == [named]
    (why,) = error.fields.values()
    assert why == TOO_MANY_ITEMS or why.startswith(TOO_COSTLY), why


def test_a_filter_holds_at_most_1000_in_values_in_all(stubs: Stubs) -> None:
    field = make_custom_field(stubs, type=fields_pb.CUSTOM_FIELD_TYPE_NUMBER)

    def listing(*counts: int) -> object:
        conditions = [
            sessions_pb.CustomFieldCondition(
                field=field.name,
                operator=sessions_pb.COMPARISON_OPERATOR_IN,
                values=[common_pb2.CustomFieldValue(number_value=i) for i in range(n)],
            )
            for n in counts
        ]
        request = sessions_pb.ListSessionsRequest(
            filter=sessions_pb.SessionFilter(custom_fields=conditions)
        )
        return list(stubs.sessions.ListSessions(request, timeout=60))

    listing(600, 400)
    error = rpc_error(lambda: listing(600, 401))
    assert error.fields == {"filter.custom_fields": "must hold at most 1,000 IN values in all"}


def test_100000_bad_extents_keep_100_violations_and_count_the_rest(stubs: Stubs) -> None:
    request = register_file_request(
        make_dataset(stubs).dataset_id, [("/bad", [(2, 1)] * catalog.MAX_EXTENTS_PER_FILE)]
    )
    error = rpc_error(lambda: stubs.catalog.RegisterFile(request, timeout=300))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    shown = {f for f in error.fields if f != "*"}
    assert shown == {f"partitions[0].extents[{j}].min_timestamp_ns" for j in range(10)}
    assert error.fields["*"] == f"{catalog.MAX_EXTENTS_PER_FILE - 10} more violations not shown"


# --- exactness ---------------------------------------------------------------------------------

# Extents within ±2^61 ns and offsets within ±2^40 ns: every extent plus the offset lies on the
# epoch range, so every generated file is valid.
TIME = st.integers(-(2**61), 2**61)
EXTENT = st.tuples(TIME, TIME).map(lambda pair: (min(pair), max(pair)))
NAME = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00\r\n"), max_size=12)
PARTITION = st.tuples(
    NAME,  # topic name, after a unique prefix
    NAME,  # schema name
    NAME,  # message encoding
    st.integers(0, 2**63 - 1),  # message count
    st.lists(EXTENT, max_size=40),
)
FILES = st.lists(PARTITION, max_size=12, unique_by=lambda p: (p[0], p[1]))


@settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(partitions=FILES, offset=st.integers(-(2**40), 2**40), page_size=st.integers(1, 5))
def test_register_file_stores_exactly_what_was_sent(
    stubs: Stubs,
    partitions: list[tuple[str, str, str, int, list[tuple[int, int]]]],
    offset: int,
    page_size: int,
) -> None:
    prefix = unique("/exact/")  # topics are the org's: keep each example's own
    sent = [
        partition(prefix + name, extents, schema, encoding, count)
        for name, schema, encoding, count, extents in partitions
    ]
    file = register_file(stubs, make_dataset(stubs).dataset_id, sent, offset)
    extents = [e for p in partitions for e in p[4]]
    if extents:
        low, high = min(e[0] for e in extents), max(e[1] for e in extents)
        assert (file.min_timestamp_ns, file.max_timestamp_ns) == (low + offset, high + offset)
    else:
        assert not file.HasField("min_timestamp_ns")
    stored, _ = drain(
        stubs.catalog.ListFileTopics(
            pb.ListFileTopicsRequest(file_id=file.file_id, page_size=page_size)
        ),
        "partitions",
    )
    # The reference: what was sent, by topic identity; listed by (name, topic ID).
    expected = {
        (p.topic_name, p.schema_name): (
            p.message_encoding,
            p.message_count,
            [(e.min_timestamp_ns, e.max_timestamp_ns) for e in p.extents],
        )
        for p in sent
    }
    got = {
        (p.topic.name, p.topic.schema_name): (
            p.topic.message_encoding,
            p.message_count,
            [(e.min_timestamp_ns, e.max_timestamp_ns) for e in p.extents],
        )
        for p in stored
    }
    assert got == expected
    assert len(stored) == len(sent)
    assert [(p.topic.name, p.topic.topic_id) for p in stored] == sorted(
        (p.topic.name, p.topic.topic_id) for p in stored
    )


def test_list_file_topics_batches_hold_at_most_10000_extents_and_never_split_a_partition(
    stubs: Stubs,
) -> None:
    sizes = [6_000, 3_000, 2_000, 15_000, 1, 1]
    topics = [(f"/{i}", [(k, k) for k in range(n)]) for i, n in enumerate(sizes)]
    file = register_file(stubs, make_dataset(stubs).dataset_id, topics)
    responses = list(
        stubs.catalog.ListFileTopics(
            pb.ListFileTopicsRequest(file_id=file.file_id, page_size=1000), timeout=300
        )
    )
    batches = [[len(p.extents) for p in r.partitions] for r in responses]
    assert batches == [[6_000, 3_000], [2_000], [15_000], [1, 1]]
    # Each token resumes after its batch.
    resumed = list(
        stubs.catalog.ListFileTopics(
            pb.ListFileTopicsRequest(
                file_id=file.file_id, page_size=1000, page_token=responses[1].next_page_token
            ),
            timeout=300,
        )
    )
    assert [[len(p.extents) for p in r.partitions] for r in resumed] == batches[2:]
