"""CustomFieldService through the generated stub: definitions, their lifecycle, and how sessions
show (or stop showing) a field's values as it moves through it."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2, timestamp_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flightlog.v1 import common_pb2
from flightlog.v1 import custom_field_service_pb2 as pb
from flightlog.v1 import session_service_pb2 as sessions_pb
from tests.rpc.factories import (
    check_paging,
    drain,
    first_batch,
    get_session,
    make_custom_field,
    make_session,
    new_org_stubs,
    unique,
)
from tests.support import Identity, Stubs, assert_invalid, assert_not_found, rpc_error

UNKNOWN_FIELD = "cf_" + "a" * 20
NULL = common_pb2.CustomFieldValue(null_value=struct_pb2.NULL_VALUE)


def create(stubs: Stubs, **fields: Any) -> pb.CustomField:
    """CreateCustomField for sessions with a unique name unless ``fields`` say otherwise."""
    fields.setdefault("entity_type", pb.ENTITY_TYPE_SESSION)
    fields.setdefault("name", unique("f"))
    fields.setdefault("type", pb.CUSTOM_FIELD_TYPE_STRING)
    return stubs.custom_fields.CreateCustomField(pb.CreateCustomFieldRequest(**fields)).custom_field


def get(stubs: Stubs, custom_field_id: str) -> pb.CustomField:
    request = pb.GetCustomFieldRequest(custom_field_id=custom_field_id)
    return stubs.custom_fields.GetCustomField(request).custom_field


def update(stubs: Stubs, custom_field_id: str, **fields: Any) -> pb.CustomField:
    request = pb.UpdateCustomFieldRequest(custom_field_id=custom_field_id, **fields)
    return stubs.custom_fields.UpdateCustomField(request).custom_field


def delete(stubs: Stubs, custom_field_id: str) -> None:
    request = pb.DeleteCustomFieldRequest(custom_field_id=custom_field_id)
    stubs.custom_fields.DeleteCustomField(request)


def text(value: str) -> common_pb2.CustomFieldValue:
    return common_pb2.CustomFieldValue(string_value=value)


# --- create and get ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("type_", "enum_values"),
    [
        (pb.CUSTOM_FIELD_TYPE_BOOLEAN, []),
        (pb.CUSTOM_FIELD_TYPE_ENUM, ["clear", "rain", "snow"]),
        (pb.CUSTOM_FIELD_TYPE_NUMBER, []),
        (pb.CUSTOM_FIELD_TYPE_STRING, []),
        (pb.CUSTOM_FIELD_TYPE_TIMESTAMP, []),
    ],
)
def test_create_custom_field_of_each_type_then_get_returns_it(
    stubs: Stubs, identity: Identity, type_: int, enum_values: list[str]
) -> None:
    name = unique("weather_")
    created = create(
        stubs, name=name, type=type_, enum_values=enum_values, description="Sky at takeoff."
    )
    assert created.custom_field_id.startswith("cf_")
    assert created.org_id == identity.org_id
    assert created.entity_type == pb.ENTITY_TYPE_SESSION
    assert created.name == name
    assert created.type == type_
    assert list(created.enum_values) == enum_values
    assert created.description == "Sky at takeoff."
    assert created.created_by == identity.principal_id
    assert created.created.seconds > 0
    assert get(stubs, created.custom_field_id) == created


def test_create_custom_field_is_ready_unless_created_as_creating(stubs: Stubs) -> None:
    assert create(stubs).status == pb.CUSTOM_FIELD_STATUS_READY
    ready = create(stubs, initial_status=pb.CUSTOM_FIELD_STATUS_READY)
    assert ready.status == pb.CUSTOM_FIELD_STATUS_READY
    creating = create(stubs, initial_status=pb.CUSTOM_FIELD_STATUS_CREATING)
    assert creating.status == pb.CUSTOM_FIELD_STATUS_CREATING


@pytest.mark.parametrize(
    "status", [pb.CUSTOM_FIELD_STATUS_DELETING, pb.CUSTOM_FIELD_STATUS_FAILED, 99]
)
def test_create_custom_field_rejects_an_initial_status_other_than_ready_or_creating(
    stubs: Stubs, status: int
) -> None:
    assert_invalid(rpc_error(lambda: create(stubs, initial_status=status)), "initial_status")


@pytest.mark.parametrize(
    "name", ["", "Upper", "1st", "_private", "with-dash", "with space", "é", "a" * 64]
)
def test_create_custom_field_rejects_a_name_not_matching_the_pattern(
    stubs: Stubs, name: str
) -> None:
    assert_invalid(rpc_error(lambda: create(stubs, name=name)), "name")


def test_create_custom_field_accepts_a_63_character_name(stubs: Stubs) -> None:
    name = unique("a") + "_0" * 27
    assert len(name) == 63
    assert create(stubs, name=name).name == name


def test_create_custom_field_requires_a_type(stubs: Stubs) -> None:
    failure = rpc_error(lambda: create(stubs, type=pb.CUSTOM_FIELD_TYPE_UNSPECIFIED))
    assert_invalid(failure, "type")


def test_create_custom_field_requires_an_entity_type(stubs: Stubs) -> None:
    failure = rpc_error(lambda: create(stubs, entity_type=pb.ENTITY_TYPE_UNSPECIFIED))
    assert_invalid(failure, "entity_type")


def test_create_enum_field_needs_at_least_one_value(stubs: Stubs) -> None:
    failure = rpc_error(lambda: create(stubs, type=pb.CUSTOM_FIELD_TYPE_ENUM))
    assert_invalid(failure, "enum_values")


def test_create_enum_field_rejects_repeated_and_empty_values(stubs: Stubs) -> None:
    failure = rpc_error(
        lambda: create(stubs, type=pb.CUSTOM_FIELD_TYPE_ENUM, enum_values=["a", "", "a"])
    )
    assert_invalid(failure, "enum_values", "enum_values[1]")


def test_create_enum_field_accepts_256_values_and_rejects_257(stubs: Stubs) -> None:
    values = [f"v{n}" for n in range(257)]
    failure = rpc_error(lambda: create(stubs, type=pb.CUSTOM_FIELD_TYPE_ENUM, enum_values=values))
    assert_invalid(failure, "enum_values")
    field = create(stubs, type=pb.CUSTOM_FIELD_TYPE_ENUM, enum_values=values[:256])
    assert len(field.enum_values) == 256


@pytest.mark.parametrize(
    "type_",
    [pb.CUSTOM_FIELD_TYPE_STRING, pb.CUSTOM_FIELD_TYPE_NUMBER, pb.CUSTOM_FIELD_TYPE_BOOLEAN],
)
def test_create_custom_field_rejects_enum_values_on_another_type(stubs: Stubs, type_: int) -> None:
    assert_invalid(rpc_error(lambda: create(stubs, type=type_, enum_values=["x"])), "enum_values")


def test_create_custom_field_rejects_a_description_over_1024_characters(stubs: Stubs) -> None:
    assert_invalid(rpc_error(lambda: create(stubs, description="d" * 1025)), "description")


def test_create_custom_field_reports_every_bad_field_at_once(stubs: Stubs) -> None:
    failure = rpc_error(
        lambda: create(
            stubs,
            entity_type=pb.ENTITY_TYPE_UNSPECIFIED,
            name="Bad",
            type=pb.CUSTOM_FIELD_TYPE_UNSPECIFIED,
            initial_status=pb.CUSTOM_FIELD_STATUS_FAILED,
        )
    )
    assert_invalid(failure, "entity_type", "name", "type", "initial_status")


def test_create_custom_field_with_a_taken_name_is_already_exists(stubs: Stubs) -> None:
    field = create(stubs)
    failure = rpc_error(lambda: create(stubs, name=field.name, type=pb.CUSTOM_FIELD_TYPE_NUMBER))
    assert failure.code == grpc.StatusCode.ALREADY_EXISTS
    assert failure.reason == "ALREADY_EXISTS"


def test_get_custom_field_of_an_unknown_id_is_not_found(stubs: Stubs) -> None:
    assert_not_found(rpc_error(lambda: get(stubs, UNKNOWN_FIELD)), "CUSTOM_FIELD_NOT_FOUND")


@pytest.mark.parametrize("custom_field_id", ["", "weather", "ss_abc", "cf_UPPER"])
def test_get_custom_field_rejects_a_malformed_id(stubs: Stubs, custom_field_id: str) -> None:
    assert_invalid(rpc_error(lambda: get(stubs, custom_field_id)), "custom_field_id")


# --- list ----------------------------------------------------------------------------------------


def test_list_custom_fields_by_name_across_batches_and_resumes(fresh: Stubs) -> None:
    names = ["delta", "alpha", "echo", "charlie", "bravo"]
    for name in names:
        create(fresh, name=name)
    for entity_type in (pb.ENTITY_TYPE_SESSION, pb.ENTITY_TYPE_UNSPECIFIED):
        check_paging(
            fresh.custom_fields.ListCustomFields,
            pb.ListCustomFieldsRequest,
            "custom_fields",
            lambda f: f.name,
            sorted(names),
            entity_type=entity_type,
        )


def test_list_custom_fields_returns_whole_definitions(fresh: Stubs) -> None:
    field = create(fresh, type=pb.CUSTOM_FIELD_TYPE_ENUM, enum_values=["a", "b"])
    listed, _ = drain(
        fresh.custom_fields.ListCustomFields(pb.ListCustomFieldsRequest()), "custom_fields"
    )
    assert listed == [field]


def test_list_custom_fields_rejects_a_garbled_page_token(stubs: Stubs) -> None:
    failure = rpc_error(
        lambda: stubs.custom_fields.ListCustomFields(
            pb.ListCustomFieldsRequest(page_token="definitely not a token")
        )
    )
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT
    assert failure.reason == "INVALID_PAGE_TOKEN"
    assert set(failure.fields) == {"page_token"}


def test_list_custom_fields_rejects_the_token_of_another_entity_filter(fresh: Stubs) -> None:
    create(fresh)
    create(fresh)
    token = first_batch(
        fresh.custom_fields.ListCustomFields(
            pb.ListCustomFieldsRequest(entity_type=pb.ENTITY_TYPE_SESSION, page_size=1)
        )
    ).next_page_token
    failure = rpc_error(
        lambda: fresh.custom_fields.ListCustomFields(pb.ListCustomFieldsRequest(page_token=token))
    )
    assert failure.reason == "INVALID_PAGE_TOKEN"


def test_list_custom_fields_rejects_an_unknown_entity_type(stubs: Stubs) -> None:
    failure = rpc_error(
        lambda: stubs.custom_fields.ListCustomFields(
            pb.ListCustomFieldsRequest(entity_type=pb.EntityType.ValueType(7))
        )
    )
    assert_invalid(failure, "entity_type")


# --- update --------------------------------------------------------------------------------------


def test_update_custom_field_moves_it_through_its_lifecycle(stubs: Stubs) -> None:
    field = create(stubs, initial_status=pb.CUSTOM_FIELD_STATUS_CREATING)
    for status in (
        pb.CUSTOM_FIELD_STATUS_READY,
        pb.CUSTOM_FIELD_STATUS_DELETING,
        pb.CUSTOM_FIELD_STATUS_FAILED,
        pb.CUSTOM_FIELD_STATUS_CREATING,
    ):
        updated = update(stubs, field.custom_field_id, status=status)
        assert updated.status == status
        assert get(stubs, field.custom_field_id) == updated


def test_update_custom_field_without_a_status_keeps_it(stubs: Stubs) -> None:
    field = create(stubs, initial_status=pb.CUSTOM_FIELD_STATUS_CREATING)
    assert update(stubs, field.custom_field_id) == field


def test_update_custom_field_appends_new_enum_values_in_order(stubs: Stubs) -> None:
    field = create(stubs, type=pb.CUSTOM_FIELD_TYPE_ENUM, enum_values=["clear", "rain"])
    updated = update(stubs, field.custom_field_id, add_enum_values=["snow", "rain", "fog", "snow"])
    assert list(updated.enum_values) == ["clear", "rain", "snow", "fog"]
    assert updated.status == pb.CUSTOM_FIELD_STATUS_READY


def test_update_custom_field_rejects_enum_values_on_another_type(stubs: Stubs) -> None:
    field = create(stubs, type=pb.CUSTOM_FIELD_TYPE_STRING)
    failure = rpc_error(lambda: update(stubs, field.custom_field_id, add_enum_values=["x"]))
    assert_invalid(failure, "add_enum_values")


def test_update_custom_field_rejects_empty_or_long_enum_values(stubs: Stubs) -> None:
    field = create(stubs, type=pb.CUSTOM_FIELD_TYPE_ENUM, enum_values=["a"])
    failure = rpc_error(
        lambda: update(stubs, field.custom_field_id, add_enum_values=["ok", "", "x" * 129])
    )
    assert_invalid(failure, "add_enum_values[1]", "add_enum_values[2]")
    assert list(get(stubs, field.custom_field_id).enum_values) == ["a"]


def test_update_custom_field_rejects_growing_past_256_enum_values(stubs: Stubs) -> None:
    field = create(stubs, type=pb.CUSTOM_FIELD_TYPE_ENUM, enum_values=[f"v{n}" for n in range(255)])
    failure = rpc_error(lambda: update(stubs, field.custom_field_id, add_enum_values=["x", "y"]))
    assert_invalid(failure, "add_enum_values")
    assert len(update(stubs, field.custom_field_id, add_enum_values=["x"]).enum_values) == 256


def test_update_custom_field_rejects_an_unknown_status(stubs: Stubs) -> None:
    field = create(stubs)
    assert_invalid(rpc_error(lambda: update(stubs, field.custom_field_id, status=42)), "status")


def test_update_custom_field_of_an_unknown_id_is_not_found(stubs: Stubs) -> None:
    failure = rpc_error(lambda: update(stubs, UNKNOWN_FIELD, status=pb.CUSTOM_FIELD_STATUS_READY))
    assert_not_found(failure, "CUSTOM_FIELD_NOT_FOUND")


# --- delete --------------------------------------------------------------------------------------


def test_delete_custom_field_then_get_is_not_found(stubs: Stubs) -> None:
    field = create(stubs)
    delete(stubs, field.custom_field_id)
    assert_not_found(rpc_error(lambda: get(stubs, field.custom_field_id)), "CUSTOM_FIELD_NOT_FOUND")
    assert_not_found(
        rpc_error(lambda: delete(stubs, field.custom_field_id)), "CUSTOM_FIELD_NOT_FOUND"
    )


def test_a_deleted_custom_field_name_can_be_defined_again(stubs: Stubs) -> None:
    field = create(stubs)
    delete(stubs, field.custom_field_id)
    again = create(stubs, name=field.name, type=pb.CUSTOM_FIELD_TYPE_NUMBER)
    assert again.custom_field_id != field.custom_field_id


def test_delete_custom_field_rejects_a_malformed_id(stubs: Stubs) -> None:
    assert_invalid(rpc_error(lambda: delete(stubs, "nope")), "custom_field_id")


# --- lifecycle as sessions see it ----------------------------------------------------------------


def test_a_creating_field_rejects_values_until_it_becomes_ready(stubs: Stubs) -> None:
    field = make_custom_field(stubs, initial_status=pb.CUSTOM_FIELD_STATUS_CREATING)
    failure = rpc_error(lambda: make_session(stubs, custom_fields={field.name: text("backfilled")}))
    assert_invalid(failure, f"custom_fields[{field.name}]")
    session = make_session(stubs)
    assert field.name not in get_session(stubs, session.session_id).custom_fields

    update(stubs, field.custom_field_id, status=pb.CUSTOM_FIELD_STATUS_READY)

    assert get_session(stubs, session.session_id).custom_fields[field.name] == NULL
    valued = make_session(stubs, custom_fields={field.name: text("now")})
    assert valued.custom_fields[field.name] == text("now")


def test_a_field_leaving_ready_hides_its_values_and_returning_shows_them(stubs: Stubs) -> None:
    field = make_custom_field(stubs)
    session = make_session(stubs, custom_fields={field.name: text("kept")})

    update(stubs, field.custom_field_id, status=pb.CUSTOM_FIELD_STATUS_DELETING)
    hidden = get_session(stubs, session.session_id)
    assert field.name not in hidden.custom_fields
    assert hidden.revision > session.revision

    update(stubs, field.custom_field_id, status=pb.CUSTOM_FIELD_STATUS_READY)
    assert get_session(stubs, session.session_id).custom_fields[field.name] == text("kept")


def test_a_status_change_that_keeps_a_field_hidden_leaves_sessions_alone(stubs: Stubs) -> None:
    field = make_custom_field(stubs)
    session = make_session(stubs, custom_fields={field.name: text("v")})
    update(stubs, field.custom_field_id, status=pb.CUSTOM_FIELD_STATUS_DELETING)
    hidden = get_session(stubs, session.session_id)
    update(stubs, field.custom_field_id, status=pb.CUSTOM_FIELD_STATUS_FAILED)
    assert get_session(stubs, session.session_id) == hidden


def test_deleting_a_field_removes_it_and_its_values_from_sessions(stubs: Stubs) -> None:
    field = make_custom_field(stubs, type=pb.CUSTOM_FIELD_TYPE_NUMBER)
    valued = make_session(
        stubs, custom_fields={field.name: common_pb2.CustomFieldValue(number_value=4.5)}
    )
    unset = make_session(stubs)
    assert get_session(stubs, unset.session_id).custom_fields[field.name] == NULL

    delete(stubs, field.custom_field_id)

    after = get_session(stubs, valued.session_id)
    assert field.name not in after.custom_fields
    assert after.revision > valued.revision
    assert field.name not in get_session(stubs, unset.session_id).custom_fields
    # The values went with the definition: a new field of that name starts empty.
    make_custom_field(stubs, name=field.name, type=pb.CUSTOM_FIELD_TYPE_NUMBER)
    assert get_session(stubs, valued.session_id).custom_fields[field.name] == NULL


def test_adding_enum_values_makes_them_acceptable_on_sessions(stubs: Stubs) -> None:
    field = make_custom_field(stubs, type=pb.CUSTOM_FIELD_TYPE_ENUM, enum_values=["clear"])
    fog = common_pb2.CustomFieldValue(enum_value="fog")
    failure = rpc_error(lambda: make_session(stubs, custom_fields={field.name: fog}))
    assert_invalid(failure, f"custom_fields[{field.name}]")
    update(stubs, field.custom_field_id, add_enum_values=["fog"])
    assert make_session(stubs, custom_fields={field.name: fog}).custom_fields[field.name] == fog


def test_updating_a_session_value_after_a_round_trip_through_deleting(stubs: Stubs) -> None:
    field = make_custom_field(stubs)
    session = make_session(stubs, custom_fields={field.name: text("one")})
    update(stubs, field.custom_field_id, status=pb.CUSTOM_FIELD_STATUS_DELETING)
    failure = rpc_error(
        lambda: stubs.sessions.UpdateSession(
            sessions_pb.UpdateSessionRequest(
                session_id=session.session_id,
                custom_fields_changeset=sessions_pb.CustomFieldChangeset(
                    set_fields={field.name: text("two")}
                ),
            )
        )
    )
    assert_invalid(failure, f"custom_fields_changeset.set_fields[{field.name}]")
    update(stubs, field.custom_field_id, status=pb.CUSTOM_FIELD_STATUS_READY)
    assert get_session(stubs, session.session_id).custom_fields[field.name] == text("one")


def test_concurrent_status_flips_and_value_writes_leave_no_session_record_stale(
    stubs: Stubs,
) -> None:
    field = make_custom_field(stubs)
    sessions = [
        make_session(stubs, custom_fields={field.name: text("initial")}).session_id
        for _ in range(6)
    ]

    def work(n: int) -> None:
        if n % 2 == 0:
            status = pb.CUSTOM_FIELD_STATUS_READY if n % 4 == 0 else pb.CUSTOM_FIELD_STATUS_FAILED
            update(stubs, field.custom_field_id, status=status)
            return
        request = sessions_pb.UpdateSessionRequest(
            session_id=sessions[n % len(sessions)],
            custom_fields_changeset=sessions_pb.CustomFieldChangeset(
                set_fields={field.name: text(f"v{n}")}
            ),
        )
        try:
            stubs.sessions.UpdateSession(request)
        except grpc.RpcError as error:  # the field was not Ready at that moment
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(work, range(60)))

    update(stubs, field.custom_field_id, status=pb.CUSTOM_FIELD_STATUS_FAILED)
    assert all(field.name not in get_session(stubs, s).custom_fields for s in sessions)
    update(stubs, field.custom_field_id, status=pb.CUSTOM_FIELD_STATUS_READY)
    shown = [get_session(stubs, s).custom_fields[field.name] for s in sessions]
    assert all(value.WhichOneof("kind") == "string_value" for value in shown), shown


# --- tenancy -------------------------------------------------------------------------------------


def test_another_org_gets_not_found_for_every_rpc_on_this_orgs_fields(
    stubs: Stubs, other_stubs: Stubs
) -> None:
    field = create(stubs, type=pb.CUSTOM_FIELD_TYPE_ENUM, enum_values=["a"])
    calls: list[Callable[[], Any]] = [
        lambda: get(other_stubs, field.custom_field_id),
        lambda: update(other_stubs, field.custom_field_id, status=pb.CUSTOM_FIELD_STATUS_FAILED),
        lambda: update(other_stubs, field.custom_field_id, add_enum_values=["b"]),
        lambda: delete(other_stubs, field.custom_field_id),
    ]
    for call in calls:
        assert_not_found(rpc_error(call), "CUSTOM_FIELD_NOT_FOUND")
    assert get(stubs, field.custom_field_id) == field
    # Names are unique per org only.
    assert create(other_stubs, name=field.name).name == field.name


def test_another_org_sees_none_of_this_orgs_fields_in_lists_or_sessions(
    stubs: Stubs, other_stubs: Stubs
) -> None:
    field = create(stubs)
    listed, _ = drain(
        other_stubs.custom_fields.ListCustomFields(pb.ListCustomFieldsRequest()), "custom_fields"
    )
    assert field.custom_field_id not in {f.custom_field_id for f in listed}
    assert all(f.org_id != field.org_id for f in listed)
    assert field.name not in make_session(other_stubs).custom_fields
    failure = rpc_error(lambda: make_session(other_stubs, custom_fields={field.name: text("x")}))
    assert_invalid(failure, f"custom_fields[{field.name}]")


# --- values kept exactly --------------------------------------------------------------------------

# google.protobuf.Timestamp's range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z.
TIMESTAMPS = st.builds(
    lambda seconds, nanos: timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos),
    st.integers(-62_135_596_800, 253_402_300_799),
    st.integers(0, 999_999_999),
)


def at(ts: timestamp_pb2.Timestamp) -> common_pb2.CustomFieldValue:
    return common_pb2.CustomFieldValue(timestamp_value=ts)


def test_timestamp_values_keep_their_nanoseconds(stubs: Stubs) -> None:
    field = make_custom_field(stubs, type=pb.CUSTOM_FIELD_TYPE_TIMESTAMP)
    sent = timestamp_pb2.Timestamp(seconds=1_700_000_000, nanos=32_978_600)
    created = make_session(stubs, custom_fields={field.name: at(sent)})
    assert created.custom_fields[field.name] == at(sent)
    assert get_session(stubs, created.session_id).custom_fields[field.name] == at(sent)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    values=st.lists(TIMESTAMPS, min_size=2, max_size=6, unique_by=lambda t: (t.seconds, t.nanos))
)
def test_timestamp_values_sort_and_compare_to_the_nanosecond(
    database_url: str, grpc_target: str, values: list[timestamp_pb2.Timestamp]
) -> None:
    org = new_org_stubs(database_url, grpc_target)
    try:
        field = make_custom_field(org, type=pb.CUSTOM_FIELD_TYPE_TIMESTAMP)
        by_id = {}
        for value in values:
            session = make_session(org, custom_fields={field.name: at(value)})
            by_id[session.session_id] = (value.seconds, value.nanos)
        listed, _ = drain(
            org.sessions.ListSessions(
                sessions_pb.ListSessionsRequest(
                    page_size=2,
                    sort=sessions_pb.SessionSort(
                        field=sessions_pb.SESSION_SORT_FIELD_CUSTOM_FIELD,
                        custom_field=field.name,
                        direction=sessions_pb.SORT_DIRECTION_ASCENDING,
                    ),
                )
            ),
            "sessions",
        )
        assert [s.session_id for s in listed] == sorted(by_id, key=by_id.__getitem__)
        assert [s.custom_fields[field.name] for s in listed] == sorted(
            (at(v) for v in values),
            key=lambda c: (c.timestamp_value.seconds, c.timestamp_value.nanos),
        )
        pivot = values[0]
        later, _ = drain(
            org.sessions.ListSessions(
                sessions_pb.ListSessionsRequest(
                    filter=sessions_pb.SessionFilter(
                        custom_fields=[
                            sessions_pb.CustomFieldCondition(
                                field=field.name,
                                operator=sessions_pb.COMPARISON_OPERATOR_GREATER,
                                value=at(pivot),
                            )
                        ]
                    )
                )
            ),
            "sessions",
        )
        assert {s.session_id for s in later} == {
            session_id for session_id, v in by_id.items() if v > (pivot.seconds, pivot.nanos)
        }
    finally:
        org.close()


def test_clearing_an_undefined_field_names_the_clear_fields_entry(stubs: Stubs) -> None:
    session = make_session(stubs)
    failure = rpc_error(
        lambda: stubs.sessions.UpdateSession(
            sessions_pb.UpdateSessionRequest(
                session_id=session.session_id,
                custom_fields_changeset=sessions_pb.CustomFieldChangeset(
                    clear_fields=["nosuchfield", "nosuchfield2"]
                ),
            )
        )
    )
    assert_invalid(
        failure,
        "custom_fields_changeset.clear_fields[0]",
        "custom_fields_changeset.clear_fields[1]",
    )
