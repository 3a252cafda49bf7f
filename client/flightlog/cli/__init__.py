"""The ``flightlog`` command-line tool.

``flightlog sessions|devices|datasets|files|fields|ingest ...``; run ``flightlog --help``.
Results print on stdout as aligned tables, or with ``--json`` as one JSON object per line. Errors
print on stderr as one ``error: ...`` line, or with ``--json`` as one JSON object per line
(``{"error": {"code", "reason", "message", "field_violations", "metadata"}}``). The exit code
says what happened: 0 ok, 1 error, 2 usage or configuration, 3 not found, 4 invalid argument,
5 unauthenticated or permission denied, 6 conflict, 7 unavailable, 8 partial failure,
9 nothing ingested.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from flightlog.cli._app import build_parser, exit_code_for, run

__all__ = ["build_parser", "exit_code_for", "main", "run"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``flightlog`` command; returns the exit code."""
    try:
        code = run(argv)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        # The reader went away (``flightlog sessions ls | head``): stop quietly, and keep
        # Python from complaining again while flushing at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
