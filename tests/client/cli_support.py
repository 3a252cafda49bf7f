"""Running the ``flightlog`` command in-process, for tests."""

from __future__ import annotations

import dataclasses
import io
import json
from typing import Any

from flightlog.cli import run


@dataclasses.dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    def json_lines(self) -> list[Any]:
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]

    def json(self) -> Any:
        (value,) = self.json_lines()
        return value


def flightlog(*args: str) -> Result:
    """Run the command in-process, as ``flightlog ARGS...``."""
    stdout, stderr = io.StringIO(), io.StringIO()
    code = run(list(args), stdout=stdout, stderr=stderr)
    return Result(code, stdout.getvalue(), stderr.getvalue())


def one_error_line(result: Result) -> str:
    """The single ``error: ...`` line the command printed on stderr."""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]
