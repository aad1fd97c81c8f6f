"""Structured logs: one JSON object a line for machines, plain text for a terminal.

Every reviewed pod is a log line, so a line must be cheap: lines written while the event loop
is busy are gathered and written together at the end of its turn (one system call for many
reviews under load, at once when idle), and the timestamp text is reused within a second.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import Any, TextIO

import orjson

LOGGER = "concurrency_injector"
# Attributes every LogRecord has; anything else was passed in `extra=` and is a field.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "color_message",  # uvicorn's terminal-coloured copy of the message
}


class JsonFormatter(logging.Formatter):
    _second = -1
    _prefix = ""

    def _time(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{int((created - second) * 1000):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self._time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(
            f"{k}={v}" for k, v in vars(record).items() if k not in _STANDARD and v is not None
        )
        line = f"{record.levelname.lower():7} {record.getMessage()}" + (
            f" {fields}" if fields else ""
        )
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class LoopBatchingHandler(logging.StreamHandler[TextIO]):
    """A stream handler that writes once per event-loop turn instead of once per line.

    Outside a running loop (start-up, worker threads, shutdown) it writes at once, so nothing
    is held back where no turn will come to flush it.
    """

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._pending: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        self.emit_line(line)

    def emit_line(self, line: str) -> None:
        """Queue a formatted line (written at the end of this loop turn, or now)."""
        self.acquire()
        try:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self._write([*self._pending, line])
                self._pending.clear()
                return
            if not self._pending:
                loop.call_soon(self.flush)
            self._pending.append(line)
        finally:
            self.release()

    def flush(self) -> None:
        self.acquire()
        try:
            lines, self._pending = self._pending, []
            self._write(lines)
        finally:
            self.release()

    def _write(self, lines: list[str]) -> None:
        if lines:
            self.stream.write("".join(lines))
        if hasattr(self.stream, "flush"):
            self.stream.flush()


# The handler JSON lines go to, once setup() chose JSON: `info_json` writes to it directly.
_json_handler: LoopBatchingHandler | None = None


def info_json(log: logging.Logger, msg: str, fields: dict[str, Any], more: bytes) -> None:
    """An info line with `fields` and `more` (a serialised JSON object, such as a cached summary).

    The one line per reviewed pod goes this way: with JSON logs it is assembled as bytes and
    handed to the handler without a LogRecord; otherwise it is an ordinary log call.
    """
    if not log.isEnabledFor(logging.INFO):
        return
    handler = _json_handler
    if handler is None or log.handlers or not log.propagate:
        log.info(msg, extra={**fields, **orjson.loads(more)})
        return
    formatter = handler.formatter
    assert isinstance(formatter, JsonFormatter)
    head = orjson.dumps(
        {
            "time": formatter._time(time.time()),
            "level": "info",
            "logger": log.name,
            "msg": msg,
            **fields,
        }
    )
    line = head[:-1] + b"," + more[1:] if len(more) > 2 else head
    handler.emit_line(line.decode() + handler.terminator)


def setup(level: str = "info", fmt: str = "auto") -> None:
    """Configure the root handler once, for our logger and uvicorn's."""
    global _json_handler
    if fmt == "auto":
        fmt = "text" if sys.stderr.isatty() else "json"
    handler = LoopBatchingHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    _json_handler = handler if fmt == "json" else None
    # Not recorded by the formatters; skipping them keeps a log line cheap on the admission path
    # (the "Optimization" section of the logging documentation).
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # Access logs would double every mutation line; the mutation line says more.
    logging.getLogger("uvicorn.access").disabled = True


def brief(exc: BaseException) -> str:
    """An exception in one short line, for a message (a client error's first line is enough)."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]


def get(name: str = "") -> logging.Logger:
    return logging.getLogger(f"{LOGGER}.{name}" if name else LOGGER)
