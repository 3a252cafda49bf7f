"""Session metrics: one value per (metric name, session), upserted; definitions created on first
use; the device explicit, explicitly none, or inferred; per-entry failures reported."""

from __future__ import annotations

import math
import threading

import grpc
import pytest

from flightlog.v1 import catalog_service_pb2 as catalog_pb
from flightlog.v1 import session_service_pb2 as pb
from tests.rpc.factories import (
    add_files,
    check_paging,
    drain,
    get_session,
    make_dataset,
    make_device,
    make_session,
    register_file,
    unique,
)
from tests.support import Identity, Stubs, rpc_error


def entries(*pairs: tuple[str, float]) -> list[pb.MetricEntry]:
    return [pb.MetricEntry(name=name, value=value) for name, value in pairs]


def publish(
    stubs: Stubs,
    session_id: str,
    *pairs: tuple[str, float],
    device_id: str | None = None,
    no_device: bool = False,
) -> pb.PublishSessionMetricsResponse:
    """Publishes to ``device_id``, to no device, or (neither given) to the one inferred."""
    request = pb.PublishSessionMetricsRequest(session_id=session_id, metrics=entries(*pairs))
    if device_id is not None:
        request.device_id = device_id
    if no_device:
        request.no_device = True
    return stubs.sessions.PublishSessionMetrics(request)


def list_metrics(stubs: Stubs, session_id: str) -> list[pb.Metric]:
    metrics, _ = drain(
        stubs.sessions.ListSessionMetrics(pb.ListSessionMetricsRequest(session_id=session_id)),
        "metrics",
    )
    return metrics


@pytest.fixture
def name() -> str:
    """A unique metric name: definitions are shared by the whole org."""
    return unique("cpu.usage_max.")


# --- the device ----------------------------------------------------------------------------------


def test_publish_infers_the_only_attached_device(
    stubs: Stubs, name: str, identity: Identity
) -> None:
    device = make_device(stubs)
    session = make_session(stubs, device_ids=[device.device_id])

    result = publish(stubs, session.session_id, (name, 87.5))

    [metric] = result.succeeded
    assert list(result.failed) == []
    assert metric.metric_id.startswith("mt_")
    assert (metric.name, metric.value, metric.session_id) == (name, 87.5, session.session_id)
    assert metric.device_id == device.device_id
    assert metric.published_by == identity.principal_id
    assert metric.published.seconds > 0
    assert list_metrics(stubs, session.session_id) == [metric]


def test_publish_without_a_device_is_invalid_when_none_is_attached(stubs: Stubs, name: str) -> None:
    session = make_session(stubs)

    failure = rpc_error(lambda: publish(stubs, session.session_id, (name, 1.0)))

    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "0 devices are attached" in failure.fields["device_id"]
    assert list_metrics(stubs, session.session_id) == []


def test_publish_without_a_device_is_invalid_when_two_are_attached(stubs: Stubs, name: str) -> None:
    first, second = make_device(stubs), make_device(stubs)
    session = make_session(stubs, device_ids=[first.device_id, second.device_id])

    failure = rpc_error(lambda: publish(stubs, session.session_id, (name, 1.0)))

    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "2 devices are attached" in failure.fields["device_id"]
    assert first.device_id in failure.fields["device_id"]
    assert list_metrics(stubs, session.session_id) == []


def test_an_explicit_device_overrides_inference(stubs: Stubs, name: str) -> None:
    first, second, unattached = make_device(stubs), make_device(stubs), make_device(stubs)
    session = make_session(stubs, device_ids=[first.device_id, second.device_id])

    by_attached = publish(stubs, session.session_id, (name, 1.0), device_id=second.device_id)
    by_other = publish(stubs, session.session_id, (name, 2.0), device_id=unattached.device_id)

    assert by_attached.succeeded[0].device_id == second.device_id
    assert by_other.succeeded[0].device_id == unattached.device_id
    [stored] = list_metrics(stubs, session.session_id)
    assert (stored.value, stored.device_id) == (2.0, unattached.device_id)


def test_an_unknown_or_foreign_explicit_device_is_device_not_found(
    stubs: Stubs, other_stubs: Stubs, name: str
) -> None:
    foreign = make_device(other_stubs)
    session = make_session(stubs)

    unknown = rpc_error(
        lambda: publish(stubs, session.session_id, (name, 1.0), device_id="dv-never-created")
    )
    other_orgs = rpc_error(
        lambda: publish(stubs, session.session_id, (name, 1.0), device_id=foreign.device_id)
    )

    for failure in (unknown, other_orgs):
        assert failure.code == grpc.StatusCode.NOT_FOUND
        assert failure.reason == "DEVICE_NOT_FOUND"
    assert list_metrics(stubs, session.session_id) == []


def test_no_device_records_values_without_a_device(stubs: Stubs, name: str) -> None:
    first, second = make_device(stubs), make_device(stubs)
    session = make_session(stubs, device_ids=[first.device_id, second.device_id])

    result = publish(stubs, session.session_id, (name, 3.0), no_device=True)

    assert not result.succeeded[0].HasField("device_id")
    assert not list_metrics(stubs, session.session_id)[0].HasField("device_id")


# --- entries -------------------------------------------------------------------------------------


def test_bad_names_and_non_finite_values_fail_alone_while_the_others_are_recorded(
    stubs: Stubs, name: str
) -> None:
    session = make_session(stubs)

    result = publish(
        stubs,
        session.session_id,
        (f"{name}.ok", 1.0),
        ("9starts-with-a-digit", 2.0),
        (f"{name}.nan", math.nan),
        (f"{name}.inf", -math.inf),
        ("has space", 3.0),
        (f"{name}.also_ok", 4.0),
        no_device=True,
    )

    assert [(m.name, m.value) for m in result.succeeded] == [
        (f"{name}.ok", 1.0),
        (f"{name}.also_ok", 4.0),
    ]
    assert [f.index for f in result.failed] == [1, 2, 3, 4]
    assert result.failed[0].entry.name == "9starts-with-a-digit"
    assert "name" in result.failed[0].reason
    assert math.isnan(result.failed[1].entry.value)
    assert "finite" in result.failed[1].reason
    assert "finite" in result.failed[2].reason
    assert [m.name for m in list_metrics(stubs, session.session_id)] == [
        f"{name}.also_ok",
        f"{name}.ok",
    ]


def test_a_batch_where_every_entry_fails_records_nothing_and_changes_nothing(
    stubs: Stubs,
) -> None:
    session = make_session(stubs)

    result = publish(stubs, session.session_id, ("bad name", 1.0), no_device=True)

    assert list(result.succeeded) == []
    assert [f.index for f in result.failed] == [0]
    assert get_session(stubs, session.session_id).revision == session.revision


def test_republishing_a_name_replaces_its_value(stubs: Stubs, name: str) -> None:
    session = make_session(stubs)
    first = publish(stubs, session.session_id, (name, 1.0), no_device=True).succeeded[0]

    second = publish(stubs, session.session_id, (name, 2.0), no_device=True).succeeded[0]

    assert second.metric_id == first.metric_id
    assert second.value == 2.0
    assert second.published.ToNanoseconds() >= first.published.ToNanoseconds()
    assert [(m.name, m.value) for m in list_metrics(stubs, session.session_id)] == [(name, 2.0)]


def test_a_name_repeated_in_one_batch_keeps_its_last_value(stubs: Stubs, name: str) -> None:
    session = make_session(stubs)

    result = publish(
        stubs, session.session_id, (name, 1.0), (f"{name}.other", 5.0), (name, 3.0), no_device=True
    )

    assert [(m.name, m.value) for m in result.succeeded] == [(name, 3.0), (f"{name}.other", 5.0)]
    assert [(m.name, m.value) for m in list_metrics(stubs, session.session_id)] == [
        (name, 3.0),
        (f"{name}.other", 5.0),
    ]


def test_metric_definitions_are_created_once_and_shared_by_sessions(
    stubs: Stubs, name: str
) -> None:
    one, two = make_session(stubs), make_session(stubs)

    first = publish(stubs, one.session_id, (name, 1.0), no_device=True).succeeded[0]
    second = publish(stubs, two.session_id, (name, 2.0), no_device=True).succeeded[0]

    assert first.metric_id == second.metric_id
    assert [m.value for m in list_metrics(stubs, one.session_id)] == [1.0]
    assert [m.value for m in list_metrics(stubs, two.session_id)] == [2.0]


def test_concurrent_first_publishes_of_the_same_names_share_one_definition_each(
    stubs: Stubs, name: str
) -> None:
    names = [f"{name}.{i}" for i in range(5)]
    sessions = [make_session(stubs) for _ in range(8)]
    results: dict[int, pb.PublishSessionMetricsResponse] = {}
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        # Each thread names the new metrics in another order.
        ordered = names[i % len(names) :] + names[: i % len(names)]
        try:
            pairs = [(n, float(i)) for n in (ordered if i % 2 else ordered[::-1])]
            results[i] = publish(stubs, sessions[i].session_id, *pairs, no_device=True)
        except BaseException as error:  # noqa: BLE001 - re-raised by the test thread below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(sessions))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    ids = {(m.name, m.metric_id) for r in results.values() for m in r.succeeded}
    assert len(ids) == len(names)
    for i, session in enumerate(sessions):
        assert [(m.name, m.value) for m in list_metrics(stubs, session.session_id)] == [
            (n, float(i)) for n in names
        ]


def test_metric_records_carry_the_sessions_current_bounds(stubs: Stubs, name: str) -> None:
    dataset: catalog_pb.Dataset = make_dataset(stubs)
    early = register_file(stubs, dataset.dataset_id, [("/a", [(100, 200)])])
    late = register_file(stubs, dataset.dataset_id, [("/a", [(300, 400)])])
    unbounded = make_session(stubs)
    session = add_files(stubs, make_session(stubs).session_id, early.file_id)

    without = publish(stubs, unbounded.session_id, (name, 1.0), no_device=True).succeeded[0]
    published = publish(stubs, session.session_id, (name, 1.0), no_device=True).succeeded[0]
    add_files(stubs, session.session_id, late.file_id)

    assert not without.HasField("min_timestamp_ns")
    assert not without.HasField("max_timestamp_ns")
    assert (published.min_timestamp_ns, published.max_timestamp_ns) == (100, 200)
    [listed] = list_metrics(stubs, session.session_id)
    assert (listed.min_timestamp_ns, listed.max_timestamp_ns) == (100, 400)


def test_publishing_records_a_change_without_touching_modified(stubs: Stubs, name: str) -> None:
    session = make_session(stubs)

    publish(stubs, session.session_id, (name, 1.0), no_device=True)

    after = get_session(stubs, session.session_id)
    assert after.revision > session.revision
    assert after.modified == session.modified


def test_list_session_metrics_is_ordered_by_name_and_resumable(stubs: Stubs, name: str) -> None:
    session = make_session(stubs)
    names = [f"{name}.{suffix}" for suffix in ("d", "a", "c", "e", "b")]
    publish(stubs, session.session_id, *((n, 1.0) for n in names), no_device=True)

    check_paging(
        stubs.sessions.ListSessionMetrics,
        pb.ListSessionMetricsRequest,
        "metrics",
        lambda m: m.name,
        sorted(names),
        session_id=session.session_id,
    )


def test_an_empty_or_oversized_batch_is_invalid(stubs: Stubs, name: str) -> None:
    session = make_session(stubs)
    too_many = [(f"{name}.{i}", float(i)) for i in range(1_001)]

    empty = rpc_error(lambda: publish(stubs, session.session_id, no_device=True))
    oversized = rpc_error(lambda: publish(stubs, session.session_id, *too_many, no_device=True))

    assert empty.code == oversized.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "metrics" in empty.fields
    assert "metrics" in oversized.fields


def test_a_full_batch_of_1000_is_recorded(stubs: Stubs, name: str) -> None:
    session = make_session(stubs)
    batch = [(f"{name}.{i:04d}", float(i)) for i in range(1_000)]

    result = publish(stubs, session.session_id, *batch, no_device=True)

    assert len(result.succeeded) == 1_000
    assert len(list_metrics(stubs, session.session_id)) == 1_000


# --- unknown sessions and tenancy ----------------------------------------------------------------


def test_metrics_of_an_unknown_session_are_session_not_found(stubs: Stubs, name: str) -> None:
    for call in (
        lambda: publish(stubs, "ss_doesnotexist", (name, 1.0), no_device=True),
        lambda: list_metrics(stubs, "ss_doesnotexist"),
    ):
        failure = rpc_error(call)
        assert failure.code == grpc.StatusCode.NOT_FOUND
        assert failure.reason == "SESSION_NOT_FOUND"


def test_another_org_can_neither_publish_nor_list_this_orgs_metrics(
    stubs: Stubs, other_stubs: Stubs, name: str
) -> None:
    session = make_session(stubs)
    publish(stubs, session.session_id, (name, 1.0), no_device=True)
    before = get_session(stubs, session.session_id)

    for call in (
        lambda: publish(other_stubs, session.session_id, (name, 2.0), no_device=True),
        lambda: list_metrics(other_stubs, session.session_id),
    ):
        failure = rpc_error(call)
        assert failure.code == grpc.StatusCode.NOT_FOUND
        assert failure.reason == "SESSION_NOT_FOUND"
    assert [m.value for m in list_metrics(stubs, session.session_id)] == [1.0]
    assert get_session(stubs, session.session_id).revision == before.revision
