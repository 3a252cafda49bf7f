"""The domain rules, as pure functions: changesets, limits, typed custom-field values."""

from __future__ import annotations

import datetime as dt
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flightlog_server.domain import rules
from flightlog_server.domain.errors import InvalidArgument
from flightlog_server.domain.rules import Violations
from flightlog_server.domain.types import (
    ContributionSpec,
    CustomFieldDef,
    CustomFieldStatus,
    CustomFieldType,
    Instant,
    WireValue,
)
from flightlog_server.pacing import run_at_once
from tests.reliability.helpers import HYPOTHESIS_EXAMPLES, PROPERTY_SETTINGS


def test_metadata_put_with_dot_paths_creates_nested_objects() -> None:
    result = rules.apply_metadata_changes({"a": 1}, {"weather.condition": "clear"}, [])
    assert result == {"a": 1, "weather": {"condition": "clear"}}


def test_metadata_put_replaces_a_scalar_parent_with_an_object() -> None:
    result = rules.apply_metadata_changes({"weather": "sunny"}, {"weather.wind": 3}, [])
    assert result == {"weather": {"wind": 3}}


def test_metadata_puts_apply_before_removes() -> None:
    result = rules.apply_metadata_changes({}, {"pilot": "alice", "x": 1}, ["pilot"])
    assert result == {"x": 1}


def test_metadata_removing_the_last_child_prunes_empty_parents() -> None:
    before = {"a": {"b": {"c": 1}}, "keep": True}
    assert rules.apply_metadata_changes(before, {}, ["a.b.c"]) == {"keep": True}
    assert before == {"a": {"b": {"c": 1}}, "keep": True}, "the input must not change"


def test_metadata_removing_a_missing_key_is_ignored() -> None:
    assert rules.apply_metadata_changes({"a": 1}, {}, ["b", "a.c", "x.y.z"]) == {"a": 1}


def test_tags_are_deduplicated_in_order_and_puts_apply_before_removes() -> None:
    assert rules.apply_tag_changes(["a", "b"], ["c", "a", "d"], ["d", "zzz"]) == ["a", "b", "c"]


def test_metadata_size_and_depth_limits() -> None:
    v = Violations()
    rules.check_metadata(v, "metadata", {"blob": "x" * (64 * 1024)})
    deep: dict[str, object] = {}
    node = deep
    for _ in range(20):
        child: dict[str, object] = {}
        node["k"] = child
        node = child
    rules.check_metadata(v, "metadata2", deep)
    assert [x.field for x in v.items] == ["metadata", "metadata2"]


def test_contributions_reject_half_open_window_min_after_max_and_repeats() -> None:
    v = Violations()
    specs = [
        ContributionSpec("fl_a", 5, None),
        ContributionSpec("fl_b", 9, 3),
        ContributionSpec("fl_a", None, None),
    ]
    run_at_once(rules.check_contributions(v, specs))  # a generator, for pacing.run_sliced
    assert [x.field for x in v.items] == [
        "files[0].range_max_timestamp_ns",
        "files[1].range_min_timestamp_ns",
        "files[2].file_id",
    ]


@pytest.mark.parametrize("bits", [8, 1 << 20], ids=["colliding", "as-served"])
@settings(PROPERTY_SETTINGS, max_examples=HYPOTHESIS_EXAMPLES)
@given(ids=st.lists(st.text(alphabet="ab", max_size=3), max_size=3000))
def test_repeated_file_ids_are_found_as_a_dict_of_every_id_finds_them(
    bits: int, ids: list[str]
) -> None:
    # The bitmap of hashes only narrows down the IDs compared: with 8 bits nearly every ID is a
    # candidate, with the served 2^20 nearly none is, and the repeats found are the same.
    first: dict[str, int] = {}
    expected = []
    for i, file_id in enumerate(ids):
        if file_id in first:
            expected.append((i, first[file_id]))
        first.setdefault(file_id, i)
    with mock.patch.object(rules, "_HASH_BITS", bits):
        assert run_at_once(rules._repeats(lambda: iter(ids))) == expected


def _field(
    type_: CustomFieldType, status: CustomFieldStatus = CustomFieldStatus.READY
) -> CustomFieldDef:
    return CustomFieldDef(
        custom_field_id="cf_x",
        org_id="og_x",
        entity_type="session",
        name="f",
        type=type_,
        enum_values=("red", "green") if type_ is CustomFieldType.ENUM else (),
        status=status,
        description="",
        created=dt.datetime.now(dt.UTC),
        created_by="pr_x",
    )


@pytest.mark.parametrize(
    ("type_", "value", "ok"),
    [
        (CustomFieldType.NUMBER, WireValue("number", 1.5), True),
        (CustomFieldType.NUMBER, WireValue("number", float("nan")), False),
        (CustomFieldType.NUMBER, WireValue("number", float("inf")), False),
        (CustomFieldType.NUMBER, WireValue("string", "1"), False),
        (CustomFieldType.ENUM, WireValue("enum", "red"), True),
        (CustomFieldType.ENUM, WireValue("string", "green"), True),
        (CustomFieldType.ENUM, WireValue("enum", "blue"), False),
        (CustomFieldType.BOOLEAN, WireValue("bool", False), True),
        (CustomFieldType.STRING, WireValue("string", "x" * 1025), False),
        (
            CustomFieldType.TIMESTAMP,
            WireValue("timestamp", Instant(1_700_000_000_032_978_601)),
            True,
        ),
        (CustomFieldType.TIMESTAMP, WireValue("null", None), True),
    ],
)
def test_custom_field_values_must_match_the_declared_type(
    type_: CustomFieldType, value: WireValue, ok: bool
) -> None:
    v = Violations()
    accepted, _ = rules.coerce_field_value(v, "custom_fields[f]", _field(type_), value)
    assert accepted is ok
    assert (v.items == []) is ok


def test_only_ready_custom_fields_accept_values() -> None:
    v = Violations()
    field = _field(CustomFieldType.BOOLEAN, CustomFieldStatus.CREATING)
    accepted, _ = rules.coerce_field_value(v, "f", field, WireValue("bool", True))
    assert not accepted
    assert "creating" in v.items[0].description


def test_violations_raise_together() -> None:
    v = Violations()
    v.add("a", "bad")
    v.add("b", "worse")
    with pytest.raises(InvalidArgument) as raised:
        v.raise_if_any()
    assert [x.field for x in raised.value.violations] == ["a", "b"]


def test_ids_are_prefixed_and_random() -> None:
    ids = {rules.new_id("session") for _ in range(1000)}
    assert len(ids) == 1000
    assert all(rules.is_valid_id(i, "session") for i in ids)
    assert not rules.is_valid_id("fl_abc", "session")
