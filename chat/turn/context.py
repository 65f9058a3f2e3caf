"""What a model sees for a reply: read from the database by a sync step, handed to a provider."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from chat import tools
from chat.models import Agent, Message


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


def history_items(messages: list[Message]) -> list[dict[str, Any]]:
    """The conversation as provider-neutral items: text turns, tool calls and tool results."""
    items: list[dict[str, Any]] = []
    for m in messages:
        if m.type == Message.Type.TEXT and m.content and m.role in (Message.Role.USER, Message.Role.ASSISTANT, Message.Role.SYSTEM):
            items.append({"role": m.role, "content": m.content})
        elif m.type == Message.Type.TOOL_CALL:
            call = {"id": m.metadata.get("provider_call_id") or m.metadata.get("tool_call_id"), "name": m.metadata.get("name"),
                    "arguments": m.metadata.get("arguments") or {}}
            if items and items[-1]["role"] == "assistant" and "tool_calls" in items[-1]:
                items[-1]["tool_calls"].append(call)
            else:
                items.append({"role": "assistant", "content": "", "tool_calls": [call]})
        elif m.type == Message.Type.TOOL_RESULT:
            items.append({"role": "tool", "tool_call_id": m.metadata.get("provider_call_id") or m.metadata.get("tool_call_id"),
                          "content": m.content})
    return items


def _history_before(session_id: uuid.UUID, seq: int) -> list[dict[str, Any]]:
    """The recent history before `seq`: one query, however long the session."""
    earlier = list(
        Message.objects.filter(
            session_id=session_id, seq__lt=seq, type__in=[Message.Type.TEXT, Message.Type.TOOL_CALL, Message.Type.TOOL_RESULT],
        )
        .only("role", "type", "content", "metadata")
        .order_by("-seq")[: settings.CHAT["HISTORY_MESSAGES"]]
    )
    earlier.reverse()
    return history_items(earlier)


def context_for(reply: Message, *, prompt: str) -> ReplyContext:
    """The context of a reply whose rows the caller holds (a turn that just started it)."""
    extra = dict(reply.metadata.get("context", {})) if isinstance(reply.metadata, dict) else {}
    return ReplyContext(
        message_id=str(reply.pk),
        session_id=str(reply.session_id),
        agent=reply.agent,
        history=_history_before(reply.session_id, reply.seq),
        prompt=prompt,
        tools=tools.specs_for_agent(reply.agent),
        extra=extra,
    )


def load_context(message_id: uuid.UUID) -> ReplyContext | None:
    """The reply, its agent, and the recent history before it: two queries. None unless it is streaming."""
    message = Message.objects.select_related("agent", "reply_to").filter(pk=message_id).first()
    if message is None or message.status != Message.Status.STREAMING:
        return None
    extra = dict(message.metadata.get("context", {})) if isinstance(message.metadata, dict) else {}
    # A continuation after tools answers the same question, already in the history: no new prompt.
    prompt = message.reply_to.content if message.reply_to is not None and not extra.get("continuation") else ""
    if extra.get("instruction"):
        prompt = f"Step {extra.get('step')} of {extra.get('steps')} of the approved plan: {extra['instruction']}"
    return context_for(message, prompt=prompt)
