"""Reading MCAP recordings (no server): the facts of the shared recordings' MANIFEST.md."""

from __future__ import annotations

import hashlib
import io
import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from mcap.writer import CompressionType, IndexType, Writer

from flightlog.ingest import RecordingSummary, read_recording
from tests.client.recordings import (
    BY_NAME,
    EXAMPLE_FILES,
    EXAMPLES_DIR,
    MANIFEST,
    SPLIT_END_NS,
    SPLIT_MESSAGES,
    SPLIT_RECORDING,
    SPLIT_START_NS,
    ExpectedRecording,
    shared_recording,
)

_IDS = [recording.file_name for recording in MANIFEST]


def test_the_recordings_folder_holds_the_eight_manifest_files() -> None:
    folder = shared_recording("MANIFEST.md").parent
    assert sorted(p.name for p in folder.glob("*.mcap")) == sorted(_IDS)


def test_the_example_recordings_are_the_ones_examples_readme_documents() -> None:
    readme = (EXAMPLES_DIR.parent / "README.md").read_text()
    for name in EXAMPLE_FILES:
        digest = hashlib.sha256((EXAMPLES_DIR / name).read_bytes()).hexdigest()
        assert f"`recordings/{name}` | {BY_NAME[name].size_bytes:,} | `{digest}`" in readme
    assert (EXAMPLES_DIR / "LICENSE").read_text().split()[:3] == ["Apache", "License", "Version"]


@pytest.mark.parametrize("expected", MANIFEST, ids=_IDS)
def test_summary_matches_the_manifest(expected: ExpectedRecording) -> None:
    summary = read_recording(expected.path)

    assert summary.source == "index"
    assert summary.size_bytes == expected.size_bytes
    assert summary.start_ns == expected.start_ns
    assert summary.end_ns == expected.end_ns
    assert summary.message_count == expected.message_count
    assert summary.channel_count == expected.channel_count
    assert summary.profile == expected.profile
    assert [t.topic_name for t in summary.topics] == [t.name for t in expected.topics]
    assert [t.schema_name for t in summary.topics] == [t.schema_name for t in expected.topics]
    assert [t.message_count for t in summary.topics] == [t.message_count for t in expected.topics]
    assert {t.message_encoding for t in summary.topics} == {expected.message_encoding}


@pytest.mark.parametrize("expected", MANIFEST, ids=_IDS)
def test_scanning_every_message_gives_the_same_result_as_the_index(
    expected: ExpectedRecording,
) -> None:
    indexed = read_recording(expected.path)
    scanned = read_recording(expected.path, use_index=False)

    assert scanned.source == "scan"
    assert scanned.topics == indexed.topics
    assert (scanned.start_ns, scanned.end_ns) == (indexed.start_ns, indexed.end_ns)
    assert scanned.profile == indexed.profile
    assert scanned.library == indexed.library


@pytest.mark.parametrize("expected", MANIFEST, ids=_IDS)
def test_topic_extents_lie_within_the_file_and_reach_both_ends(
    expected: ExpectedRecording,
) -> None:
    summary = read_recording(expected.path)
    with_messages = [t for t in summary.topics if t.message_count]
    for topic in with_messages:
        assert topic.min_timestamp_ns is not None and topic.max_timestamp_ns is not None
        assert expected.start_ns <= topic.min_timestamp_ns <= topic.max_timestamp_ns
        assert topic.max_timestamp_ns <= expected.end_ns
    assert min(t.min_timestamp_ns or 0 for t in with_messages) == expected.start_ns
    assert max(t.max_timestamp_ns or 0 for t in with_messages) == expected.end_ns


def test_a_declared_channel_without_messages_is_a_topic_with_no_extent() -> None:
    summary = read_recording(BY_NAME["rosbag2_talker.mcap"].path)

    empty = summary.topic("/parameter_events")
    assert empty.message_count == 0
    assert empty.min_timestamp_ns is None and empty.max_timestamp_ns is None
    spec = empty.to_partition_spec()
    assert spec.message_count == 0
    assert list(spec.extents) == []
    assert summary.channel_count == 3
    assert len([t for t in summary.topics if t.message_count]) == 2


def test_out_of_order_messages_keep_exact_extents() -> None:
    expected = BY_NAME["lichtblick_example_logs_out_of_order.mcap"]
    summary = read_recording(expected.path)

    # All 111 mouse messages come first in the file, then /rosout restarts at the start time.
    rosout = summary.topic("/rosout")
    assert rosout.message_count == 1000
    assert rosout.min_timestamp_ns == expected.start_ns
    assert summary.topic("mouse").message_count == 111
    assert (summary.start_ns, summary.end_ns) == (expected.start_ns, expected.end_ns)
    assert summary.duration_ns == 3_108_000_000


def test_the_lz4_recording_is_read_through_its_index_and_by_decompressing_it() -> None:
    expected = BY_NAME["depthai_recording_lz4.mcap"]
    for use_index in (True, False):
        summary = read_recording(expected.path, use_index=use_index)
        assert summary.topic("video").message_count == 124
        assert summary.topic("video").schema_name == "video"
        assert (summary.start_ns, summary.end_ns) == (expected.start_ns, expected.end_ns)


def test_topics_sharing_a_schema_stay_separate_topics() -> None:
    summary = read_recording(BY_NAME["evo_nav2_turtlebot.mcap"].path)

    assert summary.topic("/tf").schema_name == summary.topic("/tf_static").schema_name
    assert summary.topic("/tf_static").message_count == 1
    tf_static = summary.topic("/tf_static")
    assert tf_static.min_timestamp_ns == tf_static.max_timestamp_ns


def test_the_split_recording_spans_the_manifest_window() -> None:
    summaries = [read_recording(r.path) for r in SPLIT_RECORDING]

    assert min(s.start_ns or 0 for s in summaries) == SPLIT_START_NS
    assert max(s.end_ns or 0 for s in summaries) == SPLIT_END_NS
    assert sum(s.message_count for s in summaries) == SPLIT_MESSAGES
    assert SPLIT_END_NS - SPLIT_START_NS == 6_352_112_906
    for earlier, later in itertools.pairwise(summaries):
        assert earlier.end_ns is not None and later.start_ns is not None
        assert 0 < later.start_ns - earlier.end_ns < 3_000_000  # gaps of about 2 ms


def test_partition_specs_carry_one_extent_per_topic_with_messages() -> None:
    summary = read_recording(BY_NAME["owa_desktop_example.mcap"].path)
    specs = summary.partition_specs()

    assert [s.topic_name for s in specs] == [t.topic_name for t in summary.topics]
    for spec, topic in zip(specs, summary.topics, strict=True):
        assert spec.schema_name == topic.schema_name
        assert spec.message_encoding == "json"
        assert spec.message_count == topic.message_count
        assert [(e.min_timestamp_ns, e.max_timestamp_ns) for e in spec.extents] == [
            (topic.min_timestamp_ns, topic.max_timestamp_ns)
        ]


# Damaged and foreign files: see test_damaged_recordings.py.


# Synthetic files for the fallbacks ---------------------------------------------------------------


def _write(
    path: Path,
    messages: list[tuple[str, int]],
    *,
    topics: dict[str, int] | None = None,
    **writer_options: Any,
) -> None:
    """Write an MCAP file with ``(channel key, log_time)`` messages.

    ``topics`` maps channel keys (``"a"``, ``"a2"``...) to topic names' channel layout: the
    key's first letter is the topic, so ``a`` and ``a2`` are two channels of topic ``/a``.
    """
    stream = io.BytesIO()
    writer = Writer(stream, **writer_options)
    writer.start(profile="test", library="flightlog-tests")
    schema_id = writer.register_schema(name="test/Msg", encoding="jsonschema", data=b"{}")
    channel_ids: dict[str, int] = {}
    for key in topics or {k: 0 for k, _ in messages}:
        channel_ids[key] = writer.register_channel(
            topic=f"/{key[0]}", message_encoding="json", schema_id=schema_id
        )
    for sequence, (key, log_time) in enumerate(messages):
        writer.add_message(
            channel_id=channel_ids[key],
            log_time=log_time,
            publish_time=log_time,
            data=json.dumps({"n": sequence}).encode(),
            sequence=sequence,
        )
    writer.finish()  # type: ignore[no-untyped-call]  # mcap leaves Writer.finish unannotated
    path.write_bytes(stream.getvalue())


_MESSAGES = [("a", 500), ("b", 100), ("a", 300), ("b", 900), ("a", 700), ("c", 50)]


def _check_synthetic(summary: RecordingSummary) -> None:
    assert (summary.start_ns, summary.end_ns) == (50, 900)
    assert [(t.topic_name, t.message_count) for t in summary.topics] == [
        ("/a", 3),
        ("/b", 2),
        ("/c", 1),
    ]
    assert summary.topic("/a").min_timestamp_ns == 300
    assert summary.topic("/a").max_timestamp_ns == 700
    assert summary.topic("/b").min_timestamp_ns == 100
    assert summary.topic("/b").max_timestamp_ns == 900


def test_a_file_without_a_summary_is_scanned(tmp_path: Path) -> None:
    path = tmp_path / "no-summary.mcap"
    _write(
        path,
        _MESSAGES,
        index_types=IndexType.NONE,
        use_statistics=False,
        repeat_channels=False,
        repeat_schemas=False,
        use_summary_offsets=False,
    )

    summary = read_recording(path)

    assert summary.source == "scan"
    _check_synthetic(summary)


def test_a_file_without_chunks_is_scanned(tmp_path: Path) -> None:
    path = tmp_path / "unchunked.mcap"
    _write(path, _MESSAGES, use_chunking=False)

    summary = read_recording(path)

    assert summary.source == "scan"
    _check_synthetic(summary)


def test_a_file_without_message_indexes_is_scanned(tmp_path: Path) -> None:
    path = tmp_path / "no-message-index.mcap"
    _write(path, _MESSAGES, index_types=IndexType.CHUNK)

    summary = read_recording(path)

    assert summary.source == "scan"
    _check_synthetic(summary)


def test_message_indexes_of_many_chunks_give_exact_extents(tmp_path: Path) -> None:
    path = tmp_path / "many-chunks.mcap"
    _write(path, _MESSAGES, chunk_size=1, compression=CompressionType.LZ4)

    summary = read_recording(path)

    assert summary.source == "index"
    _check_synthetic(summary)


def test_channels_sharing_a_topic_are_merged_into_one_topic(tmp_path: Path) -> None:
    path = tmp_path / "shared-topic.mcap"
    messages = [("a", 10), ("a2", 5), ("a", 20), ("a2", 40), ("b", 30)]
    _write(path, messages, topics={"a": 0, "a2": 0, "b": 0, "d": 0})

    for use_index in (True, False):
        summary = read_recording(path, use_index=use_index)
        assert summary.channel_count == 4
        assert [(t.topic_name, t.message_count) for t in summary.topics] == [
            ("/a", 4),
            ("/b", 1),
            ("/d", 0),
        ]
        merged = summary.topic("/a")
        assert (merged.min_timestamp_ns, merged.max_timestamp_ns) == (5, 40)
        assert summary.topic("/d").min_timestamp_ns is None
