"""What a model sees for a reply: read from the database by a sync step, handed to a provider."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from chat import branches, tools
from chat.models import Agent, Message
from chat.turn import rows


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
    # The reply's row as it was when streaming began (its end is stored from it, see replies.reply_finish).
    reply: Message | None = None


def history_items(messages: list[tuple[str, str, str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """The conversation, (role, type, content, metadata) rows, as provider-neutral items: text turns, tool calls and tool results."""
    items: list[dict[str, Any]] = []
    for role, kind, content, metadata in messages:
        if kind == Message.Type.TEXT and content and role in (Message.Role.USER, Message.Role.ASSISTANT, Message.Role.SYSTEM):
            items.append({"role": role, "content": content})
        elif kind == Message.Type.TOOL_CALL:
            call = {"id": metadata.get("provider_call_id") or metadata.get("tool_call_id"), "name": metadata.get("name"),
                    "arguments": metadata.get("arguments") or {}}
            if items and items[-1]["role"] == "assistant" and "tool_calls" in items[-1]:
                items[-1]["tool_calls"].append(call)
            else:
                items.append({"role": "assistant", "content": "", "tool_calls": [call]})
        elif kind == Message.Type.TOOL_RESULT:
            items.append({"role": "tool", "tool_call_id": metadata.get("provider_call_id") or metadata.get("tool_call_id"), "content": content})
    return items


def context_for(
    reply: Message, *, prompt: str, history: list[tuple[str, str, str, dict[str, Any]]] | None = None, lines: int = 1,
) -> ReplyContext:
    """The context of a reply whose rows the caller holds (a turn that just started it).

    `history`: the messages before the reply when the caller knows them (a session's first
    turn: only its user message); otherwise one query reads the recent ones on the reply's
    branch (one more for where the branches fork, when the session has more than one: `lines`).
    """
    if history is None:
        path = branches.path_to(reply.line, reply.seq, branches.bases_of(reply.session_id)) if lines > 1 else None
        history = rows.history_rows(session_id=reply.session_id, before_seq=reply.seq, limit=settings.CHAT["HISTORY_MESSAGES"], path=path)
    extra = dict(reply.metadata.get("context", {})) if isinstance(reply.metadata, dict) else {}
    return ReplyContext(
        message_id=str(reply.pk),
        session_id=str(reply.session_id),
        agent=reply.agent,
        history=history_items(history),
        prompt=prompt,
        tools=tools.specs_for_agent(reply.agent),
        extra=extra,
        reply=reply,
    )


def load_context(message_id: uuid.UUID) -> ReplyContext | None:
    """The reply, its agent, and the recent history before it: two queries. None unless it is streaming."""
    message = Message.objects.select_related("agent", "reply_to", "session").filter(pk=message_id).first()
    if message is None or message.status != Message.Status.STREAMING:
        return None
    extra = dict(message.metadata.get("context", {})) if isinstance(message.metadata, dict) else {}
    # A continuation after tools answers the same question, already in the history: no new prompt.
    prompt = message.reply_to.content if message.reply_to is not None and not extra.get("continuation") else ""
    if extra.get("instruction"):
        prompt = f"Step {extra.get('step')} of {extra.get('steps')} of the approved plan: {extra['instruction']}"
    return context_for(message, prompt=prompt, lines=message.session.lines)
