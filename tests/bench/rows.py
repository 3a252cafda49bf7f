"""The bench's table rows: a figure, its baseline and their ratio against the target."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Row:
    """One line of the table: a figure, its baseline and their ratio against the target."""

    figure: str
    value: float | None
    unit: str
    baseline: float | None = None
    baseline_unit: str = ""
    ratio: float | None = None
    target: str = ""
    met: bool | None = None
    note: str = ""
