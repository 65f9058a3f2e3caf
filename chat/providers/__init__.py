"""Model providers: the offline demo provider and the OpenAI-compatible one, chosen per agent."""

from __future__ import annotations

from chat.models import Agent
from chat.providers.base import Provider, ProviderError, ProviderEvent, ReplyContext
from chat.providers.demo import DemoProvider
from chat.providers.openai_compat import OpenAICompatProvider

__all__ = ["Provider", "ProviderError", "ProviderEvent", "ReplyContext", "get_provider"]


def get_provider(agent: Agent | None) -> Provider:
    if agent is not None and agent.provider == Agent.Provider.OPENAI:
        return OpenAICompatProvider(agent)
    return DemoProvider()
