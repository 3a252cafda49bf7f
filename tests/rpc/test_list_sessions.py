"""ListSessions: every filter and sort, keyset resumption, tokens, validation and query plans.

The listings run in orgs of their own (``create_identity``), so counts are exact. Sessions are
created through the API; what the catalog and custom-field services would provide (devices,
datasets, files, Ready custom fields) is inserted with SQL, which keeps these tests independent
of those services. Expected results are computed in Python from a model of the seeded sessions:
absent values last in both directions, ties broken by session ID in the sort's direction.
"""

from __future__ import annotations

import datetime as dt
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import psycopg
import pytest
from alembic import command
from google.protobuf import struct_pb2, timestamp_pb2
from sqlalchemy.pool import QueuePool

from flightlog.v1 import common_pb2
from flightlog.v1 import session_service_pb2 as pb
from flightlog_server.domain.listing import (
    KeysetPosition,
    ListPosition,
    SessionFilterSpec,
    SessionOrder,
    SortKey,
)
from flightlog_server.domain.rules import new_id
from flightlog_server.domain.types import CustomFieldDef, CustomFieldStatus, CustomFieldType
from flightlog_server.services.session_query import keys_of
from flightlog_server.storage.migrate import alembic_config
from flightlog_server.storage.session_filter import OrderedListingQuery
from flightlog_server.storage.session_listing import Framing, SessionListingQuery
from flightlog_server.storage.urls import libpq_conninfo
from tests.conftest import CreateDatabase
from tests.support import (
    Identity,
    ServerThread,
    Stubs,
    create_identity,
    define_field,
    page_token_codec,
    rpc_error,
    sql,
)

UTC = dt.UTC
BASE_NS = 1_700_000_000_000_000_000
SEEN_BASE = dt.datetime(2024, 1, 1, tzinfo=UTC)
KINDS = ("alpha", "beta", "gamma")
N = 36


# --- seeding ---------------------------------------------------------------------------------


def define_devices(url: str, org_id: str, device_ids: Sequence[str]) -> None:
    for device_id in device_ids:
        sql(
            url,
            "INSERT INTO devices (org_id, device_id, created_by) VALUES (%s, %s, 'test')",
            (org_id, device_id),
        )


def define_dataset_files(url: str, org_id: str, count: int) -> tuple[str, list[str]]:
    dataset_id = new_id("dataset")
    sql(
        url,
        "INSERT INTO datasets (org_id, dataset_id, created_by) VALUES (%s, %s, 'test')",
        (org_id, dataset_id),
    )
    file_ids = [new_id("file") for _ in range(count)]
    for i, file_id in enumerate(file_ids):
        sql(
            url,
            "INSERT INTO files (org_id, file_id, dataset_id, relative_path, size_bytes,"
            " created_by) VALUES (%s, %s, %s, %s, 1, 'test')",
            (org_id, file_id, dataset_id, f"f{i}.mcap"),
        )
    return dataset_id, file_ids


def ts(value: dt.datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(value)
    return out


def number(x: float) -> common_pb2.CustomFieldValue:
    return common_pb2.CustomFieldValue(number_value=x)


def string(x: str) -> common_pb2.CustomFieldValue:
    return common_pb2.CustomFieldValue(string_value=x)


def enum(x: str) -> common_pb2.CustomFieldValue:
    return common_pb2.CustomFieldValue(enum_value=x)


def boolean(x: bool) -> common_pb2.CustomFieldValue:
    return common_pb2.CustomFieldValue(bool_value=x)


def timestamp(x: dt.datetime) -> common_pb2.CustomFieldValue:
    return common_pb2.CustomFieldValue(timestamp_value=ts(x))


@dataclass
class Seeded:
    """What the test knows about a session it created."""

    session_id: str
    created: tuple[int, int]
    name: str | None
    tags: list[str]
    devices: list[str]
    window: tuple[int, int] | None
    dataset: str | None
    values: dict[str, Any] = field(default_factory=dict)

    def value(self, key: str) -> Any:
        if key == "created":
            return self.created
        if key == "name":
            return self.name
        if key == "start_time":
            return self.window[0] if self.window else None
        if key == "duration":
            return self.window[1] - self.window[0] if self.window else None
        return self.values.get(key)


@dataclass
class Org:
    identity: Identity
    stubs: Stubs
    url: str
    sessions: list[Seeded]
    datasets: dict[str, str]
    fields: dict[str, str]

    def ids(self, keep: Callable[[Seeded], bool] = lambda s: True) -> set[str]:
        return {s.session_id for s in self.sessions if keep(s)}


def attributes(i: int) -> dict[str, Any]:
    """Session i's attributes: every kind of value, with absent ones and ties."""
    tags = ["all"]
    tags += ["even"] if i % 2 == 0 else []
    tags += ["three"] if i % 3 == 0 else []
    tags += ["five"] if i % 5 == 0 else []
    devices = {0: ["dev-a"], 1: ["dev-b"], 2: ["dev-a", "dev-b"]}.get(i % 4, [])
    window = None
    if i % 6 != 0:
        start = BASE_NS + (i % 5) * 1_000
        window = (start, start + (i % 4) * 500)
    values: dict[str, Any] = {}
    if i % 5 != 0:
        values["score"] = float(i % 8) - 2.5
    if i % 3 != 0:
        values["label"] = f"l{i % 4}"
    if i % 4 != 3:
        values["kind"] = KINDS[i % 3]
    if i % 6 != 5:
        values["flag"] = i % 2 == 0
    if i % 7 != 3:
        values["seen"] = SEEN_BASE + dt.timedelta(hours=i % 9)
    return {
        "name": None if i % 7 == 0 else f"n{(i * 3) % 11:02d}",
        "tags": tags,
        "devices": devices,
        "window": window,
        "values": values,
    }


def wire_values(values: dict[str, Any]) -> dict[str, common_pb2.CustomFieldValue]:
    makers: dict[str, Callable[[Any], common_pb2.CustomFieldValue]] = {
        "score": number,
        "label": string,
        "kind": enum,
        "flag": boolean,
        "seen": timestamp,
    }
    return {name: makers[name](value) for name, value in values.items()}


def create_seeded(org: Org, i: int, attrs: dict[str, Any] | None = None) -> Seeded:
    attrs = attrs or attributes(i)
    created = org.stubs.sessions.CreateSession(
        pb.CreateSessionRequest(
            name=attrs["name"] or "",
            tags=attrs["tags"],
            device_ids=attrs["devices"],
            custom_fields=wire_values(attrs["values"]),
        )
    ).session
    dataset = None
    if attrs["window"] is not None:
        dataset = "a" if i % 2 == 1 else "b"
        file_id = org.datasets[f"file_{dataset}_{i}"]
        low, high = attrs["window"]
        org.stubs.sessions.AddSessionFiles(
            pb.AddSessionFilesRequest(
                session_id=created.session_id,
                files=[
                    pb.SessionFileSpec(
                        file_id=file_id, range_min_timestamp_ns=low, range_max_timestamp_ns=high
                    )
                ],
            )
        )
    seeded = Seeded(
        session_id=created.session_id,
        created=(created.created.seconds, created.created.nanos),
        name=attrs["name"],
        tags=attrs["tags"],
        devices=attrs["devices"],
        window=attrs["window"],
        dataset=dataset,
        values=attrs["values"],
    )
    org.sessions.append(seeded)
    return seeded


def make_org(database_url: str, grpc_target: str, prefix: str, count: int) -> Org:
    identity = create_identity(database_url, f"{prefix}-{secrets.token_hex(4)}")
    stubs = Stubs(grpc_target, identity.api_key, identity.org_id)
    org_id = identity.org_id
    fields = {
        "score": define_field(database_url, org_id, "score", CustomFieldType.NUMBER),
        "label": define_field(database_url, org_id, "label", CustomFieldType.STRING),
        "kind": define_field(database_url, org_id, "kind", CustomFieldType.ENUM, KINDS),
        "flag": define_field(database_url, org_id, "flag", CustomFieldType.BOOLEAN),
        "seen": define_field(database_url, org_id, "seen", CustomFieldType.TIMESTAMP),
        "draft": define_field(
            database_url, org_id, "draft", CustomFieldType.NUMBER, status=CustomFieldStatus.CREATING
        ),
    }
    define_devices(database_url, org_id, ["dev-a", "dev-b", "dev-c"])
    datasets: dict[str, str] = {}
    for name in ("a", "b"):
        dataset_id, file_ids = define_dataset_files(database_url, org_id, count + 10)
        datasets[name] = dataset_id
        for i, file_id in enumerate(file_ids):
            datasets[f"file_{name}_{i}"] = file_id
    org = Org(identity, stubs, database_url, [], datasets, fields)
    for i in range(count):
        create_seeded(org, i)
    return org


@pytest.fixture(scope="module")
def org(database_url: str, grpc_target: str) -> Iterator[Org]:
    """An org of its own with N seeded sessions; tests must not change it."""
    seeded = make_org(database_url, grpc_target, "listing", N)
    yield seeded
    seeded.stubs.close()


# --- listing helpers -------------------------------------------------------------------------


def responses(stubs: Stubs, **request: Any) -> list[pb.ListSessionsResponse]:
    return list(stubs.sessions.ListSessions(pb.ListSessionsRequest(**request)))


def listed(stubs: Stubs, **request: Any) -> list[str]:
    return [s.session_id for r in responses(stubs, **request) for s in r.sessions]


def expected_order(sessions: Sequence[Seeded], key: str, descending: bool) -> list[str]:
    present = [s for s in sessions if s.value(key) is not None]
    absent = [s for s in sessions if s.value(key) is None]
    present.sort(key=lambda s: (s.value(key), s.session_id), reverse=descending)
    absent.sort(key=lambda s: s.session_id, reverse=descending)
    return [s.session_id for s in present + absent]


def condition(
    name: str,
    operator: pb.ComparisonOperator.ValueType,
    value: common_pb2.CustomFieldValue | None = None,
    values: Sequence[common_pb2.CustomFieldValue] = (),
) -> pb.CustomFieldCondition:
    return pb.CustomFieldCondition(field=name, operator=operator, value=value, values=values)


cond = condition


def conditions(items: Sequence[pb.CustomFieldCondition]) -> pb.SessionFilter:
    return pb.SessionFilter(custom_fields=items)


ASC = pb.SORT_DIRECTION_ASCENDING
DESC = pb.SORT_DIRECTION_DESCENDING
BY_FIELD = pb.SESSION_SORT_FIELD_CUSTOM_FIELD
EQ = pb.COMPARISON_OPERATOR_EQUAL
NE = pb.COMPARISON_OPERATOR_NOT_EQUAL
LT = pb.COMPARISON_OPERATOR_LESS
LE = pb.COMPARISON_OPERATOR_LESS_OR_EQUAL
GT = pb.COMPARISON_OPERATOR_GREATER
GE = pb.COMPARISON_OPERATOR_GREATER_OR_EQUAL
IN = pb.COMPARISON_OPERATOR_IN
IS_NULL = pb.COMPARISON_OPERATOR_IS_NULL
NOT_NULL = pb.COMPARISON_OPERATOR_IS_NOT_NULL


# --- contents and the default order ----------------------------------------------------------


def test_default_order_is_newest_first_and_lists_every_session_once(org: Org) -> None:
    ids = listed(org.stubs)
    assert ids == expected_order(org.sessions, "created", descending=True)
    assert len(ids) == len(set(ids)) == N


def test_listed_sessions_equal_get_session_with_every_ready_field(org: Org) -> None:
    for response in responses(org.stubs, page_size=7):
        for session in response.sessions:
            fetched = org.stubs.sessions.GetSession(
                pb.GetSessionRequest(session_id=session.session_id)
            ).session
            assert session == fetched
            assert set(session.custom_fields) == {"score", "label", "kind", "flag", "seen"}


def test_batches_hold_page_size_sessions_and_the_last_token_resumes_to_nothing(org: Org) -> None:
    batches = responses(org.stubs, page_size=5)
    assert [len(b.sessions) for b in batches] == [5] * (N // 5) + [N % 5]
    assert all(b.next_page_token for b in batches)
    assert listed(org.stubs, page_size=5, page_token=batches[-1].next_page_token) == []


def test_page_size_zero_means_500(org: Org) -> None:
    batches = responses(org.stubs, page_size=0)
    assert len(batches) == 1 and len(batches[0].sessions) == N


# --- sorts -----------------------------------------------------------------------------------


SORTS = [
    (pb.SESSION_SORT_FIELD_CREATED, "", "created"),
    (pb.SESSION_SORT_FIELD_NAME, "", "name"),
    (pb.SESSION_SORT_FIELD_START_TIME, "", "start_time"),
    (pb.SESSION_SORT_FIELD_DURATION, "", "duration"),
    (pb.SESSION_SORT_FIELD_CUSTOM_FIELD, "score", "score"),
    (pb.SESSION_SORT_FIELD_CUSTOM_FIELD, "label", "label"),
    (pb.SESSION_SORT_FIELD_CUSTOM_FIELD, "kind", "kind"),
    (pb.SESSION_SORT_FIELD_CUSTOM_FIELD, "flag", "flag"),
    (pb.SESSION_SORT_FIELD_CUSTOM_FIELD, "seen", "seen"),
]


@pytest.mark.parametrize("sort_field, custom_field, key", SORTS, ids=[s[2] for s in SORTS])
@pytest.mark.parametrize("direction", [ASC, DESC], ids=["asc", "desc"])
@pytest.mark.parametrize("page_size", [4, 1000])
def test_sort_orders_values_then_absent_ones_with_session_id_ties(
    org: Org,
    sort_field: pb.SessionSortField.ValueType,
    custom_field: str,
    key: str,
    direction: pb.SortDirection.ValueType,
    page_size: int,
) -> None:
    sort = pb.SessionSort(field=sort_field, direction=direction, custom_field=custom_field)
    ids = listed(org.stubs, sort=sort, page_size=page_size)
    assert ids == expected_order(org.sessions, key, descending=direction == DESC)


def test_unspecified_direction_is_descending_for_created_and_ascending_otherwise(org: Org) -> None:
    created = listed(org.stubs, sort=pb.SessionSort(field=pb.SESSION_SORT_FIELD_CREATED))
    name = listed(org.stubs, sort=pb.SessionSort(field=pb.SESSION_SORT_FIELD_NAME))
    assert created == expected_order(org.sessions, "created", descending=True)
    assert name == expected_order(org.sessions, "name", descending=False)


def test_resuming_every_batch_crosses_into_absent_values_exactly_once(org: Org) -> None:
    """One session per call, each resumed from the previous token, through the NULL segment."""
    for direction in (ASC, DESC):
        sort = pb.SessionSort(field=pb.SESSION_SORT_FIELD_NAME, direction=direction)
        token, ids = "", []
        while True:
            batch = next(
                iter(
                    org.stubs.sessions.ListSessions(
                        pb.ListSessionsRequest(sort=sort, page_size=1, page_token=token)
                    )
                ),
                None,
            )
            if batch is None:
                break
            ids += [s.session_id for s in batch.sessions]
            token = batch.next_page_token
        assert ids == expected_order(org.sessions, "name", descending=direction == DESC)


# --- filters ---------------------------------------------------------------------------------


def by_filter(org: Org, page_size: int = 4, **filter_fields: Any) -> set[str]:
    ids = listed(org.stubs, filter=pb.SessionFilter(**filter_fields), page_size=page_size)
    assert len(ids) == len(set(ids))
    return set(ids)


def test_tags_all_requires_every_tag(org: Org) -> None:
    got = by_filter(org, tags_all=["even", "three"])
    assert got == org.ids(lambda s: {"even", "three"} <= set(s.tags))
    assert got


def test_tags_any_requires_one_tag(org: Org) -> None:
    got = by_filter(org, tags_any=["five", "three", "missing"])
    assert got == org.ids(lambda s: bool({"five", "three"} & set(s.tags)))


def test_device_filter(org: Org) -> None:
    assert by_filter(org, device_id="dev-a") == org.ids(lambda s: "dev-a" in s.devices)
    assert by_filter(org, device_id="dev-c") == set()
    assert by_filter(org, device_id="no-such-device") == set()


def test_dataset_filter(org: Org) -> None:
    got = by_filter(org, dataset_id=org.datasets["a"])
    assert got == org.ids(lambda s: s.dataset == "a")
    assert got
    assert by_filter(org, dataset_id=new_id("dataset")) == set()


@pytest.mark.parametrize(
    "low, high",
    [
        (BASE_NS + 1_000, BASE_NS + 1_000),
        (BASE_NS + 1_600, BASE_NS + 2_999),
        (0, BASE_NS - 1),
        (0, 2**62),
    ],
)
def test_overlaps_is_a_closed_window_and_skips_sessions_without_bounds(
    org: Org, low: int, high: int
) -> None:
    got = by_filter(
        org, overlaps=common_pb2.TimeWindow(min_timestamp_ns=low, max_timestamp_ns=high)
    )
    assert got == org.ids(
        lambda s: s.window is not None and s.window[0] <= high and s.window[1] >= low
    )


def present(name: str, test: Callable[[Any], bool]) -> Callable[[Seeded], bool]:
    return lambda s: s.values.get(name) is not None and test(s.values[name])


SEEN = SEEN_BASE + dt.timedelta(hours=4)
CONDITIONS = [
    ("score eq", cond("score", EQ, number(0.5)), present("score", lambda x: x == 0.5)),
    ("score ne", cond("score", NE, number(0.5)), present("score", lambda x: x != 0.5)),
    ("score lt", cond("score", LT, number(0.5)), present("score", lambda x: x < 0.5)),
    ("score le", cond("score", LE, number(0.5)), present("score", lambda x: x <= 0.5)),
    ("score gt", cond("score", GT, number(0.5)), present("score", lambda x: x > 0.5)),
    ("score ge", cond("score", GE, number(0.5)), present("score", lambda x: x >= 0.5)),
    (
        "score in",
        cond("score", IN, values=[number(-2.5), number(4.5)]),
        present("score", lambda x: x in (-2.5, 4.5)),
    ),
    ("score is null", cond("score", IS_NULL), lambda s: "score" not in s.values),
    ("score is not null", cond("score", NOT_NULL), lambda s: "score" in s.values),
    ("label lt", cond("label", LT, string("l2")), present("label", lambda x: x < "l2")),
    ("label ge", cond("label", GE, string("l2")), present("label", lambda x: x >= "l2")),
    (
        "label in",
        cond("label", IN, values=[string("l1"), string("l3")]),
        present("label", lambda x: x in ("l1", "l3")),
    ),
    ("label ne", cond("label", NE, string("l1")), present("label", lambda x: x != "l1")),
    ("kind eq", cond("kind", EQ, enum("beta")), present("kind", lambda x: x == "beta")),
    ("kind eq as string", cond("kind", EQ, string("beta")), present("kind", lambda x: x == "beta")),
    (
        "kind in",
        cond("kind", IN, values=[enum("alpha"), enum("gamma")]),
        present("kind", lambda x: x in ("alpha", "gamma")),
    ),
    ("kind is null", cond("kind", IS_NULL), lambda s: "kind" not in s.values),
    ("flag eq", cond("flag", EQ, boolean(True)), present("flag", lambda x: x is True)),
    ("flag ne", cond("flag", NE, boolean(True)), present("flag", lambda x: x is False)),
    ("flag is not null", cond("flag", NOT_NULL), lambda s: "flag" in s.values),
    ("seen lt", cond("seen", LT, timestamp(SEEN)), present("seen", lambda x: x < SEEN)),
    ("seen ge", cond("seen", GE, timestamp(SEEN)), present("seen", lambda x: x >= SEEN)),
    (
        "seen in",
        cond("seen", IN, values=[timestamp(SEEN), timestamp(SEEN_BASE)]),
        present("seen", lambda x: x in (SEEN, SEEN_BASE)),
    ),
]


@pytest.mark.parametrize("sent, keep", [c[1:] for c in CONDITIONS], ids=[c[0] for c in CONDITIONS])
def test_custom_field_conditions(
    org: Org, sent: pb.CustomFieldCondition, keep: Callable[[Seeded], bool]
) -> None:
    expected = org.ids(keep)
    assert expected and expected != org.ids()  # the condition is discriminating
    assert by_filter(org, custom_fields=[sent]) == expected


def test_several_conditions_must_all_hold(org: Org) -> None:
    got = by_filter(
        org,
        custom_fields=[
            condition("score", pb.COMPARISON_OPERATOR_GREATER, number(-1.0)),
            condition("kind", pb.COMPARISON_OPERATOR_NOT_EQUAL, enum("alpha")),
        ],
    )
    assert got == org.ids(
        lambda s: (
            s.values.get("score") is not None
            and s.values["score"] > -1.0
            and s.values.get("kind") not in (None, "alpha")
        )
    )


def test_combined_filters_with_a_custom_field_sort(org: Org) -> None:
    def keep(s: Seeded) -> bool:
        return (
            bool({"even", "five"} & set(s.tags))
            and "dev-a" in s.devices
            and s.values.get("score") is not None
            and s.values["score"] >= -2.0
        )

    for direction in (ASC, DESC):
        ids = listed(
            org.stubs,
            filter=pb.SessionFilter(
                tags_any=["even", "five"],
                device_id="dev-a",
                custom_fields=[
                    condition("score", pb.COMPARISON_OPERATOR_GREATER_OR_EQUAL, number(-2.0))
                ],
            ),
            sort=pb.SessionSort(
                field=pb.SESSION_SORT_FIELD_CUSTOM_FIELD, custom_field="label", direction=direction
            ),
            page_size=2,
        )
        kept = [s for s in org.sessions if keep(s)]
        assert kept
        assert ids == expected_order(kept, "label", descending=direction == DESC)


def test_name_contains_is_case_insensitive_and_escapes_wildcards(
    database_url: str, grpc_target: str
) -> None:
    identity = create_identity(database_url, f"names-{secrets.token_hex(4)}")
    stubs = Stubs(grpc_target, identity.api_key, identity.org_id)
    try:
        names = ["Run 50% faster", "run 50x faster", "a_b", "axb", "A\\B", "ab", "RUNWAY"]
        ids = {
            name: stubs.sessions.CreateSession(
                pb.CreateSessionRequest(name=name)
            ).session.session_id
            for name in names
        }
        stubs.sessions.CreateSession(pb.CreateSessionRequest())  # no name: never matches

        def search(text: str) -> set[str]:
            return set(listed(stubs, filter=pb.SessionFilter(name_contains=text)))

        assert search("50%") == {ids["Run 50% faster"]}
        assert search("_") == {ids["a_b"]}
        assert search("\\") == {ids["A\\B"]}
        assert search("run") == {ids["Run 50% faster"], ids["run 50x faster"], ids["RUNWAY"]}
        assert search("A") == {
            ids[n]
            for n in ("a_b", "axb", "A\\B", "ab", "RUNWAY", "Run 50% faster", "run 50x faster")
        }
    finally:
        stubs.close()


def test_sessions_too_big_for_one_batch_are_split_and_resume_exactly(
    database_url: str, grpc_target: str
) -> None:
    """Pages over ``max_batch_bytes`` (1 MiB) go out as several batches, each with its own
    token, whatever page_size asks; a session larger than that goes alone."""
    identity = create_identity(database_url, f"big-{secrets.token_hex(4)}")
    stubs = Stubs(grpc_target, identity.api_key, identity.org_id)
    try:
        ids = []
        for i in range(36):
            metadata = struct_pb2.Struct()
            metadata.update({"blob": "x" * (50_000 if i % 3 else 500)})
            name = "" if i % 5 == 0 else f"n{i:02d}"
            created = stubs.sessions.CreateSession(
                pb.CreateSessionRequest(name=name, metadata=metadata)
            ).session
            ids.append((name or None, created.session_id))
        expected = [sid for _, sid in sorted((n, sid) for n, sid in ids if n)]
        expected += sorted(sid for n, sid in ids if n is None)
        sort = pb.SessionSort(field=pb.SESSION_SORT_FIELD_NAME)
        batches = responses(stubs, sort=sort, page_size=1000)
        assert len(batches) > 1
        assert all(b.ByteSize() < (1 << 20) + 60_000 for b in batches)
        assert [s.session_id for b in batches for s in b.sessions] == expected
        for i, batch in enumerate(batches[:-1]):
            rest = listed(stubs, sort=sort, page_size=7, page_token=batch.next_page_token)
            seen = sum(len(b.sessions) for b in batches[: i + 1])
            assert rest == expected[seen:]
    finally:
        stubs.close()


@pytest.mark.parametrize("prefix_length", [0, 2, 130])
def test_records_are_framed_with_the_right_varint_at_every_size(
    database_url: str, prefix_length: int
) -> None:
    from sqlalchemy import LargeBinary, bindparam, select

    from flightlog_server.storage.session_listing import _DIALECT, _Compiled, _framed

    statement = select(_framed(bindparam("record", type_=LargeBinary()), 0x0A))
    compiled = _Compiled.of(str(statement.compile(dialect=_DIALECT)))
    prefix = b"p" * prefix_length
    for total in (1, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152):
        record = b"r" * (total - prefix_length) if total > prefix_length else b"r"
        size = len(prefix) + len(record)
        varint = bytearray()
        rest = size
        while rest >= 0x80:
            varint.append((rest & 0x7F) | 0x80)
            rest >>= 7
        varint.append(rest)
        with psycopg.connect(libpq_conninfo(database_url)) as conn:
            values = {
                "record": record,
                "record_prefix": prefix,
                "record_prefix_length": len(prefix),
            }
            row = (
                psycopg.RawCursor(conn)
                .execute(compiled.native, [values[n] for n in compiled.names], binary=True)
                .fetchone()
            )
        assert row is not None
        assert bytes(row[0]) == b"\x0a" + bytes(varint) + prefix + record, size


# --- tenancy ---------------------------------------------------------------------------------


def test_another_orgs_sessions_never_appear(org: Org, other_stubs: Stubs) -> None:
    foreign = other_stubs.sessions.CreateSession(
        pb.CreateSessionRequest(name="n01", tags=["all", "even"])
    ).session
    mine = set(listed(org.stubs, filter=pb.SessionFilter(tags_any=["all", "even"])))
    assert foreign.session_id not in mine
    assert mine == org.ids()
    theirs = set(listed(other_stubs))
    assert foreign.session_id in theirs
    assert not theirs & org.ids()


def test_a_token_of_another_org_is_invalid(org: Org, other_stubs: Stubs) -> None:
    token = responses(org.stubs, page_size=2)[0].next_page_token
    failure = rpc_error(lambda: listed(other_stubs, page_size=2, page_token=token))
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT
    assert failure.reason == "INVALID_PAGE_TOKEN"


# --- resume tokens ---------------------------------------------------------------------------


def test_resume_returns_exactly_the_rest_while_sessions_are_created_and_deleted(
    database_url: str, grpc_target: str
) -> None:
    org = make_org(database_url, grpc_target, "resume", 20)
    try:
        for sort, key in (
            (pb.SessionSort(), "created"),
            (pb.SessionSort(field=pb.SESSION_SORT_FIELD_NAME, direction=ASC), "name"),
            (
                pb.SessionSort(field=pb.SESSION_SORT_FIELD_CUSTOM_FIELD, custom_field="score"),
                "score",
            ),
        ):
            before = expected_order(org.sessions, key, descending=key == "created")
            stream = org.stubs.sessions.ListSessions(pb.ListSessionsRequest(sort=sort, page_size=4))
            batches = iter(stream)
            first, second = next(batches), next(batches)
            stream.cancel()  # type: ignore[no-untyped-call]  # grpc-stubs leaves it untyped
            seen = [s.session_id for s in [*first.sessions, *second.sessions]]
            assert seen == before[:8]

            # Between pages: create sessions on both sides of the position (some with no name
            # and no score: the absent segment), delete sessions already seen and not yet seen.
            for i in range(3):
                create_seeded(org, 20 + i, attributes(i * 7))
            for doomed in (before[1], before[9], before[15]):
                org.stubs.sessions.DeleteSession(pb.DeleteSessionRequest(session_id=doomed))
                org.sessions = [s for s in org.sessions if s.session_id != doomed]

            rest = listed(org.stubs, sort=sort, page_size=4, page_token=second.next_page_token)
            now = expected_order(org.sessions, key, descending=key == "created")
            # Exactly what now sorts after the last session seen: nothing repeated or skipped.
            position = now.index(seen[-1]) if seen[-1] in now else None
            assert position is not None
            assert rest == now[position + 1 :]
            assert not set(rest) & set(seen)
    finally:
        org.stubs.close()


def test_a_token_is_bound_to_its_filter_and_sort(org: Org) -> None:
    request = pb.ListSessionsRequest(
        filter=pb.SessionFilter(tags_any=["all"]),
        sort=pb.SessionSort(field=pb.SESSION_SORT_FIELD_NAME),
        page_size=3,
    )
    token = next(iter(org.stubs.sessions.ListSessions(request))).next_page_token
    for changed in (
        pb.ListSessionsRequest(filter=pb.SessionFilter(tags_any=["even"]), sort=request.sort),
        pb.ListSessionsRequest(filter=request.filter),
        pb.ListSessionsRequest(
            filter=request.filter,
            sort=pb.SessionSort(field=pb.SESSION_SORT_FIELD_NAME, direction=DESC),
        ),
    ):
        changed.page_token = token
        failure = rpc_error(lambda: list(org.stubs.sessions.ListSessions(changed)))  # noqa: B023
        assert failure.code == grpc.StatusCode.INVALID_ARGUMENT
        assert failure.reason == "INVALID_PAGE_TOKEN"
        assert "page_token" in failure.fields
    # The same filter and sort with another page size is fine.
    request.page_token = token
    request.page_size = 100
    assert len(listed(org.stubs, **{f.name: v for f, v in request.ListFields()})) == N - 3


@pytest.mark.parametrize("token", ["garbage", "e30", "eyJzIjoxfQ", "!!!", "a" * 500])
def test_a_garbled_token_is_invalid(org: Org, token: str) -> None:
    failure = rpc_error(lambda: listed(org.stubs, page_token=token))
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT
    assert failure.reason == "INVALID_PAGE_TOKEN"
    assert "page_token" in failure.fields


def test_a_signed_position_of_the_wrong_type_is_still_invalid(org: Org, database_url: str) -> None:
    """Behind the MAC, the position is still checked against the order (defence in depth):
    these tokens carry the real scope and are signed with the server's own key."""
    codec = page_token_codec(database_url)
    scope, _ = codec.verify(responses(org.stubs, page_size=2)[0].next_page_token)
    for position in ([0, 12, "ss_x"], [1, None, "ss_x"], [0, "yesterday", "ss_x"], [2, 1, 1]):
        forged = codec.encode(scope, position)
        failure = rpc_error(lambda: listed(org.stubs, page_token=forged))  # noqa: B023
        assert failure.reason == "INVALID_PAGE_TOKEN"
        assert "page_token" in failure.fields


# --- validation ------------------------------------------------------------------------------


INVALID = [
    ("page_size", {"page_size": -1}),
    ("page_size", {"page_size": 1001}),
    ("sort.field", {"sort": pb.SessionSort(field=pb.SessionSortField.ValueType(99))}),
    ("sort.direction", {"sort": pb.SessionSort(direction=pb.SortDirection.ValueType(7))}),
    ("sort.custom_field", {"sort": pb.SessionSort(field=BY_FIELD)}),
    ("sort.custom_field", {"sort": pb.SessionSort(field=BY_FIELD, custom_field="nope")}),
    ("sort.custom_field", {"sort": pb.SessionSort(field=BY_FIELD, custom_field="draft")}),
    (
        "sort.custom_field",
        {"sort": pb.SessionSort(field=pb.SESSION_SORT_FIELD_NAME, custom_field="score")},
    ),
    (
        "filter.overlaps.max_timestamp_ns",
        {
            "filter": pb.SessionFilter(
                overlaps=common_pb2.TimeWindow(min_timestamp_ns=2, max_timestamp_ns=1)
            )
        },
    ),
    ("filter.name_contains", {"filter": pb.SessionFilter(name_contains="x" * 121)}),
    ("filter.tags_all[0]", {"filter": pb.SessionFilter(tags_all=[""])}),
    ("filter.tags_any", {"filter": pb.SessionFilter(tags_any=["t"] * 257)}),
    ("filter.device_id", {"filter": pb.SessionFilter(device_id="bad device")}),
    ("filter.dataset_id", {"filter": pb.SessionFilter(dataset_id="fl_notadataset")}),
    ("filter.custom_fields", {"filter": conditions([cond("score", IS_NULL)] * 17)}),
    ("filter.custom_fields[0].field", {"filter": conditions([cond("nope", IS_NULL)])}),
    ("filter.custom_fields[0].field", {"filter": conditions([cond("draft", IS_NULL)])}),
    ("filter.custom_fields[0].field", {"filter": conditions([cond("", IS_NULL)])}),
    (
        "filter.custom_fields[0].operator",
        {"filter": conditions([cond("score", pb.COMPARISON_OPERATOR_UNSPECIFIED)])},
    ),
    (
        "filter.custom_fields[0].operator",
        {"filter": conditions([cond("score", pb.ComparisonOperator.ValueType(42))])},
    ),
    ("filter.custom_fields[0].operator", {"filter": conditions([cond("flag", LT, boolean(True))])}),
    (
        "filter.custom_fields[0].operator",
        {"filter": conditions([cond("flag", IN, values=[boolean(True)])])},
    ),
    ("filter.custom_fields[0].operator", {"filter": conditions([cond("kind", GT, enum("beta"))])}),
    ("filter.custom_fields[0].value", {"filter": conditions([cond("score", EQ)])}),
    ("filter.custom_fields[0].value", {"filter": conditions([cond("score", EQ, string("1"))])}),
    (
        "filter.custom_fields[0].value",
        {
            "filter": conditions(
                [cond("score", EQ, common_pb2.CustomFieldValue(null_value=struct_pb2.NULL_VALUE))]
            )
        },
    ),
    ("filter.custom_fields[0].value", {"filter": conditions([cond("kind", EQ, enum("delta"))])}),
    ("filter.custom_fields[0].value", {"filter": conditions([cond("score", IS_NULL, number(1))])}),
    ("filter.custom_fields[0].values", {"filter": conditions([cond("score", IN)])}),
    (
        "filter.custom_fields[0].values[1]",
        {"filter": conditions([cond("label", IN, values=[string("a"), number(1)])])},
    ),
    (
        "filter.custom_fields[1].value",
        {"filter": conditions([cond("score", IS_NULL), cond("seen", LT, number(1))])},
    ),
]


@pytest.mark.parametrize("field_path, request_fields", INVALID, ids=[i[0] for i in INVALID])
def test_an_invalid_filter_or_sort_is_invalid_argument_naming_the_field(
    org: Org, field_path: str, request_fields: dict[str, Any]
) -> None:
    failure = rpc_error(lambda: listed(org.stubs, **request_fields))
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT
    assert failure.reason == "INVALID_REQUEST"
    assert field_path in failure.fields, failure.fields


# --- streaming ---------------------------------------------------------------------------------


def test_a_cancelled_stream_releases_its_database_connection(
    org: Org, server: ServerThread
) -> None:
    stream = org.stubs.sessions.ListSessions(pb.ListSessionsRequest(page_size=1))
    next(iter(stream))
    stream.cancel()  # type: ignore[no-untyped-call]  # grpc-stubs leaves Call.cancel untyped
    pool = server.server.database.engine.pool
    assert isinstance(pool, QueuePool)
    deadline = time.monotonic() + 5
    while pool.checkedout() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert pool.checkedout() == 0


# --- query plans -----------------------------------------------------------------------------


BIG = 20_000
FRAMING = Framing(tag=0x0A, prefix=b"\x3a\x00")


@pytest.fixture(scope="module")
def plans_url(create_database: CreateDatabase) -> str:
    """A database of its own for the plan tests: the planner's statistics then describe the big
    org alone, not whatever the rest of the suite left in the shared tables (where, with most
    sessions named, it rightly estimates few unnamed ones and sorts them instead)."""
    url = create_database("flightlog_plans")
    command.upgrade(alembic_config(url), "head")
    return url


@pytest.fixture(scope="module")
def big_org(plans_url: str) -> tuple[str, dict[str, CustomFieldDef]]:
    """An org with BIG sessions inserted with SQL (and a number field set on most), vacuumed and
    analyzed, so that the planner chooses as it would on a real table.

    Vacuumed, not only analyzed: VACUUM marks the pages all-visible, which makes index-only
    probes cheaper and changed the absent-values plan of a custom-field order (a Seq Scan once
    autovacuum had run, an index walk before it). Autovacuum is off on this database's tables
    so that the statistics cannot change while the plans are checked."""
    database_url = plans_url
    for table in ("sessions", "session_custom_field_values"):
        sql(database_url, f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
    identity = create_identity(database_url, f"plans-{secrets.token_hex(4)}")
    org_id = identity.org_id
    field_id = define_field(database_url, org_id, "speed", CustomFieldType.NUMBER)
    sql(
        database_url,
        """
        INSERT INTO sessions (org_id, session_id, name, tags, min_timestamp_ns, max_timestamp_ns,
                              created, created_by, modified_by)
        SELECT %(org)s, 'ss_' || lpad(i::text, 12, '0'),
               CASE WHEN i %% 10 = 0 THEN NULL ELSE 'run ' || (i %% 997) END,
               CASE WHEN i %% 10 = 0 THEN ARRAY['all', 'tenth'] ELSE ARRAY['all'] END
                   || CASE WHEN i %% 1000 = 0 THEN ARRAY['rare'] ELSE ARRAY[]::text[] END,
               CASE WHEN i %% 7 = 0 THEN NULL ELSE i * 1000 END,
               CASE WHEN i %% 7 = 0 THEN NULL ELSE i * 1000 + (i %% 13) * 10 END,
               now() - i * interval '1 second', 'test', 'test'
        FROM generate_series(1, %(n)s) AS i
        """,
        {"org": org_id, "n": BIG},
    )
    sql(
        database_url,
        """
        INSERT INTO session_custom_field_values (org_id, session_id, custom_field_id,
                                                 number_value)
        SELECT org_id, session_id, %(field)s, (hashtext(session_id) %% 1000)::float8
        FROM sessions WHERE org_id = %(org)s AND right(session_id, 1) <> '3'
        """,
        {"org": org_id, "field": field_id},
    )
    sql(database_url, "VACUUM ANALYZE sessions")
    sql(database_url, "VACUUM ANALYZE session_custom_field_values")
    speed = CustomFieldDef(
        field_id, org_id, "session", "speed", CustomFieldType.NUMBER, (),
        CustomFieldStatus.READY, "", dt.datetime.now(UTC), "test",
    )  # fmt: skip
    return org_id, {"speed": speed}


def plan(
    url: str,
    query: SessionListingQuery,
    absent: bool,
    after: ListPosition | None,
    *,
    batch: bool = True,
) -> str:
    """EXPLAIN of the exact statement ``query`` runs: a page aggregated into one row (``batch``)
    or its rows (the fallback for pages over the batch size)."""
    text, params = query.sql(absent, after, 500, batch=batch)
    rows = sql(url, "EXPLAIN " + text, params)
    return "\n".join(r[0] for r in rows)


PLAN_ORDERS: list[tuple[str, SortKey, Any]] = [
    ("created", SortKey.CREATED, dt.datetime.now(UTC) - dt.timedelta(hours=1)),
    ("name", SortKey.NAME, "run 5"),
    ("start_time", SortKey.START_TIME, 5_000_000),
    ("duration", SortKey.DURATION, 60),
    ("speed", SortKey.CUSTOM_FIELD, 500.0),
]


@pytest.mark.parametrize("name, key, value", PLAN_ORDERS, ids=[p[0] for p in PLAN_ORDERS])
@pytest.mark.parametrize("descending", [False, True], ids=["asc", "desc"])
def test_every_order_walks_an_index_without_sorting(
    plans_url: str,
    big_org: tuple[str, dict[str, CustomFieldDef]],
    name: str,
    key: SortKey,
    value: Any,
    descending: bool,
) -> None:
    org_id, fields = big_org
    order = SessionOrder(key, descending, fields["speed"] if key is SortKey.CUSTOM_FIELD else None)
    query = SessionListingQuery(org_id, SessionFilterSpec(), order, FRAMING)
    positions: list[tuple[bool, ListPosition | None]] = [
        (False, None),
        (False, ListPosition(False, value, "ss_000000010000")),
    ]
    if order.has_absent_values:
        positions += [(True, None), (True, ListPosition(True, None, "ss_000000010000"))]
    for absent, after in positions:
        for batch in (True, False):
            text = plan(plans_url, query, absent, after, batch=batch)
            assert "Seq Scan on sessions" not in text, text
            assert "Index" in text, text
            # The page is read by walking an index up to the LIMIT, never by sorting the org's
            # sessions. (Above the LIMIT, PostgreSQL 16 may sort the page itself, at most
            # page_size rows, for the aggregate that frames it; 15 does that inside it.)
            below_limit = text[text.index("Limit") :]
            assert "Sort" not in below_limit, text


@pytest.mark.parametrize(
    "spec",
    [
        SessionFilterSpec(),
        SessionFilterSpec(tags_all=("tenth",)),
        SessionFilterSpec(tags_all=("rare",)),
        SessionFilterSpec(tags_any=("rare", "tenth")),
    ],
    ids=["no filter", "common tag", "rare tag", "tags any"],
)
def test_default_order_and_tag_filters_never_scan_the_sessions_table(
    plans_url: str, big_org: tuple[str, dict[str, CustomFieldDef]], spec: SessionFilterSpec
) -> None:
    org_id, _ = big_org
    query = SessionListingQuery(org_id, spec, SessionOrder(), FRAMING)
    for after in (None, ListPosition(False, dt.datetime.now(UTC), "ss_000000010000")):
        for batch in (True, False):
            text = plan(plans_url, query, False, after, batch=batch)
            assert "Seq Scan on sessions" not in text, text


def test_a_narrow_time_window_is_read_through_the_window_index(
    plans_url: str, big_org: tuple[str, dict[str, CustomFieldDef]]
) -> None:
    org_id, _ = big_org
    # Sessions i have bounds [i * 1000, i * 1000 + (i % 13) * 10]: about 50 overlap this window,
    # half-way through a listing that is newest first.
    spec = SessionFilterSpec(overlaps=(10_000_000, 10_050_000))
    query = SessionListingQuery(org_id, spec, SessionOrder(), FRAMING)
    for batch in (True, False):
        text = plan(plans_url, query, False, None, batch=batch)
        assert "Seq Scan on sessions" not in text, text
        assert "ix_sessions_window" in text, text


@pytest.mark.parametrize("descending", [False, True], ids=["asc", "desc"])
def test_an_ordered_listing_walks_the_sessions_without_a_value_by_index(
    plans_url: str, big_org: tuple[str, dict[str, CustomFieldDef]], descending: bool
) -> None:
    # The filter language's listing (``order_by``) has its own statement for the sessions that
    # lack the first key's value; it must probe them in ID order too, not scan and sort the org.
    org_id, fields = big_org
    keys = keys_of(SessionOrder(SortKey.CUSTOM_FIELD, descending, fields["speed"]))
    query = OrderedListingQuery(org_id, None, SessionFilterSpec(), keys, FRAMING)
    for after in (None, KeysetPosition((None,), "ss_000000010000")):
        text, params = query.sql(True, after, 500)
        rows = sql(plans_url, "EXPLAIN " + text, params)
        text = "\n".join(r[0] for r in rows)
        assert "Seq Scan on sessions" not in text, text
        assert "Sort" not in text[text.index("Limit") :], text
