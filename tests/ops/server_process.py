"""A Flightlog server as a separate process, started the way operators start it.

``flightlog_server(...)`` runs ``python -m flightlog_server ARGS --bind BIND`` with its stdout and
stderr in files, so that a test can read the log while the process runs and after it ends.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flightlog_server.app import SERVICE_NAMES
from tests.reliability.helpers import health, poll
from tests.reliability.private_postgres import free_port

HEALTH_NAMES = ("", *SERVICE_NAMES)
# Starting a Python process that imports gRPC and SQLAlchemy takes seconds on a busy machine;
# these are deadlines for what must happen, not expected durations.
START_S = 60.0
EXIT_S = 30.0


@dataclass
class ServerProcess:
    """A ``python -m flightlog_server`` process; its stdout and stderr go to files."""

    process: subprocess.Popen[bytes]
    folder: Path
    target: str

    @property
    def stdout(self) -> str:
        return (self.folder / "stdout").read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return (self.folder / "stderr").read_text(errors="replace")

    def log(self) -> list[dict[str, Any]]:
        """Every stderr line, each of which must be a JSON object."""
        return json_lines(self.stderr)

    def messages(self, level: str | None = None) -> list[str]:
        return [e["message"] for e in self.log() if level is None or e["level"] == level]

    def exit_code(self, within: float = EXIT_S) -> int:
        try:
            return self.process.wait(within)
        except subprocess.TimeoutExpired:
            message = f"still running after {within} s; stderr:\n{self.stderr}"
            raise AssertionError(message) from None

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        self.process.send_signal(sig)
        return self.exit_code()

    def wait_for_health(self, status: int, services: Sequence[str] = HEALTH_NAMES) -> float:
        def reached() -> bool:
            assert self.process.poll() is None, f"the server exited; stderr:\n{self.stderr}"
            return all(health(self.target, name) == status for name in services)

        return poll(reached, START_S, f"health {status} for {services}")

    def wait_for_line(self, text: str, times: int = 1) -> None:
        """Waits until ``times`` stderr lines hold ``text``."""

        def logged() -> bool:
            assert self.process.poll() is None, f"the server exited; stderr:\n{self.stderr}"
            return self.stderr.count(text) >= times

        poll(logged, START_S, f"{times} log line(s) with {text!r}")

    def wait_for_output(self, text: str) -> None:
        """Waits until stdout holds ``text``."""

        def printed() -> bool:
            assert self.process.poll() is None, f"the server exited; stderr:\n{self.stderr}"
            return text in self.stdout

        poll(printed, START_S, f"{text!r} on stdout")


def json_lines(text: str) -> list[dict[str, Any]]:
    entries = []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            raise AssertionError(f"not a JSON line on stderr: {line!r}") from None
        assert isinstance(entry, dict), line
        assert {"time", "level", "logger", "message"} <= entry.keys(), line
        entries.append(entry)
    return entries


@contextmanager
def flightlog_server(
    *args: str, bind: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> Iterator[ServerProcess]:
    """Runs ``python -m flightlog_server ARGS --bind BIND`` (in ``env``, else this process's
    environment); it is killed if still running at the end."""
    folder = Path(tempfile.mkdtemp(prefix="flightlog-startup-out-"))
    with (folder / "stdout").open("wb") as out, (folder / "stderr").open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "flightlog_server", *args, "--bind", bind],
            stdout=out,
            stderr=err,
            cwd=cwd,
            env=env,
        )
    try:
        yield ServerProcess(process, folder, bind)
    finally:
        if process.poll() is None:
            # SIGTERM first: killing the parent of --workers would leave its workers behind.
            process.terminate()
            try:
                process.wait(EXIT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(EXIT_S)
        shutil.rmtree(folder, ignore_errors=True)


def loopback() -> str:
    """A free port of 127.0.0.1, as a --bind address."""
    return f"127.0.0.1:{free_port()}"
