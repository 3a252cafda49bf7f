"""The reliability suite reports its figures (operations run, faults injected, inputs tried,
violations found) at the end of the run, in a section of pytest's summary."""

from __future__ import annotations

from typing import Any

import pytest

from tests.reliability.helpers import FIGURES


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if FIGURES:
        terminalreporter.section("reliability figures")
        for name, figure in FIGURES.items():
            terminalreporter.write_line(f"{name}: {figure}")
