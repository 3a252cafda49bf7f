"""The catalog's pure rules: RegisterFile's checks and ListFileTopics' batches."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from flightlog_server.domain import catalog
from flightlog_server.domain.rules import Violations


class SameHash(str):
    """A string whose hash collides with every other one's."""

    def __hash__(self) -> int:
        return 7


@dataclass
class Partition:
    topic_name: str
    schema_name: str = ""
    message_encoding: str = ""
    message_count: int = 0
    extents: list[catalog.ExtentInput] = field(default_factory=list)


@dataclass
class File:
    partitions: list[Partition]
    dataset_id: str = "ds_" + "a" * 20
    relative_path: str = "f.mcap"
    size_bytes: int = 0
    device_id: str = ""
    unix_epoch_offset_ns: int = 0


def violations_of(file: File) -> dict[str, str]:
    v = Violations()
    for _ in catalog.check_file(v, file, catalog.FileExtras()):
        pass
    return {x.field: x.description for x in v.items}


def test_a_repeated_topic_is_found_exactly_even_when_identities_share_a_hash() -> None:
    names = [SameHash(n) for n in ("/a", "/b", "/a", "/c", "/b")]
    found = violations_of(File([Partition(n) for n in names]))
    assert found == {
        "partitions[2].topic_name": "repeats partitions[0] (same topic name and schema name);"
        " list each topic once",
        "partitions[4].topic_name": "repeats partitions[1] (same topic name and schema name);"
        " list each topic once",
    }


def test_the_same_name_with_another_schema_is_another_topic() -> None:
    assert violations_of(File([Partition("/a", "x"), Partition("/a", "y")])) == {}


@settings(max_examples=300, derandomize=True)
@given(st.lists(st.integers(0, 30_000), min_size=1, max_size=50))
def test_a_listing_batch_is_the_longest_prefix_within_10000_extents_or_one_partition(
    counts: list[int],
) -> None:
    partitions = [
        catalog.PartitionRecord(catalog.TopicRecord(f"ti_{i}", f"/{i}", "", ""), "fl_x", 0, n)
        for i, n in enumerate(counts)
    ]
    # Reference: take partitions while the total stays within the limit, and at least one.
    taken, total = 0, 0
    for n in counts:
        if taken and total + n > catalog.EXTENTS_PER_LISTING_BATCH:
            break
        taken, total = taken + 1, total + n
    assert list(catalog.listing_batch(partitions)) == partitions[:taken]
