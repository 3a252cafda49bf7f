"""Output of the ``flightlog`` command: aligned tables for people, JSON lines for scripts.

Lists stream: rows are printed as they arrive from the server, a chunk at a time, without
waiting for the end of the listing. A chunk is whatever has arrived when the printer is ready
(in practice one streamed batch); the header is printed once, before the first chunk.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import queue
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, Generic, TypeVar

from rich.console import Console
from rich.table import Table
from rich.text import Text

from flightlog._mcap import RecordingError
from flightlog.errors import FlightlogError
from flightlog.session import Session

__all__ = [
    "Column",
    "Output",
    "arrivals",
    "bar",
    "error_object",
    "format_bytes",
    "format_duration",
    "format_duration_ns",
    "format_ns",
    "to_jsonable",
]

_T = TypeVar("_T")


def to_jsonable(value: Any) -> Any:
    """Convert records (dataclasses, sessions, datetimes, paths...) to JSON-compatible values.

    Integers stay integers, including nanosecond timestamps beyond 2**53.
    """
    if isinstance(value, Session):
        return to_jsonable(value.record)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    return value


def format_ns(ns: int | None) -> str:
    """Format Unix-epoch nanoseconds as an ISO 8601 UTC time with nanoseconds, or ``-``."""
    if ns is None:
        return "-"
    seconds, nanos = divmod(ns, 1_000_000_000)
    try:
        moment = dt.datetime.fromtimestamp(seconds, dt.UTC)
    except (OverflowError, OSError, ValueError):
        return str(ns)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{nanos:09d}Z"


def format_duration(start_ns: int | None, end_ns: int | None) -> str:
    """Format the span between two nanosecond times for people (see
    :func:`format_duration_ns`), or ``-``."""
    if start_ns is None or end_ns is None:
        return "-"
    return format_duration_ns(end_ns - start_ns)


def format_duration_ns(ns: int) -> str:
    """Format nanoseconds for people, to about four significant digits: ``850ns``,
    ``12.5µs``, ``3.2ms``, ``4.531s``, ``1m 37.4s``, ``2h 03m 10s``, ``3d 04h 12m``.

    Tables use it; ``--json`` output keeps the exact nanoseconds.
    """
    sign, ns = ("-", -ns) if ns < 0 else ("", ns)
    if ns < 1_000:
        text = f"{ns}ns"
    elif ns < 1_000_000:
        text = f"{ns / 1e3:.1f}µs"
    elif ns < 1_000_000_000:
        text = f"{ns / 1e6:.1f}ms"
    elif ns < 60 * 1_000_000_000:
        text = f"{ns / 1e9:.3f}s"
    else:
        seconds = ns / 1e9
        minutes, rest = divmod(seconds, 60)
        if minutes < 60:
            text = f"{int(minutes)}m {rest:.1f}s"
        else:
            hours, minutes = divmod(int(minutes), 60)
            if hours < 24:
                text = f"{hours}h {minutes:02d}m {int(rest):02d}s"
            else:
                days, hours = divmod(hours, 24)
                text = f"{days}d {hours:02d}h {minutes:02d}m"
    return sign + text


def format_bytes(size: int) -> str:
    """Format a byte count for people (``12.6 KiB``)."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def format_datetime(value: dt.datetime | None) -> str:
    """Format a datetime as ISO 8601 UTC to the second, or ``-``."""
    if value is None:
        return "-"
    return f"{value.astimezone(dt.UTC):%Y-%m-%dT%H:%M:%SZ}"


@dataclasses.dataclass(frozen=True)
class Column(Generic[_T]):
    """A column of a human-readable table: its header and how to render a cell."""

    header: str
    cell: Callable[[_T], object]
    justify: str = "left"


_END = object()


def arrivals(items: Iterable[_T]) -> Iterator[list[_T]]:
    """Regroup an iterator into the chunks that are ready together.

    A reader thread pulls ``items``; each chunk holds at least one item plus every item that
    arrived while the previous chunk was being printed. A streamed batch, whose items are
    yielded back to back, therefore comes out as one chunk, and nothing waits for the end of
    the stream. An exception raised by ``items`` is re-raised here.
    """
    inbox: queue.Queue[object] = queue.Queue(maxsize=10_000)
    stop = threading.Event()

    def pump() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                inbox.put(item)
            inbox.put(_END)
        except BaseException as error:  # noqa: BLE001  # handed to the consumer, which re-raises
            inbox.put(_Failure(error))

    thread = threading.Thread(target=pump, name="flightlog-list", daemon=True)
    thread.start()
    try:
        while True:
            chunk: list[_T] = []
            entry = inbox.get()
            while True:
                if entry is _END:
                    if chunk:
                        yield chunk
                    return
                if isinstance(entry, _Failure):
                    if chunk:
                        yield chunk
                    raise entry.error
                chunk.append(entry)  # type: ignore[arg-type]  # only items and markers are queued
                try:
                    entry = inbox.get_nowait()
                except queue.Empty:
                    break
            yield chunk
    finally:
        stop.set()


@dataclasses.dataclass(frozen=True)
class _Failure:
    """An exception raised by the iterator read in :func:`arrivals`."""

    error: BaseException


class Output:
    """Prints results as tables or JSON lines.

    Args:
        json_mode: Print one JSON object per line instead of tables.
        stdout: Where results go.
        stderr: Where errors, warnings and progress go; default: whatever ``sys.stderr`` is
            when writing, so that a progress display that redirects it prints them above
            itself.
    """

    def __init__(
        self,
        json_mode: bool,
        stdout: IO[str] | None = None,
        stderr: IO[str] | None = None,
    ) -> None:
        self.json_mode = json_mode
        self.stdout = stdout or sys.stdout
        self._stderr = stderr
        terminal = self.stdout.isatty()
        self._terminal = terminal
        # Off a terminal, rich would squeeze tables into 80 columns; let them be as wide as
        # their content instead.
        self.console = Console(
            file=self.stdout,
            width=None if terminal else 100_000,
            highlight=False,
            soft_wrap=not terminal,
        )

    @property
    def stderr(self) -> IO[str]:
        """Where errors, warnings and progress go."""
        return self._stderr or sys.stderr

    def json(self, value: Any) -> None:
        """Print one JSON object on a line and flush it."""
        self.stdout.write(json.dumps(to_jsonable(value), ensure_ascii=False) + "\n")
        self.stdout.flush()

    def error(self, message: str) -> None:
        """Print ``error: <message>`` on stderr, on one line."""
        self.stderr.write(f"error: {' '.join(message.splitlines())}\n")
        self.stderr.flush()

    def failure(self, error: BaseException, **context: object) -> None:
        """Report an error on stderr: one ``error: ...`` line, or with ``--json`` one JSON
        object ``{"error": {...}}`` (see :func:`error_object`) holding ``context`` too."""
        if self.json_mode:
            self.stderr.write(
                json.dumps({"error": {**error_object(error), **to_jsonable(context)}}) + "\n"
            )
            self.stderr.flush()
            return
        prefix = "".join(f"{value}: " for value in context.values())
        self.error(prefix + _one_line(error))

    def warning(self, message: str, **context: object) -> None:
        """Report a warning on stderr: one ``warning: ...`` line, or with ``--json`` one JSON
        object ``{"warning": {"message": ..., ...context}}``."""
        if self.json_mode:
            payload = {"message": message, **to_jsonable(context)}
            self.stderr.write(json.dumps({"warning": payload}) + "\n")
        else:
            prefix = "".join(f"{value}: " for value in context.values())
            self.stderr.write(f"warning: {' '.join((prefix + message).splitlines())}\n")
        self.stderr.flush()

    def info(self, message: str) -> None:
        """Print a human-readable line on stdout (nothing in JSON mode)."""
        if not self.json_mode:
            self.console.print(Text(message))

    def record(self, value: Any, fields: Sequence[tuple[str, object]]) -> None:
        """Print one record: a JSON object, or a two-column table of ``fields``."""
        if self.json_mode:
            self.json(value)
            return
        table = Table(box=None, show_header=False, pad_edge=False)
        table.add_column(style="bold", no_wrap=True)
        table.add_column(overflow="fold")
        for name, cell in fields:
            table.add_row(name, _cell_text(cell))
        self._print_table(table)

    def _print_table(self, table: Table) -> None:
        """Print a table and flush; off a terminal, without trailing padding."""
        if self._terminal:
            self.console.print(table)
        else:
            with self.console.capture() as captured:
                self.console.print(table)
            self.stdout.write(_strip_trailing_spaces(captured.get()))
        self.stdout.flush()

    def rows(self, items: Iterable[_T], columns: Sequence[Column[_T]]) -> int:
        """Print a listing as it streams and return the number of rows.

        JSON mode prints one object per line. Table mode prints aligned columns, chunk by
        chunk as rows arrive; column widths grow to fit later chunks, never truncating.
        """
        count = 0
        if self.json_mode:
            for item in items:
                self.json(item)
                count += 1
            return count
        widths = [len(column.header) for column in columns]
        header_done = False
        for chunk in arrivals(items):
            cells = [[_cell_text(column.cell(item)) for column in columns] for item in chunk]
            for row in cells:
                for i, text in enumerate(row):
                    widths[i] = max(widths[i], text.cell_len)
            table = Table(box=None, show_header=not header_done, pad_edge=False)
            for column, width in zip(columns, widths, strict=True):
                table.add_column(
                    column.header,
                    min_width=width,
                    no_wrap=True,
                    justify=column.justify,  # type: ignore[arg-type]
                    header_style="bold",
                )
            for row in cells:
                table.add_row(*row)
            self._print_table(table)
            header_done = True
            count += len(chunk)
        return count


def error_object(error: BaseException) -> dict[str, Any]:
    """The JSON form of an error: ``code`` (a gRPC status code name), ``reason`` (an
    UPPER_SNAKE cause: the server's ``ErrorInfo`` reason, or the client's own such as
    ``SERVER_UNREACHABLE``, ``USAGE``, ``RECORDING_TRUNCATED``), ``message``,
    ``field_violations`` (``[{"field": ..., "description": ...}]``), ``metadata`` and, for an
    internal error, ``request_id``."""
    if isinstance(error, FlightlogError):
        result: dict[str, Any] = {
            "code": error.code.name,
            "reason": error.reason,
            "message": error.message,
            "field_violations": [
                {"field": field, "description": why} for field, why in error.field_violations
            ],
            "metadata": error.metadata,
        }
        if error.request_id:
            result["request_id"] = error.request_id
        return result
    if isinstance(error, RecordingError):
        code, reason, message = "INVALID_ARGUMENT", error.error_reason, error.reason
    elif isinstance(error, KeyboardInterrupt):
        code, reason, message = "CANCELLED", "INTERRUPTED", "interrupted"
    else:
        code, reason, message = "INVALID_ARGUMENT", "USAGE", str(error)
    return {
        "code": code,
        "reason": reason,
        "message": message,
        "field_violations": [],
        "metadata": {},
    }


def _one_line(error: BaseException) -> str:
    """The human form of an error, on one line."""
    if isinstance(error, KeyboardInterrupt):
        return "interrupted"
    if isinstance(error, RecordingError):
        return error.reason  # its path is given as context
    return str(error)


_EIGHTHS = " ▏▎▍▌▋▊▉"


def bar(value: float | None, low: float, high: float, width: int = 30) -> Text:
    """A horizontal bar from zero to ``value`` on a scale from ``low`` to ``high`` (which
    include zero), ``width`` cells at most, drawn with eighth-block characters; empty for
    None. Negative values extend left of zero."""
    if value is None or high <= low:
        return Text("")
    scale = width / (high - low)
    start = (min(0.0, value) - low) * scale
    end = (max(0.0, value) - low) * scale
    lead = round(start)
    eighths = max(0, round((end - lead) * 8))
    full, part = divmod(eighths, 8)
    text = " " * lead + "█" * full + (_EIGHTHS[part] if part else "")
    return Text(text.rstrip(), style="cyan")


def _strip_trailing_spaces(text: str) -> str:
    """Remove the padding rich leaves at the end of table lines."""
    return "".join(line.rstrip() + "\n" for line in text.splitlines())


def _cell_text(value: object) -> Text:
    """Render a cell value as text: ``-`` for None, comma-joined lists, JSON for dicts."""
    if value is None or value == "":
        return Text("-")
    if isinstance(value, Text):
        return value
    if isinstance(value, list | tuple):
        return Text(", ".join(str(v) for v in value) or "-")
    if isinstance(value, dict):
        return Text(json.dumps(to_jsonable(value), ensure_ascii=False) if value else "-")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return Text(json.dumps(to_jsonable(value), ensure_ascii=False))
    if isinstance(value, dt.datetime):
        return Text(format_datetime(value))
    return Text(str(value))
