"""Model providers. A provider turns a reply context into a stream of events (text, usage, tool calls)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from chat.models import Agent


class ProviderError(Exception):
    """The model failed; the message is shown to the user as the reply's `error`."""


@dataclass
class ProviderEvent:
    kind: str  # "text" | "usage" | "tool_call"
    text: str = ""
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class ReplyContext:
    message_id: str
    session_id: str
    agent: Agent | None
    # The conversation before this reply, oldest first: [{"role", "content", ...}].
    history: list[dict[str, Any]]
    # The user message this reply answers (empty when the reply continues after a tool or a plan step).
    prompt: str
    # Tools the agent may call: [{"name", "description", "parameters"}].
    tools: list[dict[str, Any]] = field(default_factory=list)
    # What the turn has done so far when it continues (tool results, plan step), for the provider to use.
    extra: dict[str, Any] = field(default_factory=dict)


class Provider(Protocol):
    def stream(self, ctx: ReplyContext) -> AsyncIterator[ProviderEvent]: ...


def get_provider(agent: Agent | None) -> Provider:
    if agent is not None and agent.provider == Agent.Provider.OPENAI:
        from chat.providers.openai_compat import OpenAICompatProvider

        return OpenAICompatProvider(agent)
    from chat.providers.demo import DemoProvider

    return DemoProvider()
