"""Domain errors raised by services; REST and WebSocket front doors turn them into `{code, detail}`."""

from __future__ import annotations


class ChatError(Exception):
    code = "error"
    status = 400

    def __init__(self, detail: str, *, code: str | None = None, status: int | None = None, field: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        # The input the error is about, when there is one (REST puts it under `fields`).
        self.field = field
        if code:
            self.code = code
        if status:
            self.status = status


class NotFound(ChatError):
    code = "not_found"
    status = 404


class AgentNotFound(ChatError):
    code = "agent_not_found"
    status = 400


class Busy(ChatError):
    code = "busy"
    status = 409


class InvalidInput(ChatError):
    code = "validation_error"
    status = 400


class Unavailable(ChatError):
    """This server process is shutting down (draining): nothing was done; send again, to another process."""

    code = "unavailable"
    status = 503


class RateLimited(ChatError):
    """A per-user budget is spent (turns per minute, concurrent replies, sockets): 429 / `rate_limited`."""

    code = "rate_limited"
    status = 429
