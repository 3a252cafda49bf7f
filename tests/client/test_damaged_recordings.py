"""Reading damaged recordings (no server): what a crashed recorder leaves is salvaged, what has
nothing readable is refused, and the content hash covers every byte.

Fixtures are built from the real recordings shipped in ``examples/recordings``, rewritten in
small chunks as a long recording is (``rechunked``), then cut or damaged. The reference for a
cut is independent of the code under test: the messages that a full read of the intact file
yields whose chunk lies wholly before the cut (``messages_before``).
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flightlog.ingest import RecordingError, RecordingSummary, read_recording
from tests.client.recordings import (
    EXAMPLE_FILES,
    EXAMPLES_DIR,
    TopicContent,
    chunk_spans,
    cut_copy,
    messages_before,
    rechunked,
)

LONG = ("rosbag2_multiple_files_0.mcap", "rosbag2_talker.mcap")


@pytest.fixture(scope="module")
def long_recordings(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Example recordings rewritten in chunks of about 2 KiB (31 and 3 chunks)."""
    folder = tmp_path_factory.mktemp("rechunked")
    return {name: rechunked(EXAMPLES_DIR / name, folder / name) for name in LONG}


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A folder for damaged copies."""
    yield tmp_path_factory.mktemp("damaged")


def topics_with_messages(summary: RecordingSummary) -> dict[str, TopicContent]:
    return {
        t.topic_name: TopicContent(t.message_count, t.min_timestamp_ns, t.max_timestamp_ns)
        for t in summary.topics
        if t.message_count and t.min_timestamp_ns is not None and t.max_timestamp_ns is not None
    }


def assert_salvaged(damaged: Path, intact: Path, readable_up_to: int) -> RecordingSummary:
    """Reading ``damaged`` yields exactly the reference for a file whole up to the given byte,
    or refuses the file when that reference holds no message."""
    expected = messages_before(intact, readable_up_to)
    if not expected:
        with pytest.raises(RecordingError) as refused:
            read_recording(damaged)
        assert refused.value.kind in ("truncated", "corrupt", "empty")
        assert "nothing can be recovered" in refused.value.reason or refused.value.kind == "empty"
        raise _Refused
    summary = read_recording(damaged)
    assert topics_with_messages(summary) == expected
    assert summary.message_count == sum(t.count for t in expected.values())
    assert summary.start_ns == min(t.min_ns for t in expected.values())
    assert summary.end_ns == max(t.max_ns for t in expected.values())
    return summary


class _Refused(Exception):
    """The damaged file was refused, as the reference said it must be."""


@given(data=st.data())
@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
def test_a_recording_cut_anywhere_yields_the_messages_of_its_complete_chunks(
    long_recordings: dict[str, Path], scratch: Path, data: st.DataObject
) -> None:
    intact = long_recordings[data.draw(st.sampled_from(LONG), label="recording")]
    size = intact.stat().st_size
    spans = chunk_spans(intact)
    cut = data.draw(
        st.one_of(
            st.integers(0, size),
            st.integers(0, 200),  # the magic, the header, the first schemas and channels
            st.sampled_from([end for _, end in spans]),  # exactly after a chunk
            st.sampled_from([(start + end) // 2 for start, end in spans]),  # mid-chunk
            st.integers(spans[-1][1], size),  # the indexes, the summary, the footer
        ),
        label="cut",
    )
    damaged = cut_copy(intact, cut, scratch)

    if cut == size:
        summary = read_recording(damaged)
        assert summary.recovery is None
        assert topics_with_messages(summary) == messages_before(intact, size)
        return
    if cut < 8:
        with pytest.raises(RecordingError) as refused:
            read_recording(damaged)
        assert refused.value.kind == ("empty" if cut == 0 else "truncated")
        return
    try:
        summary = assert_salvaged(damaged, intact, cut)
    except _Refused:
        return
    assert summary.source == "scan"
    assert summary.recovery is not None
    assert summary.recovery.reason == "truncated"
    assert summary.recovery.size_bytes == cut
    last_complete_chunk_end = max(end for _, end in spans if end <= cut)
    assert last_complete_chunk_end <= summary.recovery.readable_bytes <= cut
    assert summary.content_sha256 == hashlib.sha256(damaged.read_bytes()).hexdigest()


def test_a_recording_cut_inside_its_header_is_refused_as_truncated(
    long_recordings: dict[str, Path], tmp_path: Path
) -> None:
    damaged = cut_copy(long_recordings["rosbag2_talker.mcap"], 30, tmp_path)  # 8 + 9 + 13

    with pytest.raises(RecordingError) as refused:
        read_recording(damaged)

    assert refused.value.kind == "truncated"
    assert refused.value.reason == (
        "truncated: ends inside a Header record at byte 8; no complete message precedes it, "
        "so nothing can be recovered"
    )
    assert "\n" not in str(refused.value)


def test_a_recording_cut_inside_its_first_chunk_has_nothing_to_recover(
    long_recordings: dict[str, Path], tmp_path: Path
) -> None:
    intact = long_recordings["rosbag2_multiple_files_0.mcap"]
    start, end = chunk_spans(intact)[0]
    damaged = cut_copy(intact, (start + end) // 2, tmp_path)

    with pytest.raises(RecordingError, match=f"ends inside a Chunk record at byte {start}"):
        read_recording(damaged)


def test_a_recording_cut_mid_chunk_recovers_the_chunks_before_it(
    long_recordings: dict[str, Path], tmp_path: Path
) -> None:
    intact = long_recordings["rosbag2_multiple_files_0.mcap"]
    spans = chunk_spans(intact)
    start, _ = spans[10]
    damaged = cut_copy(intact, start + 100, tmp_path)

    summary = assert_salvaged(damaged, intact, start + 100)

    assert summary.recovery is not None
    assert summary.recovery.detail == f"ends inside a Chunk record at byte {start}"
    assert summary.recovery.readable_bytes == start
    assert 0 < summary.message_count < 1324


def test_a_recording_without_its_footer_keeps_every_message_but_is_marked_truncated(
    long_recordings: dict[str, Path], tmp_path: Path
) -> None:
    intact = long_recordings["rosbag2_multiple_files_0.mcap"]
    damaged = cut_copy(intact, intact.stat().st_size - 8 - 30, tmp_path)  # footer cut short

    summary = read_recording(damaged)

    assert summary.message_count == 1324
    assert summary.recovery is not None
    assert summary.recovery.reason == "truncated"
    assert topics_with_messages(summary) == topics_with_messages(read_recording(intact))


@pytest.mark.parametrize("name", EXAMPLE_FILES)
def test_a_recording_written_without_a_summary_is_read_whole_and_not_marked(
    name: str, tmp_path: Path
) -> None:
    original = read_recording(EXAMPLES_DIR / name)
    stripped = rechunked(EXAMPLES_DIR / name, tmp_path / name, with_summary=False)

    summary = read_recording(stripped)

    assert summary.source == "scan"
    assert summary.recovery is None
    assert summary.topics == original.topics
    assert (summary.start_ns, summary.end_ns) == (original.start_ns, original.end_ns)


def test_a_recording_without_summary_cut_mid_way_is_salvaged(tmp_path: Path) -> None:
    name = "rosbag2_multiple_files_0.mcap"
    stripped = rechunked(EXAMPLES_DIR / name, tmp_path / "stripped.mcap", with_summary=False)
    cut = chunk_spans(stripped)[20][1] + 10

    summary = assert_salvaged(cut_copy(stripped, cut, tmp_path), stripped, cut)

    assert summary.recovery is not None and summary.recovery.reason == "truncated"


def test_a_corrupt_chunk_stops_the_scan_and_marks_the_recording_corrupt(
    long_recordings: dict[str, Path], tmp_path: Path
) -> None:
    intact = long_recordings["rosbag2_multiple_files_0.mcap"]
    start, end = chunk_spans(intact)[7]
    data = bytearray(intact.read_bytes())
    for offset in range(end - 40, end - 20):  # compressed bytes near the chunk's end
        data[offset] ^= 0xFF
    damaged = tmp_path / "corrupt.mcap"
    damaged.write_bytes(bytes(data))

    summary = read_recording(damaged, use_index=False)

    assert summary.recovery is not None
    assert summary.recovery.reason == "corrupt"
    assert summary.recovery.readable_bytes == start
    assert summary.recovery.detail.startswith(f"the Chunk record at byte {start} is damaged (")
    assert topics_with_messages(summary) == messages_before(intact, start)


def test_a_corrupt_first_chunk_leaves_nothing_to_recover(tmp_path: Path) -> None:
    data = bytearray((EXAMPLES_DIR / "rosbag2_talker.mcap").read_bytes())
    for offset in range(300, 340):  # inside the only, compressed chunk
        data[offset] ^= 0xFF
    damaged = tmp_path / "damaged.mcap"
    damaged.write_bytes(bytes(data))

    with pytest.raises(RecordingError) as refused:
        read_recording(damaged, use_index=False)

    assert refused.value.kind == "corrupt"
    assert refused.value.reason.startswith("corrupt: the Chunk record at byte ")


def test_an_empty_file_is_refused_as_empty(tmp_path: Path) -> None:
    path = tmp_path / "empty.mcap"
    path.write_bytes(b"")

    with pytest.raises(RecordingError) as refused:
        read_recording(path)

    assert (refused.value.kind, refused.value.reason) == ("empty", "empty file (0 bytes)")


@pytest.mark.parametrize(
    "content",
    [
        b"these are not the bytes you are looking for\n" * 10,
        b"hi\n",  # shorter than the magic
        b"\x89MCAQ0\r\n" + (EXAMPLES_DIR / "rosbag2_talker.mcap").read_bytes()[8:],  # one bad byte
        b"\x00" * 4096,
    ],
    ids=["text", "short text", "corrupt magic", "zeros"],
)
def test_a_file_that_does_not_start_with_the_magic_is_not_an_mcap_file(
    content: bytes, tmp_path: Path
) -> None:
    path = tmp_path / "notes.mcap"
    path.write_bytes(content)

    with pytest.raises(RecordingError) as refused:
        read_recording(path)

    assert refused.value.kind == "not_mcap"
    assert refused.value.reason.startswith("not an MCAP file")
    assert "truncated" not in refused.value.reason


def test_a_prefix_of_the_magic_is_truncated_not_foreign(tmp_path: Path) -> None:
    path = tmp_path / "stub.mcap"
    path.write_bytes(b"\x89MCA")

    with pytest.raises(RecordingError) as refused:
        read_recording(path)

    assert refused.value.kind == "truncated"


def test_a_missing_file_is_refused_as_unreadable(tmp_path: Path) -> None:
    with pytest.raises(RecordingError) as refused:
        read_recording(tmp_path / "absent.mcap")
    assert refused.value.kind == "unreadable"
    assert refused.value.reason.startswith("cannot read: ")


@pytest.mark.parametrize("use_index", [True, False], ids=["index", "scan"])
@pytest.mark.parametrize("name", EXAMPLE_FILES)
def test_the_content_hash_is_the_sha256_of_every_byte_read_once_in_order(
    name: str, use_index: bool
) -> None:
    path = EXAMPLES_DIR / name
    seen: list[int] = []

    summary = read_recording(path, use_index=use_index, on_progress=seen.append)

    assert summary.source == ("index" if use_index else "scan")
    assert summary.content_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert seen == sorted(seen)
    assert seen[-1] == path.stat().st_size
    assert all(b > a for a, b in itertools.pairwise(seen))


def test_a_damaged_recording_is_hashed_whole_damaged_tail_included(
    long_recordings: dict[str, Path], tmp_path: Path
) -> None:
    intact = long_recordings["rosbag2_multiple_files_0.mcap"]
    start, _ = chunk_spans(intact)[5]
    damaged = cut_copy(intact, start + 77, tmp_path)

    summary = read_recording(damaged)

    assert summary.content_sha256 == hashlib.sha256(damaged.read_bytes()).hexdigest()
