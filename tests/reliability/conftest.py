"""The reliability suite reports its figures (operations run, faults injected, inputs tried,
violations found) at the end of the run, in a section of pytest's summary; and the private
PostgreSQL that tests which stop the database own."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.helpers import FIGURES
from tests.reliability.private_postgres import PrivatePostgres


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    """A running PostgreSQL cluster of the test's own (never the shared server)."""
    # Not pytest's tmp_path: its parent folders are private to root, and PostgreSQL runs as the
    # 'postgres' user when the tests run as root.
    root = Path(tempfile.mkdtemp(prefix="flightlog-private-"))
    try:
        cluster = PrivatePostgres(root)
        cluster.start()
        yield cluster
        cluster.destroy()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if FIGURES:
        terminalreporter.section("reliability figures")
        for name, figure in FIGURES.items():
            terminalreporter.write_line(f"{name}: {figure}")
