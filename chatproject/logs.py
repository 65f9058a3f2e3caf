"""Log lines as JSON (LOG_FORMAT=json), each naming the session, message or plan it is about.

The ids live in a context variable: a socket binds its session when it opens (its task handles
all its frames), the engine binds a turn's message (and session, or plan) in the task that
carries the turn out (chat.engine.process), so every line logged there, however deep, names
them. `IdsFilter` copies them onto each record, for either format.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import socket
import time
from typing import Any

_ids: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("chat_log_ids", default=None)

_HOST = socket.gethostname()
_FIELDS = ("session_id", "message_id", "plan_id")


def bind(**ids: Any) -> None:
    """Name these ids (session_id=, message_id=, plan_id=) on every line logged from here on in this context; None leaves one out."""
    merged = dict(_ids.get() or {})
    merged.update({name: str(value) for name, value in ids.items() if value is not None})
    _ids.set(merged)


def current() -> dict[str, str]:
    return dict(_ids.get() or {})


class IdsFilter(logging.Filter):
    """Puts the bound ids on the record (record.ids), and in plain text after the message."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.ids = _ids.get() or {}
        record.ids_text = "".join(f" {name}={value}" for name, value in record.ids.items())
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, host, pid, the bound ids, and the traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "host": _HOST,
            "pid": os.getpid(),
        }
        ids = getattr(record, "ids", None)
        if ids is None:  # a handler without IdsFilter
            ids = _ids.get() or {}
        for name in _FIELDS:
            if name in ids:
                line[name] = ids[name]
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)
