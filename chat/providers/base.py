"""What every provider speaks: it turns a reply context into a stream of events (text, usage, tool calls)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from chat.turn.context import ReplyContext

__all__ = ["Provider", "ProviderError", "ProviderEvent", "ReplyContext"]


class ProviderError(Exception):
    """The model failed; the message is shown to the user as the reply's `error`."""


@dataclass
class ProviderEvent:
    kind: str  # "text" | "usage" | "tool_call"
    text: str = ""
    data: dict[str, Any] = field(default_factory=dict)


class Provider(Protocol):
    def stream(self, ctx: ReplyContext) -> AsyncIterator[ProviderEvent]: ...
