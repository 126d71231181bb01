"""Structured logs: one JSON object per line, with the session id of the call being served.

Standard library only, so domain code may import it. The servicers (and the orchestrator's
stream) wrap each call in :func:`session_context`; :class:`JsonFormatter` adds that id as
``session`` to every record logged meanwhile, unless the record names its own
(``log.info(..., extra={"session": sid})``). Work handed to another thread (the model thread)
does not carry the context.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from datetime import UTC, datetime

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_session: ContextVar[str | None] = ContextVar("specd_session", default=None)


def current_session() -> str | None:
    """The session id of the call this thread is serving, if any."""
    return _session.get()


def enter_session(session_id: str | None) -> Token[str | None]:
    """From now on this context's log records carry ``session_id``; undo with :func:`exit_session`."""
    return _session.set(session_id or None)


def exit_session(token: Token[str | None]) -> None:
    try:
        _session.reset(token)
    except ValueError:  # closed from another context (a generator finished elsewhere)
        _session.set(None)


@contextmanager
def session_context(session_id: str | None) -> Iterator[None]:
    """Log records made inside the ``with`` body carry ``session_id``."""
    token = enter_session(session_id)
    try:
        yield
    finally:
        exit_session(token)


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "message"[, "session"][, "exc"]}`` per record."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        session = getattr(record, "session", None) or _session.get()
        if session:
            entry["session"] = session
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(fmt: str = "text", level: int = logging.INFO) -> None:
    """Send the root logger's records to stderr as ``text`` (the default) or ``json`` lines."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {fmt!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
