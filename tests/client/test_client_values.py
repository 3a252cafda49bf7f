"""Value conversion, configuration and command-line value parsing (no server)."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import pytest
from google.protobuf import struct_pb2

from flightlog import EnumValue, NotSet, NotSetType, SessionFile
from flightlog._config import ClientConfig
from flightlog._values import (
    custom_field_value_from_proto,
    custom_field_value_to_proto,
    datetime_from_proto,
    datetime_to_proto,
    metadata_from_proto,
    metadata_to_proto,
)
from flightlog.catalog import TimelineExtent
from flightlog.cli._parsing import (
    UsageError,
    parse_condition,
    parse_custom_field_value,
    parse_metadata_value,
    parse_time_ns,
)
from flightlog.custom_fields import CustomField
from flightlog.errors import ConfigurationError
from flightlog.ingest import TopicSummary
from flightlog.session import (
    CustomFieldChangeset,
    FieldCondition,
    MetadataChangeset,
    SessionRecord,
)
from flightlog.v1 import common_pb2
from flightlog.v1 import session_service_pb2 as pb

# Metadata ------------------------------------------------------------------------------------


def test_metadata_round_trips_with_integral_numbers_back_as_int() -> None:
    metadata = {
        "pilot": "alice",
        "wind": {"knots": 12, "gust": 17.5},
        "passes": [1, 2.5, "three", None, True],
        "checked": False,
        "peak_mb": 2048.0,
    }

    back = metadata_from_proto(metadata_to_proto(metadata))

    assert back == {
        "pilot": "alice",
        "wind": {"knots": 12, "gust": 17.5},
        "passes": [1, 2.5, "three", None, True],
        "checked": False,
        "peak_mb": 2048,
    }
    assert isinstance(back["wind"]["knots"], int)
    assert isinstance(back["passes"][4], bool)


def test_metadata_stores_datetimes_as_iso_strings() -> None:
    when = dt.datetime(2026, 4, 23, 9, 30, tzinfo=dt.UTC)
    assert metadata_from_proto(metadata_to_proto({"at": when})) == {"at": when.isoformat()}


def test_metadata_rejects_what_a_struct_cannot_hold_exactly() -> None:
    with pytest.raises(ValueError, match="too large"):
        metadata_to_proto({"big": 2**60})
    with pytest.raises(ValueError, match="finite"):
        metadata_to_proto({"x": math.nan})
    with pytest.raises(TypeError, match="bytes"):
        metadata_to_proto({"blob": b"\x00"})
    with pytest.raises(TypeError, match="key"):
        metadata_to_proto({"outer": {1: "x"}})


# Custom-field values -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (None, "null_value"),
        (True, "bool_value"),
        (False, "bool_value"),
        ("clear", "string_value"),
        (EnumValue("clear"), "enum_value"),
        (3, "number_value"),
        (2.5, "number_value"),
        (dt.datetime(2026, 4, 23, tzinfo=dt.UTC), "timestamp_value"),
    ],
)
def test_python_values_map_to_the_custom_field_oneof(value: object, kind: str) -> None:
    assert custom_field_value_to_proto(value).WhichOneof("kind") == kind


def test_bool_is_not_taken_for_a_number() -> None:
    assert custom_field_value_to_proto(True).bool_value is True


def test_naive_datetimes_are_utc() -> None:
    naive = dt.datetime(2026, 4, 23, 9, 30, 15, 123456)
    message = custom_field_value_to_proto(naive)
    assert custom_field_value_from_proto(message) == naive.replace(tzinfo=dt.UTC)


def test_custom_field_values_come_back_as_python_values() -> None:
    when = dt.datetime(2026, 4, 23, 9, 30, tzinfo=dt.UTC)
    cases: list[tuple[common_pb2.CustomFieldValue, object]] = [
        (common_pb2.CustomFieldValue(null_value=struct_pb2.NULL_VALUE), None),
        (common_pb2.CustomFieldValue(), None),
        (common_pb2.CustomFieldValue(bool_value=True), True),
        (common_pb2.CustomFieldValue(enum_value="rain"), "rain"),
        (common_pb2.CustomFieldValue(string_value="x"), "x"),
        (common_pb2.CustomFieldValue(number_value=4.0), 4.0),
        (common_pb2.CustomFieldValue(timestamp_value=datetime_to_proto(when)), when),
    ]
    for message, expected in cases:
        assert custom_field_value_from_proto(message) == expected


def test_unsupported_custom_field_values_are_rejected() -> None:
    with pytest.raises(TypeError, match="list"):
        custom_field_value_to_proto(["a"])


def test_timestamps_are_aware_utc() -> None:
    back = datetime_from_proto(datetime_to_proto(dt.datetime(2020, 1, 1, 12)))
    assert back == dt.datetime(2020, 1, 1, 12, tzinfo=dt.UTC)


# Records and changesets ----------------------------------------------------------------------


def test_not_set_is_a_falsy_singleton_distinct_from_none() -> None:
    assert NotSet is NotSetType.NotSet
    assert not NotSet
    assert NotSet is not None
    assert repr(NotSet) == "NotSet"


def test_session_files_compare_by_file_and_window_only() -> None:
    listed = SessionFile("fl_a", 1, 2, session_id="ss_x", relative_path="a.mcap", size_bytes=9)
    assert listed == SessionFile(file_id="fl_a", range_min_timestamp_ns=1, range_max_timestamp_ns=2)
    assert listed != SessionFile("fl_a")


def test_session_file_specs_send_bounds_only_when_set() -> None:
    whole = SessionFile("fl_a").to_proto()
    assert not whole.HasField("range_min_timestamp_ns")
    assert not whole.HasField("range_max_timestamp_ns")
    window = SessionFile("fl_b", 0, 5).to_proto()
    assert (window.range_min_timestamp_ns, window.range_max_timestamp_ns) == (0, 5)
    assert window.HasField("range_min_timestamp_ns")


def test_session_record_reads_optional_fields_as_none() -> None:
    message = pb.Session(session_id="ss_1", org_id="og_1", revision=3)
    message.custom_fields["weather"].null_value = struct_pb2.NULL_VALUE
    message.custom_fields["speed"].number_value = 3.0

    record = SessionRecord.from_proto(message)

    assert record.name is None and record.description is None
    assert record.min_timestamp_ns is None and record.max_timestamp_ns is None
    assert record.created is None
    assert record.custom_fields == {"speed": 3.0, "weather": None}
    assert record.metadata == {} and record.tags == []
    assert record.revision == 3


def test_session_record_keeps_zero_bounds() -> None:
    message = pb.Session(session_id="ss_1", min_timestamp_ns=0, max_timestamp_ns=0)
    record = SessionRecord.from_proto(message)
    assert (record.min_timestamp_ns, record.max_timestamp_ns) == (0, 0)


def test_changesets_build_their_wire_forms() -> None:
    metadata = MetadataChangeset(
        put_tags=["a"], remove_tags=["b"], put_fields={"w.c": "clear"}, remove_fields=["p"]
    ).to_proto()
    assert list(metadata.put_tags) == ["a"] and list(metadata.remove_tags) == ["b"]
    assert metadata_from_proto(metadata.put_fields) == {"w.c": "clear"}
    assert list(metadata.remove_fields) == ["p"]
    assert not MetadataChangeset(put_tags=["x"]).to_proto().HasField("put_fields")

    fields = CustomFieldChangeset(set_fields={"ok": True, "gone": None}, clear_fields=["z"])
    message = fields.to_proto()
    assert message.set_fields["ok"].bool_value is True
    assert message.set_fields["gone"].WhichOneof("kind") == "null_value"
    assert list(message.clear_fields) == ["z"]


def test_field_conditions_build_their_wire_forms() -> None:
    equal = FieldCondition("weather", "=", "clear").to_proto()
    assert equal.operator == pb.COMPARISON_OPERATOR_EQUAL
    assert equal.value.string_value == "clear"
    among = FieldCondition("speed", "in", values=[1, 2]).to_proto()
    assert [v.number_value for v in among.values] == [1.0, 2.0]
    assert not among.HasField("value")
    null = FieldCondition("speed", "is_null").to_proto()
    assert null.operator == pb.COMPARISON_OPERATOR_IS_NULL and not null.HasField("value")
    with pytest.raises(ValueError, match="operator"):
        FieldCondition("speed", "~", 1).to_proto()


def test_a_topic_without_messages_registers_no_extent() -> None:
    spec = TopicSummary("/p", "S", "cdr", 0, None, None).to_partition_spec()
    assert spec.extents == []
    spec = TopicSummary("/q", "S", "cdr", 2, 5, 9).to_partition_spec()
    assert list(spec.extents) == [TimelineExtent(5, 9)]


# Configuration -------------------------------------------------------------------------------


def test_configuration_defaults_to_the_local_dev_server() -> None:
    config = ClientConfig.from_env({})
    assert config.endpoint == "localhost:50051"
    assert config.api_key is None and config.org_id is None
    assert config.tls is False
    assert config.timeout == 30.0


def test_configuration_reads_every_variable(tmp_path: Path) -> None:
    config = ClientConfig.from_env(
        {
            "FLIGHTLOG_ENDPOINT": "flightlog.example.com:443",
            "FLIGHTLOG_API_KEY": "secret",
            "FLIGHTLOG_ORG_ID": "og_123",
            "FLIGHTLOG_TLS_CA": str(tmp_path / "ca.pem"),
            "FLIGHTLOG_TLS_CERT": str(tmp_path / "client.pem"),
            "FLIGHTLOG_TLS_KEY": str(tmp_path / "client.key"),
            "FLIGHTLOG_TIMEOUT": "5",
        }
    )
    assert config.endpoint == "flightlog.example.com:443"
    assert (config.api_key, config.org_id) == ("secret", "og_123")
    assert config.tls is True  # implied by the TLS files
    assert config.tls_ca == tmp_path / "ca.pem"
    assert config.timeout == 5.0


@pytest.mark.parametrize(
    ("environ", "tls"),
    [
        ({"FLIGHTLOG_TLS": "1"}, True),
        ({"FLIGHTLOG_TLS": "true"}, True),
        ({"FLIGHTLOG_TLS": "0"}, False),
        ({"FLIGHTLOG_ENDPOINT": "https://h:443"}, True),
        ({"FLIGHTLOG_ENDPOINT": "http://h:80"}, False),
        ({"FLIGHTLOG_ENDPOINT": "https://h:443", "FLIGHTLOG_TLS": "false"}, False),
    ],
)
def test_tls_is_switched_by_flag_or_scheme(environ: dict[str, str], tls: bool) -> None:
    config = ClientConfig.from_env(environ)
    assert config.tls is tls
    assert "://" not in config.endpoint


@pytest.mark.parametrize(
    "environ",
    [
        {"FLIGHTLOG_TLS": "maybe"},
        {"FLIGHTLOG_TLS_CERT": "/c.pem"},
        {"FLIGHTLOG_TIMEOUT": "soon"},
        {"FLIGHTLOG_TIMEOUT": "0"},
    ],
)
def test_unusable_configuration_is_rejected(environ: dict[str, str]) -> None:
    with pytest.raises(ConfigurationError):
        ClientConfig.from_env(environ)


# Command-line values -------------------------------------------------------------------------


def test_times_parse_from_nanoseconds_or_iso_8601_with_nanoseconds() -> None:
    assert parse_time_ns("1616653333034080451") == 1616653333034080451
    assert parse_time_ns("1_700_000_000_000_000_000") == 1_700_000_000_000_000_000
    assert parse_time_ns("2021-03-25T06:22:13.034080451Z") == 1616653333034080451
    assert parse_time_ns("2021-03-25T06:22:13Z") == 1616653333000000000
    assert parse_time_ns("2021-03-25T08:22:13.5+02:00") == 1616653333500000000
    assert parse_time_ns("2021-03-25") == 1616630400000000000
    with pytest.raises(UsageError):
        parse_time_ns("yesterday")


def test_metadata_values_parse_as_json_or_text() -> None:
    assert parse_metadata_value("alice") == "alice"
    assert parse_metadata_value("3") == 3
    assert parse_metadata_value("true") is True
    assert parse_metadata_value('{"a": 1}') == {"a": 1}


_FIELDS = {
    "ok": CustomField("cf_1", "ok", "boolean"),
    "speed": CustomField("cf_2", "speed", "number"),
    "weather": CustomField("cf_3", "weather", "enum", enum_values=("clear", "rain")),
    "pilot": CustomField("cf_4", "pilot", "string"),
    "landed": CustomField("cf_5", "landed", "timestamp"),
}


def test_custom_field_values_parse_by_declared_type() -> None:
    assert parse_custom_field_value("ok", "yes", _FIELDS) is True
    assert parse_custom_field_value("speed", "3", _FIELDS) == 3.0
    weather = parse_custom_field_value("weather", "rain", _FIELDS)
    assert isinstance(weather, EnumValue) and weather == "rain"
    assert parse_custom_field_value("pilot", "42", _FIELDS) == "42"
    assert parse_custom_field_value("landed", "2026-04-23T10:00:00Z", _FIELDS) == dt.datetime(
        2026, 4, 23, 10, tzinfo=dt.UTC
    )
    assert parse_custom_field_value("unknown", "x", _FIELDS) == "x"
    with pytest.raises(UsageError):
        parse_custom_field_value("ok", "perhaps", _FIELDS)
    with pytest.raises(UsageError):
        parse_custom_field_value("speed", "fast", _FIELDS)


def test_conditions_parse_every_operator() -> None:
    assert parse_condition("speed>=3", _FIELDS) == FieldCondition("speed", ">=", value=3.0)
    assert parse_condition("pilot = alice", _FIELDS) == FieldCondition("pilot", "=", "alice")
    assert parse_condition("weather in clear, rain", _FIELDS) == FieldCondition(
        "weather", "in", values=["clear", "rain"]
    )
    assert parse_condition("weather is null", _FIELDS) == FieldCondition("weather", "is_null")
    assert parse_condition("weather IS NOT NULL", _FIELDS) == FieldCondition(
        "weather", "is_not_null"
    )
    assert parse_condition("speed != 2", _FIELDS).operator == "!="
    with pytest.raises(UsageError):
        parse_condition("speed", _FIELDS)
    with pytest.raises(UsageError):
        parse_condition("speed >", _FIELDS)
