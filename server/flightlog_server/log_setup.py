"""Structured logs: one JSON object per line, each with the request id of the call it serves.

Everything the process reports goes through the same formatter, so that stderr stays one JSON
object per line: the libraries' loggers (Alembic, pgserver, asyncio), Python warnings, and
exceptions that nothing caught.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from types import TracebackType

from flightlog_server import request_context

# Libraries that log their every step at INFO: pgserver each command it runs with all of its
# output (initdb's included), Alembic each plugin it loads. Shown with --log-level DEBUG only.
_CHATTY = ("pgserver", "alembic.runtime.plugins")

log = logging.getLogger("flightlog")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": request_context.request_id.get(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def _log_uncaught(
    kind: type[BaseException], value: BaseException, traceback: TracebackType | None
) -> None:
    log.critical("uncaught exception: %s", value, exc_info=(kind, value, traceback))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is None:
        return
    log.critical(
        "uncaught exception in thread %s: %s",
        args.thread.name if args.thread else "?",
        args.exc_value,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )


def configure_logging(level: str | None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel((level or "INFO").upper())
    for name in _CHATTY:
        logging.getLogger(name).setLevel(
            logging.NOTSET if root.level <= logging.DEBUG else logging.WARNING
        )
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread
