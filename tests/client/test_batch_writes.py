"""Batch writes through the client against a real server: Session.create_many and get_many,
flightlog.metrics.publish across sessions, and Session.update carrying metrics."""

from __future__ import annotations

import grpc
import pytest

from flightlog import (
    ConflictError,
    CreateSessionRequest,
    CustomFieldChangeset,
    FlightlogClient,
    InvalidRequestError,
    MetadataChangeset,
    MetricEntry,
    NotFoundError,
    Session,
    custom_fields,
    metrics,
)
from flightlog._batching import MAX_BATCH_BYTES, field_size
from flightlog.v1 import session_service_pb2 as pb
from tests.client.conftest import EnsureDevice
from tests.rpc.factories import unique


def _names(sessions: list[Session]) -> list[str | None]:
    return [s.name for s in sessions]


def _tagged(client: FlightlogClient, tag: str) -> list[Session]:
    return list(Session.query(tags_all=[tag], client=client))


# create_many ----------------------------------------------------------------------------------


def test_create_many_returns_the_sessions_in_input_order(
    flightlog_client: FlightlogClient, ensure_device: EnsureDevice
) -> None:
    tag = unique("order")
    device = ensure_device(unique("dv"))
    specs: list[CreateSessionRequest | dict[str, object]] = []
    for i in range(7):
        if i % 2:
            specs.append({"name": f"{tag}-{i}", "tags": [tag], "metadata": {"i": i}})
        else:
            specs.append(CreateSessionRequest(name=f"{tag}-{i}", tags=[tag], device_ids=[device]))
    seen: list[int] = []

    sessions = Session.create_many(
        specs, client=flightlog_client, on_batch=lambda batch: seen.append(len(batch))
    )

    assert _names(sessions) == [f"{tag}-{i}" for i in range(7)]
    assert seen == [7]
    assert sessions[1].metadata == {"i": 1}
    assert list(sessions[0].list_devices()) == [device]
    assert len({s.session_id for s in sessions}) == 7
    assert len(_tagged(flightlog_client, tag)) == 7


def test_create_many_of_nothing_makes_no_call(flightlog_client: FlightlogClient) -> None:
    assert Session.create_many([], client=flightlog_client) == []


def test_a_retried_batch_returns_the_sessions_it_created_and_creates_only_the_new_ones(
    flightlog_client: FlightlogClient,
) -> None:
    tag = unique("retry")
    first = [
        CreateSessionRequest(name=f"{tag}-{i}", tags=[tag], request_id=f"{tag}-{i}")
        for i in range(3)
    ]
    created = Session.create_many(first, client=flightlog_client)

    # The same batch again (its answer lost, say), now with two more sessions in the middle.
    again = [
        first[0],
        CreateSessionRequest(name=f"{tag}-new-a", tags=[tag], request_id=f"{tag}-new-a"),
        first[1],
        CreateSessionRequest(name=f"{tag}-new-b", tags=[tag], request_id=f"{tag}-new-b"),
        first[2],
    ]
    replayed = Session.create_many(again, client=flightlog_client)

    assert [s.session_id for s in (replayed[0], replayed[2], replayed[4])] == [
        s.session_id for s in created
    ]
    assert _names(replayed) == [f"{tag}-0", f"{tag}-new-a", f"{tag}-1", f"{tag}-new-b", f"{tag}-2"]
    assert len(_tagged(flightlog_client, tag)) == 5  # no duplicate


def test_generated_request_ids_make_every_session_distinct(
    flightlog_client: FlightlogClient,
) -> None:
    tag = unique("same")
    same = {"name": "twin", "tags": [tag]}
    sessions = Session.create_many([same, same, same], client=flightlog_client)
    assert len({s.session_id for s in sessions}) == 3


def test_a_request_id_reused_with_another_session_is_a_conflict(
    flightlog_client: FlightlogClient,
) -> None:
    key = unique("key")
    Session.create_many([CreateSessionRequest(name="a", request_id=key)], client=flightlog_client)
    with pytest.raises(ConflictError) as caught:
        Session.create_many(
            [CreateSessionRequest(name="b", request_id=key)], client=flightlog_client
        )
    assert caught.value.reason == "REQUEST_ID_REUSED"


def _big_session(tag: str, i: int) -> CreateSessionRequest:
    """A session of about 60 KiB (metadata is limited to 64 KiB a session)."""
    return CreateSessionRequest(
        name=f"{tag}-{i}", tags=[tag], metadata={"blob": "x" * 60_000}, request_id=f"{tag}-{i}"
    )


def test_sessions_over_one_mebibyte_are_split_into_calls_under_the_limit(
    flightlog_client: FlightlogClient,
) -> None:
    tag = unique("big")
    specs = [_big_session(tag, i) for i in range(20)]  # about 1.2 MiB in all
    whole = pb.BatchCreateSessionsRequest(requests=[s.to_proto() for s in specs])
    assert whole.ByteSize() > 1 << 20
    with pytest.raises(grpc.RpcError) as refused:  # one call would be refused
        flightlog_client.sessions.BatchCreateSessions(whole)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    batch_sizes: list[int] = []
    sessions = Session.create_many(
        specs, client=flightlog_client, on_batch=lambda batch: batch_sizes.append(len(batch))
    )

    assert _names(sessions) == [f"{tag}-{i}" for i in range(20)]
    assert len(batch_sizes) == 2 and sum(batch_sizes) == 20
    per_session = field_size(specs[0].to_proto().ByteSize())
    assert max(batch_sizes) * per_session <= MAX_BATCH_BYTES
    assert len(_tagged(flightlog_client, tag)) == 20


def test_a_bad_session_fails_its_batch_only_and_names_its_input_index(
    flightlog_client: FlightlogClient,
) -> None:
    tag = unique("bad")
    specs = [_big_session(tag, i) for i in range(20)]
    specs[17] = CreateSessionRequest(name="x" * 121, tags=[tag])  # in the second call

    with pytest.raises(InvalidRequestError) as caught:
        Session.create_many(specs, client=flightlog_client)

    error = caught.value
    assert error.batch_offset is not None and error.batch_size is not None
    assert error.batch_offset + error.batch_size == 20
    (field, _), *_ = error.field_violations
    assert field == f"requests[{17 - error.batch_offset}].name"
    created = _tagged(flightlog_client, tag)
    assert len(created) == error.batch_offset  # the first call's sessions, none of the second


def test_create_many_in_another_org_does_not_see_this_orgs_devices(
    flightlog_client: FlightlogClient,
    other_flightlog_client: FlightlogClient,
    ensure_device: EnsureDevice,
) -> None:
    device = ensure_device(unique("dv"))
    with pytest.raises(NotFoundError) as caught:
        Session.create_many([{"device_ids": [device]}], client=other_flightlog_client)
    assert caught.value.reason == "DEVICE_NOT_FOUND"


def test_a_spec_with_an_unknown_key_is_refused_before_any_call() -> None:
    with pytest.raises(ValueError, match="devices"):
        CreateSessionRequest.from_mapping({"devices": ["dv_a"]})
    with pytest.raises(ValueError, match="tags"):
        CreateSessionRequest.from_mapping({"tags": "one"})


# get_many -------------------------------------------------------------------------------------


def test_get_many_returns_the_sessions_in_the_order_asked(
    flightlog_client: FlightlogClient, other_flightlog_client: FlightlogClient
) -> None:
    a, b = Session.create_many([{"name": "a"}, {"name": "b"}], client=flightlog_client)

    got = Session.get_many([b.session_id, a.session_id, b.session_id], client=flightlog_client)

    assert _names(got) == ["b", "a", "b"]
    with pytest.raises(NotFoundError) as caught:
        Session.get_many([a.session_id], client=other_flightlog_client)
    assert caught.value.metadata["ids"] == a.session_id


# metrics.publish ------------------------------------------------------------------------------


def test_publish_records_values_across_sessions_in_one_call(
    flightlog_client: FlightlogClient,
) -> None:
    a, b, c = Session.create_many([{}, {}, {}], client=flightlog_client)

    result = metrics.publish(
        {
            a.session_id: [MetricEntry("speed.max", 3.0), MetricEntry("bad", float("nan"))],
            b.session_id: [MetricEntry("speed.max", 4.0)],
            c.session_id: [MetricEntry("speed.max", 5.0), MetricEntry("alt.max", 9.0)],
        },
        device_id=None,
        client=flightlog_client,
    )

    assert sorted((m.session_id, m.name, m.value) for m in result.succeeded) == sorted(
        [
            (a.session_id, "speed.max", 3.0),
            (b.session_id, "speed.max", 4.0),
            (c.session_id, "alt.max", 9.0),
            (c.session_id, "speed.max", 5.0),
        ]
    )
    assert [(f.session_id, f.index, f.entry.name) for f in result.failed] == [
        (a.session_id, 1, "bad")
    ]
    assert [(m.name, m.value) for m in c.list_metrics()] == [("alt.max", 9.0), ("speed.max", 5.0)]


def test_publish_infers_each_sessions_own_device(
    flightlog_client: FlightlogClient, ensure_device: EnsureDevice
) -> None:
    one, two = ensure_device(unique("dv")), ensure_device(unique("dv"))
    a, b = Session.create_many(
        [{"device_ids": [one]}, {"device_ids": [two]}], client=flightlog_client
    )
    result = metrics.publish(
        {a.session_id: [MetricEntry("x", 1.0)], b.session_id: [MetricEntry("x", 2.0)]},
        client=flightlog_client,
    )
    assert sorted((m.session_id, m.device_id) for m in result.succeeded) == sorted(
        [(a.session_id, one), (b.session_id, two)]
    )


def test_publish_to_another_orgs_session_is_not_found_and_records_nothing(
    flightlog_client: FlightlogClient, other_flightlog_client: FlightlogClient
) -> None:
    (mine,) = Session.create_many([{}], client=flightlog_client)
    (theirs,) = Session.create_many([{}], client=other_flightlog_client)

    with pytest.raises(NotFoundError) as caught:
        metrics.publish(
            {
                theirs.session_id: [MetricEntry("x", 1.0)],
                mine.session_id: [MetricEntry("x", 1.0)],
            },
            device_id=None,
            client=other_flightlog_client,
        )

    assert caught.value.reason == "SESSION_NOT_FOUND"
    assert theirs.list_metrics() == []  # all or nothing: the other org's own session too
    assert mine.list_metrics() == []


def test_session_publish_metrics_is_publish_for_one_session(
    flightlog_client: FlightlogClient,
) -> None:
    (session,) = Session.create_many([{}], client=flightlog_client)
    via_method = session.publish_metrics([MetricEntry("x", 1.0)], device_id=None)
    via_module = metrics.publish(
        [MetricEntry("y", 2.0)],
        session_id=session.session_id,
        device_id=None,
        client=flightlog_client,
    )
    assert [m.name for m in via_method.succeeded] == ["x"]
    assert [m.session_id for m in via_module.succeeded] == [session.session_id]
    with pytest.raises(ValueError):
        metrics.publish([MetricEntry("y", 2.0)], client=flightlog_client)


def test_publish_over_the_per_call_limits_is_sent_in_several_calls(
    flightlog_client: FlightlogClient,
) -> None:
    sessions = Session.create_many([{}] * 12, client=flightlog_client)
    entries = [MetricEntry(f"m{i}", float(i)) for i in range(1_000)]
    # 12,000 entries in all: over the 10,000 a PublishMetrics call may hold.
    result = metrics.publish(
        {s.session_id: entries for s in sessions}, device_id=None, client=flightlog_client
    )
    assert len(result.succeeded) == 12_000 and result.failed == []
    assert len(sessions[-1].list_metrics()) == 1_000


# update with metrics ---------------------------------------------------------------------------


def test_update_changes_tags_fields_and_metrics_in_one_change(
    flightlog_client: FlightlogClient,
) -> None:
    field = custom_fields.create_custom_field(
        unique("speed").replace("-", "_"), "number", client=flightlog_client
    )
    (session,) = Session.create_many([{"name": unique("upd")}], client=flightlog_client)
    before = session.revision

    session.update(
        metadata_changeset=MetadataChangeset(put_tags=["analyzed"]),
        custom_fields_changeset=CustomFieldChangeset(set_fields={field.name: 12.5}),
        metrics=[MetricEntry("cpu.usage_max", 87.2)],
        metrics_device_id=None,
    )

    assert session.tags == ["analyzed"]
    assert session.custom_fields[field.name] == 12.5
    assert [(m.name, m.value) for m in session.list_metrics()] == [("cpu.usage_max", 87.2)]
    changes = []
    for change in Session.watch(before, session_ids=[session.session_id], client=flightlog_client):
        changes.append(change.kind)
        if change.revision >= session.revision:
            break
    assert changes == ["updated"]  # one change, one new revision


def test_a_bad_metric_fails_the_whole_update(flightlog_client: FlightlogClient) -> None:
    (session,) = Session.create_many([{}], client=flightlog_client)
    with pytest.raises(InvalidRequestError) as caught:
        session.update(
            metadata_changeset=MetadataChangeset(put_tags=["analyzed"]),
            metrics=[MetricEntry("ok", 1.0), MetricEntry("bad", float("nan"))],
            metrics_device_id=None,
        )
    assert [field for field, _ in caught.value.field_violations] == ["metrics.entries[1]"]
    assert session.refresh().tags == []
    assert session.list_metrics() == []
