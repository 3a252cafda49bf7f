"""ListSessions with the filter language (AIP-160) and multi-key orders (AIP-132).

The core is a differential test: hypothesis builds random filter expressions, each together with
its meaning as a Python predicate (the reference evaluator), and random orders; the server must
return exactly the sessions the reference selects, in the reference's order, also when the
listing is resumed from any of its batches. The sessions are those of
``test_list_sessions.make_org`` (tags, devices, datasets and files, bounds or none, custom
fields of every type set or unset), plus published metrics.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flightlog.v1 import session_service_pb2 as pb
from flightlog_server.domain.errors import InvalidArgument
from flightlog_server.domain.filtering import (
    MAX_FILTER_CHARS,
    MAX_FILTER_DEPTH,
    MAX_FILTER_TERMS,
    parse_filter,
)
from tests.rpc.test_list_sessions import BASE_NS, KINDS, SEEN_BASE, Org, Seeded, make_org
from tests.support import Stubs, create_identity, rpc_error

N = 36


# --- the sessions and their model -------------------------------------------------------------


def metrics_of(i: int) -> dict[str, float]:
    metrics: dict[str, float] = {}
    if i % 3 != 1:
        metrics["speed"] = (i % 7) * 1.5
    if i % 2 == 0:
        metrics["alt.m"] = float(i % 5) - 1.0
    return metrics


@dataclass
class Model:
    org: Org
    files: dict[str, str]  # session ID -> its file ID
    metrics: dict[str, dict[str, float]]  # session ID -> metric values

    def value(self, s: Seeded, name: str) -> Any:
        """The session's value of a field, None when absent (the reference's view)."""
        if name == "session_id":
            return s.session_id
        if name == "name":
            return s.name
        if name == "created":
            return s.created[0] * 1_000_000_000 + s.created[1]
        if name == "start_time":
            return s.window[0] if s.window else None
        if name == "end_time":
            return s.window[1] if s.window else None
        if name == "duration":
            return s.window[1] - s.window[0] if s.window else None
        if name.startswith("metrics."):
            return self.metrics[s.session_id].get(name.removeprefix("metrics."))
        value = s.values.get(name.removeprefix("custom_fields."))
        if isinstance(value, dt.datetime):
            return ns_of(value)
        return value

    def collection(self, s: Seeded, name: str) -> set[str]:
        if name == "tags":
            return set(s.tags)
        if name == "devices":
            return set(s.devices)
        if name == "datasets":
            return {self.org.datasets[s.dataset]} if s.dataset else set()
        file_id = self.files.get(s.session_id)
        return {file_id} if file_id else set()


def ns_of(moment: dt.datetime) -> int:
    return (moment - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1) * 1000


def rfc3339(ns: int) -> str:
    seconds, nanos = divmod(ns, 1_000_000_000)
    moment = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=seconds)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{nanos:09d}Z"


@pytest.fixture(scope="module")
def model(database_url: str, grpc_target: str) -> Iterator[Model]:
    org = make_org(database_url, grpc_target, "filter", N)
    files: dict[str, str] = {}
    metrics: dict[str, dict[str, float]] = {}
    for i, s in enumerate(org.sessions):
        if s.dataset:
            files[s.session_id] = org.datasets[f"file_{s.dataset}_{i}"]
        metrics[s.session_id] = metrics_of(i)
        if metrics[s.session_id]:
            org.stubs.sessions.PublishSessionMetrics(
                pb.PublishSessionMetricsRequest(
                    session_id=s.session_id,
                    metrics=[pb.MetricEntry(name=k, value=v) for k, v in metrics_of(i).items()],
                    no_device=True,
                )
            )
    yield Model(org, files, metrics)
    org.stubs.close()


def listing(stubs: Stubs, **request: Any) -> list[pb.ListSessionsResponse]:
    """The listing's batches; a listing that returns more sessions than exist fails at once."""
    call = stubs.sessions.ListSessions(pb.ListSessionsRequest(**request))
    batches: list[pb.ListSessionsResponse] = []
    for batch in call:
        batches.append(batch)
        if sum(len(b.sessions) for b in batches) > 2 * N:
            call.cancel()  # type: ignore[no-untyped-call]
            raise AssertionError(f"more sessions than exist: {ids_of(batches)[:12]}...")
    return batches


def ids_of(batches: list[pb.ListSessionsResponse]) -> list[str]:
    return [s.session_id for b in batches for s in b.sessions]


# --- the reference evaluator: expressions with their meaning ----------------------------------

Predicate = Callable[[Model, Seeded], bool]


@dataclass(frozen=True)
class Expr:
    text: str
    holds: Predicate


def scalar(name: str, op: str, literal: str, operand: Any) -> Expr:
    def holds(m: Model, s: Seeded) -> bool:
        value = m.value(s, name)
        if value is None:
            return False
        result: bool = {
            "=": value == operand,
            "!=": value != operand,
            "<": value < operand,
            "<=": value <= operand,
            ">": value > operand,
            ">=": value >= operand,
        }[op]
        return result

    return Expr(f"{name} {op} {literal}", holds)


def pattern(name: str, op: str, parts: list[str]) -> Expr:
    import re

    regex = re.compile(".*".join(re.escape(p) for p in parts), re.DOTALL)

    def holds(m: Model, s: Seeded) -> bool:
        value = m.value(s, name)
        if value is None:
            return False
        matched = regex.fullmatch(value) is not None
        return matched if op == "=" else not matched

    return Expr(f'{name} {op} "{"*".join(parts)}"', holds)


def within(name: str, literals: list[str], operands: list[Any]) -> Expr:
    def holds(m: Model, s: Seeded) -> bool:
        value = m.value(s, name)
        return value is not None and value in operands

    return Expr(f"{name} IN ({', '.join(literals)})", holds)


def present(name: str, form: int) -> Expr:
    def holds(m: Model, s: Seeded) -> bool:
        if name in ("tags", "devices", "datasets", "files"):
            return bool(m.collection(s, name))
        return m.value(s, name) is not None

    return Expr(f"{name}:*" if form == 0 else f"has({name})", holds)


def contains(name: str, element: str) -> Expr:
    return Expr(f'{name}:"{element}"', lambda m, s: element in m.collection(s, name))


def any_of(name: str, elements: list[str]) -> Expr:
    quoted = ", ".join(f'"{e}"' for e in elements)
    return Expr(f"{name} IN ({quoted})", lambda m, s: bool(m.collection(s, name) & set(elements)))


OPS = st.sampled_from(["=", "!=", "<", "<=", ">", ">="])
SEEN_NS = [ns_of(SEEN_BASE + dt.timedelta(hours=h)) for h in range(10)]


def atoms(model: Model) -> st.SearchStrategy[Expr]:
    datasets = [model.org.datasets["a"], model.org.datasets["b"], "ds_none"]
    files = [*sorted(model.files.values())[:4], "fl_none"]
    created = sorted(model.value(s, "created") for s in model.org.sessions)
    numbers = st.sampled_from([-3.0, -2.5, -1.0, 0.0, 0.5, 1.5, 3.0, 4.5, 6.0, 9.0])
    names = [f"n{k:02d}" for k in range(0, 12, 2)]
    ns_points = st.integers(min_value=-1, max_value=6).map(lambda k: BASE_NS + k * 1_000 - 1)
    durations = st.sampled_from([0, 500, 1000, 1499, 1500, 2000])
    return st.one_of(
        st.sampled_from(["all", "even", "three", "five", "none"]).map(
            lambda t: contains("tags", t)
        ),
        st.lists(st.sampled_from(["even", "three", "five", "x"]), min_size=1, max_size=3).map(
            lambda ts: any_of("tags", ts)
        ),
        st.sampled_from(["dev-a", "dev-b", "dev-c"]).map(lambda d: contains("devices", d)),
        st.sampled_from(datasets).map(lambda d: contains("datasets", d)),
        st.sampled_from(files).map(lambda f: contains("files", f)),
        st.builds(
            present,
            st.sampled_from(
                [
                    "tags",
                    "devices",
                    "files",
                    "name",
                    "start_time",
                    "duration",
                    "custom_fields.score",
                    "custom_fields.label",
                    "custom_fields.kind",
                    "custom_fields.flag",
                    "custom_fields.seen",
                    "metrics.speed",
                ]
            ),
            st.integers(0, 1),
        ),
        st.builds(lambda op, n: scalar("name", op, f'"{n}"', n), OPS, st.sampled_from(names)),
        st.builds(
            lambda op, p: pattern("name", op, p),
            st.sampled_from(["=", "!="]),
            st.sampled_from([["n0", ""], ["", "1"], ["n", "", "2"]]),
        ),
        st.builds(lambda op, ns: scalar("start_time", op, rfc3339(ns), ns), OPS, ns_points),
        st.builds(lambda op, ns: scalar("end_time", op, f'"{rfc3339(ns)}"', ns), OPS, ns_points),
        st.builds(lambda op, d: scalar("duration", op, f"{d / 1e9:.9f}s", d), OPS, durations),
        st.builds(
            lambda op, k: scalar("created", op, rfc3339(created[k] + 1), created[k] + 1),
            OPS,
            st.integers(0, len(created) - 1),
        ),
        st.builds(lambda op, x: scalar("custom_fields.score", op, repr(x), x), OPS, numbers),
        st.builds(
            lambda op, x: scalar("custom_fields.label", op, f'"l{x}"', f"l{x}"),
            OPS,
            st.integers(0, 4),
        ),
        st.builds(
            lambda op, p: pattern("custom_fields.label", op, p),
            st.sampled_from(["=", "!="]),
            st.sampled_from([["l", ""], ["", "1"]]),
        ),
        st.builds(
            lambda op, k: scalar("custom_fields.kind", op, k, k),
            st.sampled_from(["=", "!="]),
            st.sampled_from(KINDS),
        ),
        st.lists(st.sampled_from(KINDS), min_size=1, max_size=3).map(
            lambda ks: within("custom_fields.kind", [f'"{k}"' for k in ks], ks)
        ),
        st.builds(
            lambda op, b: scalar("custom_fields.flag", op, str(b).lower(), b),
            st.sampled_from(["=", "!="]),
            st.booleans(),
        ),
        st.builds(
            lambda op, ns: scalar("custom_fields.seen", op, rfc3339(ns), ns),
            OPS,
            st.sampled_from(SEEN_NS),
        ),
        st.builds(lambda op, x: scalar("metrics.speed", op, repr(x), x), OPS, numbers),
        st.lists(numbers, min_size=1, max_size=3).map(
            lambda xs: within("metrics.speed", [repr(x) for x in xs], xs)
        ),
        st.builds(
            lambda op, x: Expr(
                f'metrics."alt.m" {op} {x!r}', scalar("metrics.alt.m", op, repr(x), x).holds
            ),
            OPS,
            numbers,
        ),
    )


def expressions(model: Model) -> st.SearchStrategy[Expr]:
    def extend(children: st.SearchStrategy[Expr]) -> st.SearchStrategy[Expr]:
        def conj(items: list[Expr]) -> Expr:
            return Expr(
                " AND ".join(f"({e.text})" for e in items),
                lambda m, s: all(e.holds(m, s) for e in items),
            )

        def disj(items: list[Expr]) -> Expr:
            return Expr(
                " OR ".join(f"({e.text})" for e in items),
                lambda m, s: any(e.holds(m, s) for e in items),
            )

        def neg(item: Expr, form: str) -> Expr:
            return Expr(f"{form}({item.text})", lambda m, s: not item.holds(m, s))

        return st.one_of(
            st.lists(children, min_size=2, max_size=3).map(conj),
            st.lists(children, min_size=2, max_size=3).map(disj),
            st.builds(neg, children, st.sampled_from(["NOT ", "-"])),
        )

    return st.recursive(atoms(model), extend, max_leaves=8)


SORTABLE = [
    "name",
    "created",
    "start_time",
    "end_time",
    "duration",
    "custom_fields.score",
    "custom_fields.label",
    "custom_fields.kind",
    "custom_fields.flag",
    "custom_fields.seen",
    "metrics.speed",
]


@st.composite
def orders(draw: st.DrawFn) -> list[tuple[str, bool]]:
    keys = draw(st.lists(st.sampled_from(SORTABLE), min_size=0, max_size=3, unique=True))
    order = [(k, draw(st.booleans())) for k in keys]
    if draw(st.booleans()):
        order.append(("session_id", draw(st.booleans())))
    return order


def order_text(order: list[tuple[str, bool]]) -> str:
    return ", ".join(f"{k} desc" if d else (k if len(k) % 2 else f"{k} asc") for k, d in order)


def reference_order(
    model: Model, sessions: list[Seeded], order: list[tuple[str, bool]]
) -> list[str]:
    if not order:
        order = [("created", True)]
    id_descending = order[-1][1]
    keys = order[:-1] if order[-1][0] == "session_id" else order

    def compare(a: Seeded, b: Seeded) -> int:
        for name, descending in keys:
            x, y = model.value(a, name), model.value(b, name)
            if x is None or y is None:
                if x is None and y is None:
                    continue
                return 1 if x is None else -1
            if x != y:
                result = -1 if x < y else 1
                return -result if descending else result
        if a.session_id == b.session_id:
            return 0
        result = -1 if a.session_id < b.session_id else 1
        return -result if id_descending else result

    return [s.session_id for s in sorted(sessions, key=functools.cmp_to_key(compare))]


# --- the differential test --------------------------------------------------------------------


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_filters_and_orders_match_the_reference_across_resumes(
    model: Model, data: st.DataObject
) -> None:
    expr = data.draw(expressions(model), label="filter")
    order = data.draw(orders(), label="order")
    page_size = data.draw(st.integers(1, 7), label="page_size")
    selected = [s for s in model.org.sessions if expr.holds(model, s)]
    expected = reference_order(model, selected, order)
    text = order_text(order)
    batches = listing(model.org.stubs, filter_text=expr.text, order_by=text, page_size=page_size)
    assert ids_of(batches) == expected
    if batches:
        k = data.draw(st.integers(0, len(batches) - 1), label="resume after batch")
        rest = listing(
            model.org.stubs,
            filter_text=expr.text,
            order_by=text,
            page_size=page_size,
            page_token=batches[k].next_page_token,
        )
        assert ids_of(batches[: k + 1]) + ids_of(rest) == expected


# --- specific semantics -----------------------------------------------------------------------


def test_or_binds_tighter_than_and_as_in_aip_160(model: Model) -> None:
    text = 'tags:"even" OR tags:"three" AND tags:"five"'
    got = set(ids_of(listing(model.org.stubs, filter_text=text)))
    want = {
        s.session_id
        for s in model.org.sessions
        if ("even" in s.tags or "three" in s.tags) and "five" in s.tags
    }
    assert got == want


def test_juxtaposed_terms_are_anded(model: Model) -> None:
    got = ids_of(listing(model.org.stubs, filter_text='tags:"even" tags:"three"'))
    want = ids_of(listing(model.org.stubs, filter_text='tags:"even" AND tags:"three"'))
    assert got == want and got


def test_structured_filter_and_filter_text_are_anded(model: Model) -> None:
    got = ids_of(
        listing(
            model.org.stubs,
            filter=pb.SessionFilter(tags_all=["even"]),
            filter_text="custom_fields.score > 0",
        )
    )
    want = {
        s.session_id
        for s in model.org.sessions
        if "even" in s.tags and (s.values.get("score") or 0) > 0
    }
    assert set(got) == want and got


def test_structured_sort_applies_with_filter_text(model: Model) -> None:
    sort = pb.SessionSort(field=pb.SESSION_SORT_FIELD_NAME, direction=pb.SORT_DIRECTION_DESCENDING)
    got = ids_of(listing(model.org.stubs, sort=sort, filter_text='tags:"all"'))
    assert got == reference_order(model, model.org.sessions, [("name", True)])


def test_sort_and_order_by_together_are_refused(model: Model) -> None:
    sort = pb.SessionSort(field=pb.SESSION_SORT_FIELD_NAME)
    failed = rpc_error(lambda: listing(model.org.stubs, sort=sort, order_by="name"))
    assert failed.code is grpc.StatusCode.INVALID_ARGUMENT
    assert "not both" in failed.fields["order_by"]


def test_a_token_is_bound_to_its_filter_and_order(model: Model) -> None:
    batches = listing(model.org.stubs, filter_text='tags:"all"', order_by="name", page_size=3)
    token = batches[0].next_page_token
    for other in (
        {"filter_text": 'tags:"even"', "order_by": "name"},
        {"filter_text": 'tags:"all"', "order_by": "name desc"},
        {"filter_text": 'tags:"all"', "order_by": "name, created"},
        {"filter_text": 'tags:"all"'},
    ):
        failed = rpc_error(lambda o=other: listing(model.org.stubs, page_token=token, **o))  # type: ignore[misc]
        assert failed.reason == "INVALID_PAGE_TOKEN", other


def test_created_compares_exactly_with_nanosecond_literals(model: Model) -> None:
    first = min(model.org.sessions, key=lambda s: model.value(s, "created"))
    ns = model.value(first, "created")
    at = listing(model.org.stubs, filter_text=f"created = {rfc3339(ns)}")
    assert first.session_id in ids_of(at)
    assert not ids_of(listing(model.org.stubs, filter_text=f"created = {rfc3339(ns + 1)}"))
    later = ids_of(listing(model.org.stubs, filter_text=f"created > {rfc3339(ns + 1)}"))
    assert first.session_id not in later and len(later) >= N - 1 - sum(
        model.value(s, "created") == ns for s in model.org.sessions
    )


def test_description_wildcards(model: Model) -> None:
    stubs = model.org.stubs
    created = stubs.sessions.CreateSession(
        pb.CreateSessionRequest(name="described", description="Flight over the *lake*")
    ).session
    try:
        for text, found in [
            ('description = "Flight*"', True),
            ('description = "*\\*lake\\**"', True),
            ('description = "*lake"', False),
            ('description != "*lake"', True),
            ('description = "flight*"', False),
        ]:
            got = ids_of(listing(stubs, filter_text=f'name = "described" AND {text}'))
            assert (created.session_id in got) is found, text
    finally:
        stubs.sessions.DeleteSession(pb.DeleteSessionRequest(session_id=created.session_id))


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, field, words",
    [
        ("custom_fields.score >", "filter_text", ["1:22", "expected", "a number"]),
        ('(tags:"a"', "filter_text", ["1:10", "')'"]),
        (
            'tags:"a" AND\n  bogus = 1',
            "filter_text",
            ["2:3", "unknown field 'bogus'", "start_time"],
        ),
        ('metadata.robot = "x"', "filter_text", ["metadata is not filterable"]),
        ("custom_fields.nope = 1", "filter_text", ["'nope' is not a custom field", "score"]),
        ("custom_fields.draft = 1", "filter_text", ["'draft' is creating, not ready"]),
        ("metrics.nope > 1", "filter_text", ["'nope' is not a metric"]),
        ("custom_fields.kind = delta", "filter_text", ["alpha, beta, gamma"]),
        ("custom_fields.kind > alpha", "filter_text", ["does not apply"]),
        ("custom_fields.flag IN (true)", "filter_text", ["IN does not apply"]),
        ('tags = "a"', "filter_text", ["tags:"]),
        ("start_time > 5", "filter_text", ["RFC 3339"]),
        ("start_time > 2026-02-30T00:00:00Z", "filter_text", ["not a valid timestamp"]),
        ("duration > 5m", "filter_text", ["1:"]),
        ("duration > 5", "filter_text", ["duration"]),
        ("name", "filter_text", ["alone is not a condition"]),
        ('name = "a" ) OR', "filter_text", ["1:12"]),
    ],
)
def test_bad_filters_say_where_and_what(
    model: Model, text: str, field: str, words: list[str]
) -> None:
    failed = rpc_error(lambda: listing(model.org.stubs, filter_text=text))
    assert failed.code is grpc.StatusCode.INVALID_ARGUMENT
    description = failed.fields[field]
    for word in words:
        assert word in description, (word, description)


@pytest.mark.parametrize(
    "text, words",
    [
        ("tags", ["cannot order by tags"]),
        ("name sideways", ["1:6", "asc or desc"]),
        ("name, name", ["named twice"]),
        ("metadata.x", ["metadata is not filterable"]),
        (", ".join(["name"] * 9), ["at most 8"]),
    ],
)
def test_bad_orders_say_what(model: Model, text: str, words: list[str]) -> None:
    failed = rpc_error(lambda: listing(model.org.stubs, order_by=text))
    assert failed.code is grpc.StatusCode.INVALID_ARGUMENT
    for word in words:
        assert word in failed.fields["order_by"], (word, failed.fields)


def test_limits_are_enforced_before_any_work() -> None:
    with pytest.raises(InvalidArgument, match="at most 4,096"):
        parse_filter("name = 1 " * 1000)
    with pytest.raises(InvalidArgument, match="levels"):
        parse_filter("NOT (" * MAX_FILTER_DEPTH + "name = 1" + ")" * MAX_FILTER_DEPTH)
    # Parentheses alone add no level: only AND, OR and NOT do.
    deepest = "NOT (" * (MAX_FILTER_DEPTH - 1) + "(((name = 1)))" + ")" * (MAX_FILTER_DEPTH - 1)
    assert parse_filter(deepest) is not None
    with pytest.raises(InvalidArgument, match="terms"):
        parse_filter(" OR ".join(["name = 1"] * (MAX_FILTER_TERMS + 1)))
    assert parse_filter(" OR ".join(["name = 1"] * MAX_FILTER_TERMS)) is not None
    assert len("name = 1 " * 1000) > MAX_FILTER_CHARS


HOSTILE = [
    "(" * 2000 + "name = 1" + ")" * 2000,
    "NOT " * 1000 + "name = 1",
    "-" * 3000 + "name = 1",
    'name = "' + "x" * 4000 + '"',
    'name = "\'; DROP TABLE sessions; --"',
    'name = "a\\" OR 1=1 --"',
    'custom_fields."score) OR (1=1" > 1',
    'metrics."x\'; SELECT pg_sleep(10); --" > 1',
    'name = "\x00"',
    'name = "\U0010ffff\ufffe\u202e"',
    'name = "%_\\\\"',
    "custom_fields.score > 1e999",
    "custom_fields.score > -1e999",
    "custom_fields.score IN (" + ", ".join(["1"] * 1200) + ")",
    "start_time > 9999-12-31T23:59:59.999999999Z",
    "start_time < 0001-01-01T00:00:00Z",
    "created > 9999-12-31T23:59:59.999999999+00:00",
    "created < 0001-01-01T00:00:00.000000001Z",
    "duration > 99999999999999999999s",
    "duration > 0.0000000001s",
    "custom_fields.seen > 9999-12-31T23:59:59.999999999Z",
    "has(" * 50,
    '\u00a0name\u2003=\u3000"x"',
    'tags:"' + "\U0001f600" * 2000 + '"',
    "name = 1 AND " * 64 + "name = 1",
]


@pytest.mark.parametrize("text", HOSTILE, ids=[str(i) for i in range(len(HOSTILE))])
def test_hostile_filters_never_reach_internal(model: Model, text: str) -> None:
    try:
        listing(model.org.stubs, filter_text=text, order_by="metrics.speed desc, name")
    except grpc.RpcError as error:
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, (text[:80], error.details())


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=st.text(max_size=200))
def test_arbitrary_text_is_a_result_or_invalid_argument(model: Model, text: str) -> None:
    text = "".join(c for c in text if not 0xD800 <= ord(c) <= 0xDFFF)
    try:
        listing(model.org.stubs, filter_text=text, order_by=text[:50])
    except grpc.RpcError as error:
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, (text, error.details())


# --- org isolation ----------------------------------------------------------------------------


def test_another_org_sees_none_of_these_sessions_or_names(
    model: Model, database_url: str, grpc_target: str
) -> None:
    other = create_identity(database_url, "filter-other")
    stubs = Stubs(grpc_target, other.api_key, other.org_id)
    try:
        assert ids_of(listing(stubs, filter_text='tags:"all"')) == []
        failed = rpc_error(lambda: listing(stubs, filter_text="custom_fields.score > 0"))
        assert "not a custom field" in failed.fields["filter_text"]
        failed = rpc_error(lambda: listing(stubs, order_by="metrics.speed"))
        assert "not a metric" in failed.fields["order_by"]
    finally:
        stubs.close()
