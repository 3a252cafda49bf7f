"""The MCAP recordings of the tests and the facts their MANIFEST.md states about them.

Four of them ship in the repository (``examples/recordings``, see ``examples/README.md``) and are
read from there. The others are the shared recordings, read from ``FLIGHTLOG_RECORDINGS_DIR``
when set, else from ``../shared/data/recordings`` next to the repository root; a test that needs
one is skipped, saying so, when that folder is absent (a fresh clone).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest
from mcap.reader import make_reader
from mcap.records import Channel, Chunk, Message
from mcap.stream_reader import StreamReader, breakup_chunk
from mcap.writer import CompressionType, IndexType, Writer

REPO_ROOT = Path(__file__).resolve().parents[2]


# The recordings shipped in the repository (examples/recordings, Apache-2.0), which every clone
# has: the damaged-recording tests build their fixtures from them.

EXAMPLES_DIR = REPO_ROOT / "examples" / "recordings"
"""The example recordings of the repository (see examples/README.md)."""

EXAMPLE_FILES = (
    "rosbag2_multiple_files_0.mcap",
    "rosbag2_multiple_files_1.mcap",
    "rosbag2_multiple_files_2.mcap",
    "rosbag2_talker.mcap",
)


def recordings_dir() -> Path:
    """The folder holding the shared recordings."""
    configured = os.environ.get("FLIGHTLOG_RECORDINGS_DIR")
    if configured:
        return Path(configured).expanduser().resolve()
    return (REPO_ROOT.parent / "shared" / "data" / "recordings").resolve()


@dataclasses.dataclass(frozen=True)
class ExpectedTopic:
    """A topic as the manifest lists it."""

    name: str
    schema_name: str
    message_count: int


@dataclasses.dataclass(frozen=True)
class ExpectedRecording:
    """A recording as the manifest describes it."""

    file_name: str
    size_bytes: int
    start_ns: int
    end_ns: int
    channel_count: int
    message_count: int
    message_encoding: str
    profile: str
    topics: tuple[ExpectedTopic, ...]

    @property
    def path(self) -> Path:
        """The file: the repository's copy for an example, else the shared one (the test is
        skipped when the shared recordings are absent)."""
        if self.file_name in EXAMPLE_FILES:
            return EXAMPLES_DIR / self.file_name
        return shared_recording(self.file_name)


def shared_recording(file_name: str) -> Path:
    """A shared recording's path; skips the calling test when the shared folder is absent."""
    folder = recordings_dir()
    if not (folder / "MANIFEST.md").is_file():
        pytest.skip(f"needs the shared recordings: set FLIGHTLOG_RECORDINGS_DIR (not in {folder})")
    return folder / file_name


def _t(name: str, schema: str, count: int) -> ExpectedTopic:
    return ExpectedTopic(name, schema, count)


MANIFEST: tuple[ExpectedRecording, ...] = (
    ExpectedRecording(
        "evo_nav2_turtlebot.mcap",
        505_395,
        1778234353382747000,
        1778234450738043000,
        4,
        8_197,
        "cdr",
        "ros2",
        (
            _t("/odom", "nav_msgs/msg/Odometry", 2639),
            _t("/tf", "tf2_msgs/msg/TFMessage", 5422),
            _t("/tf_static", "tf2_msgs/msg/TFMessage", 1),
            _t("/amcl_pose", "geometry_msgs/msg/PoseWithCovarianceStamped", 135),
        ),
    ),
    ExpectedRecording(
        "rosbag2_talker.mcap",
        12_880,
        1585866235112411371,
        1585866239643508139,
        3,
        20,
        "cdr",
        "ros2",
        (
            _t("/rosout", "rcl_interfaces/msg/Log", 10),
            _t("/parameter_events", "rcl_interfaces/msg/ParameterEvent", 0),
            _t("/topic", "std_msgs/msg/String", 10),
        ),
    ),
    ExpectedRecording(
        "rosbag2_multiple_files_0.mcap",
        32_605,
        1616653333034080451,
        1616653335680263369,
        1,
        1_324,
        "cdr",
        "ros2",
        (_t("/chatter", "std_msgs/msg/String", 1324),),
    ),
    ExpectedRecording(
        "rosbag2_multiple_files_1.mcap",
        32_609,
        1616653335682137991,
        1616653338328104450,
        1,
        1_324,
        "cdr",
        "ros2",
        (_t("/chatter", "std_msgs/msg/String", 1324),),
    ),
    ExpectedRecording(
        "rosbag2_multiple_files_2.mcap",
        13_926,
        1616653338330343018,
        1616653339386193357,
        1,
        529,
        "cdr",
        "ros2",
        (_t("/chatter", "std_msgs/msg/String", 529),),
    ),
    ExpectedRecording(
        "owa_desktop_example.mcap",
        38_404,
        1751017792129876000,
        1751017802487310900,
        6,
        864,
        "json",
        "owa",
        (
            _t("window", "desktop/WindowInfo", 11),
            _t("keyboard/state", "desktop/KeyboardState", 11),
            _t("mouse/state", "desktop/MouseState", 11),
            _t("screen", "desktop/ScreenCaptured", 590),
            _t("mouse", "desktop/MouseEvent", 209),
            _t("keyboard", "desktop/KeyboardEvent", 32),
        ),
    ),
    ExpectedRecording(
        "depthai_recording_lz4.mcap",
        10_396,
        1732624798239825408,
        1732624802338280745,
        1,
        124,
        "json",
        "",
        (_t("video", "video", 124),),
    ),
    ExpectedRecording(
        "lichtblick_example_logs_out_of_order.mcap",
        35_343,
        1740566235448000000,
        1740566238556000000,
        2,
        1_111,
        "json",
        "",
        (
            _t("mouse", "MouseEvent", 111),
            _t("/rosout", "foxglove.Log", 1000),
        ),
    ),
)

BY_NAME = {recording.file_name: recording for recording in MANIFEST}

SPLIT_RECORDING = tuple(BY_NAME[f"rosbag2_multiple_files_{i}.mcap"] for i in range(3))
"""The three files of the split rosbag2 recording, in order."""

SPLIT_START_NS = 1616653333034080451
SPLIT_END_NS = 1616653339386193357
SPLIT_MESSAGES = 3_177


def rechunked(
    source: Path,
    target: Path,
    *,
    chunk_size: int = 2048,
    compression: CompressionType = CompressionType.ZSTD,
    with_summary: bool = True,
    library: str | None = None,
) -> Path:
    """Rewrite a recording as a long one is written: in many small chunks, every schema,
    channel and message kept, in file order. ``with_summary=False`` writes no summary section
    (and no message indexes), as some recorders do; the footer is still there. ``library``
    replaces the header's library string (the same length gives another file of the same
    size)."""
    summary_options: dict[str, Any] = {}
    if not with_summary:
        summary_options = {
            "index_types": IndexType.NONE,
            "use_statistics": False,
            "use_summary_offsets": False,
            "repeat_channels": False,
            "repeat_schemas": False,
        }
    with source.open("rb") as stream, target.open("wb") as out:
        reader = make_reader(stream)
        header = reader.get_header()
        summary = reader.get_summary()
        assert summary is not None
        writer = Writer(out, chunk_size=chunk_size, compression=compression, **summary_options)
        writer.start(profile=header.profile, library=library or header.library)
        schema_ids = {
            schema.id: writer.register_schema(schema.name, schema.encoding, schema.data)
            for schema in summary.schemas.values()
        }
        channel_ids = {
            channel.id: writer.register_channel(
                channel.topic,
                channel.message_encoding,
                schema_ids.get(channel.schema_id, 0),
                channel.metadata,
            )
            for channel in summary.channels.values()
        }
        for _, channel, message in reader.iter_messages(log_time_order=False):
            writer.add_message(
                channel_id=channel_ids[channel.id],
                log_time=message.log_time,
                data=message.data,
                publish_time=message.publish_time,
                sequence=message.sequence,
            )
        writer.finish()  # type: ignore[no-untyped-call]  # mcap leaves it unannotated
    return target


def cut_copy(intact: Path, cut: int, folder: Path) -> Path:
    """The first ``cut`` bytes of ``intact``, as a recorder that stopped there leaves them."""
    target = folder / f"cut-{cut}-{intact.name}"
    target.write_bytes(intact.read_bytes()[:cut])
    return target


@dataclasses.dataclass(frozen=True)
class TopicContent:
    """What a topic's messages amount to: how many, and their log-time extent."""

    count: int
    min_ns: int
    max_ns: int


def _chunks_and_topics(recording: Path) -> tuple[list[tuple[int, int, Chunk]], dict[int, str]]:
    """Every chunk of an intact recording with its ``(start, end)`` byte offsets, and the topic
    of every channel, as the mcap library's stream reader finds them."""
    chunks: list[tuple[int, int, Chunk]] = []
    topics: dict[int, str] = {}
    with recording.open("rb") as stream:
        start = 8  # after the leading magic
        for record in StreamReader(stream, emit_chunks=True).records:
            end = stream.tell()  # the reader has just read the whole record
            if isinstance(record, Chunk):
                chunks.append((start, end, record))
                records = breakup_chunk(record)
            else:
                records = [record]
            topics.update((r.id, r.topic) for r in records if isinstance(r, Channel))
            start = end
    return chunks, topics


def chunk_spans(intact: Path) -> list[tuple[int, int]]:
    """``(start, end)`` byte offsets of every chunk of an intact recording."""
    return [(start, end) for start, end, _ in _chunks_and_topics(intact)[0]]


def messages_before(intact: Path, cut: int) -> dict[str, TopicContent]:
    """The reference for a damaged copy of ``intact`` that is whole up to byte ``cut``: per
    topic, the messages a full read of the intact file yields whose chunk lies wholly before
    ``cut``, as the mcap library decodes them, independently of the code under test."""
    chunks, topics = _chunks_and_topics(intact)
    per_topic: dict[str, list[int]] = {}
    for _, end, chunk in chunks:
        if end <= cut:
            for record in breakup_chunk(chunk):
                if isinstance(record, Message):
                    per_topic.setdefault(topics[record.channel_id], []).append(record.log_time)
    return {
        topic: TopicContent(len(times), min(times), max(times))
        for topic, times in per_topic.items()
    }
