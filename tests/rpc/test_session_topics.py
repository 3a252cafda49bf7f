"""The topics reachable from a session: range-filtered against its window by closed-interval
overlap of extents projected with their file's offset, one row per topic identity."""

from __future__ import annotations

import grpc
import pytest

from flightlog.v1 import catalog_service_pb2 as catalog_pb
from flightlog.v1 import common_pb2
from flightlog.v1 import session_service_pb2 as pb
from tests.rpc.factories import (
    TopicSpec,
    add_files,
    check_paging,
    drain,
    make_dataset,
    make_session,
    partition,
    register_file,
    unique,
)
from tests.support import Stubs, rpc_error

# Every session here has the window [1_000, 2_000]: its files are added clipped to it, so their
# own extents do not move the bounds and can be placed inside, across or outside the window.
WINDOW = (1_000, 2_000)


def list_topics(stubs: Stubs, session_id: str) -> list[common_pb2.Topic]:
    topics, _ = drain(
        stubs.sessions.ListSessionTopics(pb.ListSessionTopicsRequest(session_id=session_id)),
        "topics",
    )
    return topics


def get_topic(stubs: Stubs, session_id: str, name: str) -> common_pb2.Topic:
    request = pb.GetSessionTopicRequest(session_id=session_id, topic_name=name)
    return stubs.sessions.GetSessionTopic(request).topic


def session_over(
    stubs: Stubs, dataset: catalog_pb.Dataset, *files: tuple[list[TopicSpec], int]
) -> pb.Session:
    """A session with the window WINDOW over files given as (topics, offset)."""
    session = make_session(stubs)
    registered = [
        register_file(stubs, dataset.dataset_id, topics, offset) for topics, offset in files
    ]
    session = add_files(stubs, session.session_id, *(f.file_id for f in registered), window=WINDOW)
    assert (session.min_timestamp_ns, session.max_timestamp_ns) == WINDOW
    return session


@pytest.fixture
def dataset(stubs: Stubs) -> catalog_pb.Dataset:
    return make_dataset(stubs)


@pytest.fixture
def prefix() -> str:
    """A unique topic-name prefix: topic identities are shared by the whole org."""
    return unique("/t")


def test_topics_with_an_extent_inside_or_touching_the_window_are_listed(
    stubs: Stubs, dataset: catalog_pb.Dataset, prefix: str
) -> None:
    session = session_over(
        stubs,
        dataset,
        (
            [
                (f"{prefix}/inside", [(1_200, 1_300)]),
                (f"{prefix}/spanning", [(0, 5_000)]),
                (f"{prefix}/touching_start", [(500, 1_000)]),
                (f"{prefix}/touching_end", [(2_000, 2_500)]),
                (f"{prefix}/before", [(0, 999)]),
                (f"{prefix}/after", [(2_001, 3_000)]),
                (f"{prefix}/late_extent_only", [(0, 10), (1_500, 1_600)]),
                (f"{prefix}/no_extents", []),
            ],
            0,
        ),
    )

    names = [t.name for t in list_topics(stubs, session.session_id)]

    assert names == [
        f"{prefix}/inside",
        f"{prefix}/late_extent_only",
        f"{prefix}/spanning",
        f"{prefix}/touching_end",
        f"{prefix}/touching_start",
    ]


def test_the_file_offset_is_applied_before_comparing_with_the_window(
    stubs: Stubs, dataset: catalog_pb.Dataset, prefix: str
) -> None:
    session = session_over(
        stubs,
        dataset,
        ([(f"{prefix}/shifted_in", [(0, 100)])], 1_500),
        ([(f"{prefix}/shifted_out", [(1_500, 1_600)])], 1_000),
        ([(f"{prefix}/shifted_to_the_edge", [(3_000, 4_000)])], -2_000),
    )

    names = [t.name for t in list_topics(stubs, session.session_id)]

    assert names == [f"{prefix}/shifted_in", f"{prefix}/shifted_to_the_edge"]


def test_a_topic_in_several_files_and_partitions_appears_once(
    stubs: Stubs, dataset: catalog_pb.Dataset, prefix: str
) -> None:
    odom = (f"{prefix}/odom", [(1_100, 1_200), (1_300, 1_400), (1_500, 1_600)])
    session = session_over(stubs, dataset, ([odom], 0), ([odom], 0), ([odom], 100))

    topics = list_topics(stubs, session.session_id)

    assert [t.name for t in topics] == [f"{prefix}/odom"]
    assert topics[0].topic_id.startswith("ti_")


def test_topics_are_ordered_by_name_then_topic_id_and_carry_their_schema(
    stubs: Stubs, dataset: catalog_pb.Dataset, prefix: str
) -> None:
    extent = [(1_100, 1_200)]
    session = session_over(
        stubs,
        dataset,
        (
            [
                partition(f"{prefix}/b", extent, "pkg/B", "cdr"),
                partition(f"{prefix}/a", extent, "pkg/A2", "json"),
                partition(f"{prefix}/a", extent, "pkg/A1", "cdr"),
                partition(f"{prefix}/c", extent),
            ],
            0,
        ),
    )

    topics = list_topics(stubs, session.session_id)

    assert [(t.name, t.topic_id) for t in topics] == sorted((t.name, t.topic_id) for t in topics)
    assert [t.name for t in topics] == [f"{prefix}/a", f"{prefix}/a", f"{prefix}/b", f"{prefix}/c"]
    b = topics[2]
    assert (b.schema_name, b.message_encoding) == ("pkg/B", "cdr")
    assert (topics[3].schema_name, topics[3].message_encoding) == ("", "")
    check_paging(
        stubs.sessions.ListSessionTopics,
        pb.ListSessionTopicsRequest,
        "topics",
        lambda t: t.topic_id,
        [t.topic_id for t in topics],
        session_id=session.session_id,
    )


def test_a_session_without_bounds_has_no_topics(
    stubs: Stubs, dataset: catalog_pb.Dataset, prefix: str
) -> None:
    silent = register_file(stubs, dataset.dataset_id, [(f"{prefix}/silent", [])])
    session = add_files(stubs, make_session(stubs).session_id, silent.file_id)
    assert not session.HasField("min_timestamp_ns")

    assert list_topics(stubs, session.session_id) == []
    assert list_topics(stubs, make_session(stubs).session_id) == []
    failure = rpc_error(lambda: get_topic(stubs, session.session_id, f"{prefix}/silent"))
    assert failure.reason == "TOPIC_NOT_FOUND"


def test_only_files_contributing_to_the_session_count(
    stubs: Stubs, dataset: catalog_pb.Dataset, prefix: str
) -> None:
    register_file(stubs, dataset.dataset_id, [(f"{prefix}/elsewhere", [(1_100, 1_200)])])
    removed = register_file(stubs, dataset.dataset_id, [(f"{prefix}/removed", [(1_100, 1_200)])])
    session = session_over(stubs, dataset, ([(f"{prefix}/here", [(1_100, 1_200)])], 0))
    add_files(stubs, session.session_id, removed.file_id, window=WINDOW)
    stubs.sessions.RemoveSessionFiles(
        pb.RemoveSessionFilesRequest(session_id=session.session_id, file_ids=[removed.file_id])
    )

    assert [t.name for t in list_topics(stubs, session.session_id)] == [f"{prefix}/here"]


# --- GetSessionTopic -----------------------------------------------------------------------------


def test_get_session_topic_returns_the_reachable_topic_of_that_name(
    stubs: Stubs, dataset: catalog_pb.Dataset, prefix: str
) -> None:
    session = session_over(
        stubs,
        dataset,
        ([partition(f"{prefix}/imu", [(1_100, 1_200)], "pkg/Imu", "cdr")], 0),
    )

    topic = get_topic(stubs, session.session_id, f"{prefix}/imu")

    assert (topic.name, topic.schema_name, topic.message_encoding) == (
        f"{prefix}/imu",
        "pkg/Imu",
        "cdr",
    )
    assert [topic] == list_topics(stubs, session.session_id)


def test_get_session_topic_picks_the_smallest_id_among_reachable_identities_of_the_name(
    stubs: Stubs, dataset: catalog_pb.Dataset, prefix: str
) -> None:
    name = f"{prefix}/camera"
    both = session_over(
        stubs,
        dataset,
        ([partition(name, [(1_100, 1_200)], "v1"), partition(name, [(1_100, 1_200)], "v2")], 0),
    )
    ids = sorted(t.topic_id for t in list_topics(stubs, both.session_id))
    assert len(ids) == 2
    schema_of = {t.topic_id: t.schema_name for t in list_topics(stubs, both.session_id)}
    larger_schema = schema_of[ids[1]]
    only_larger = session_over(
        stubs,
        dataset,
        (
            [
                partition(name, [(1_100, 1_200)], larger_schema),
                partition(name, [(0, 10)], schema_of[ids[0]]),
            ],
            0,
        ),
    )

    assert get_topic(stubs, both.session_id, name).topic_id == ids[0]
    assert get_topic(stubs, only_larger.session_id, name).topic_id == ids[1]


def test_get_session_topic_outside_the_window_is_topic_not_found(
    stubs: Stubs, dataset: catalog_pb.Dataset, prefix: str
) -> None:
    session = session_over(stubs, dataset, ([(f"{prefix}/late", [(2_001, 2_100)])], 0))

    late = rpc_error(lambda: get_topic(stubs, session.session_id, f"{prefix}/late"))
    unknown = rpc_error(lambda: get_topic(stubs, session.session_id, f"{prefix}/unknown"))

    assert (late.code, late.reason) == (grpc.StatusCode.NOT_FOUND, "TOPIC_NOT_FOUND")
    assert late.metadata["ids"] == f"{prefix}/late"
    assert (unknown.code, unknown.reason) == (grpc.StatusCode.NOT_FOUND, "TOPIC_NOT_FOUND")


def test_get_session_topic_requires_a_name(stubs: Stubs) -> None:
    session = make_session(stubs)
    failure = rpc_error(lambda: get_topic(stubs, session.session_id, ""))
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "topic_name" in failure.fields


# --- unknown sessions and tenancy ----------------------------------------------------------------


def test_topics_of_an_unknown_session_are_session_not_found(stubs: Stubs) -> None:
    for call in (
        lambda: list_topics(stubs, "ss_doesnotexist"),
        lambda: get_topic(stubs, "ss_doesnotexist", "/odom"),
    ):
        failure = rpc_error(call)
        assert failure.code == grpc.StatusCode.NOT_FOUND
        assert failure.reason == "SESSION_NOT_FOUND"


def test_another_org_cannot_see_the_sessions_topics(
    stubs: Stubs, other_stubs: Stubs, dataset: catalog_pb.Dataset, prefix: str
) -> None:
    session = session_over(stubs, dataset, ([(f"{prefix}/private", [(1_100, 1_200)])], 0))

    for call in (
        lambda: list_topics(other_stubs, session.session_id),
        lambda: get_topic(other_stubs, session.session_id, f"{prefix}/private"),
    ):
        failure = rpc_error(call)
        assert failure.code == grpc.StatusCode.NOT_FOUND
        assert failure.reason == "SESSION_NOT_FOUND"
