"""The shared MCAP recordings and the facts their MANIFEST.md states about them.

The folder is ``FLIGHTLOG_RECORDINGS_DIR`` when set, else ``../shared/data/recordings`` next to
the repository root.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


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
        return recordings_dir() / self.file_name


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
