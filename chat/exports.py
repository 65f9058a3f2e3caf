"""Conversation exports (JSON and Markdown) for operators: whole sessions, messages in seq order.

Messages use the contract's `Message` shape (reactions aggregated, statuses and errors kept);
the JSON export adds each session's tool calls, approvals and plans.

Exports are made piece by piece (`iter_export_json`, `iter_export_markdown`) and streamed by the
admin: messages are read EXPORT_CHUNK at a time (two queries per chunk: the messages and their
reactions), so a session of a million messages never sits in memory at once. Besides the
chunks: one query for the sessions, and three for the tool calls, approvals and plans.
"""

from __future__ import annotations

import html
import json
from collections import defaultdict
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db.models import Prefetch, QuerySet

from chat.branches import attach_versions, session_path
from chat.models import Approval, Message, Plan, Reaction, ToolCall
from chat.serializers import MessageSerializer, summarize_reactions
from sessions_app.models import ChatSession

EXPORT_CHUNK = 1000


def _sessions(sessions: Iterable[ChatSession]) -> list[ChatSession]:
    """The sessions, in the given order, with their owner and agent: one query."""
    if isinstance(sessions, QuerySet):
        return list(sessions.select_related("owner", "agent"))
    given = [session.pk for session in sessions]
    by_id = ChatSession.objects.select_related("owner", "agent").in_bulk(given)
    return [by_id[pk] for pk in dict.fromkeys(given) if pk in by_id]


def _messages(session: ChatSession, every_branch: bool = False) -> Iterator[Message]:
    """The messages of the session's active branch (or all of them) in seq order, with agents, reactions and versions,
    EXPORT_CHUNK at a time (two queries a chunk; three, and one more in all, when the conversation forked)."""
    path = None if every_branch else session_path(session)
    after = 0
    while True:
        messages = Message.objects.filter(session_id=session.pk, seq__gt=after)
        if path is not None:
            messages = messages.filter(path.q())
        chunk = list(
            messages.select_related("agent")
            .prefetch_related(Prefetch("reactions", queryset=Reaction.objects.order_by("created_at", "pk")))
            .order_by("seq")[:EXPORT_CHUNK]
        )
        attach_versions(chunk, lines=session.lines)
        yield from chunk
        if len(chunk) < EXPORT_CHUNK:
            return
        after = chunk[-1].seq


def _id(value: Any) -> str | None:
    return str(value) if value is not None else None


def _username(user: Any) -> str | None:
    return user.get_username() if user is not None else None


def _tool_call_dict(call: ToolCall) -> dict[str, Any]:
    return {
        "id": str(call.pk),
        "reply": _id(call.reply_id),
        "message": _id(call.message_id),
        "ordinal": call.ordinal,
        "provider_call_id": call.provider_call_id,
        "agent": call.agent.slug if call.agent else None,
        "name": call.name,
        "arguments": call.arguments,
        "runs_on": call.runs_on,
        "needs_approval": call.needs_approval,
        "status": call.status,
        "output": call.output,
        "is_error": call.is_error,
        "created_at": call.created_at,
        "completed_at": call.completed_at,
    }


def _approval_dict(approval: Approval) -> dict[str, Any]:
    return {
        "id": str(approval.pk),
        "tool_call": str(approval.tool_call_id),
        "message": _id(approval.message_id),
        "tool": approval.tool_call.name,
        "arguments": approval.tool_call.arguments,
        "status": approval.status,
        "comment": approval.comment,
        "decided_by": _username(approval.decided_by),
        "created_at": approval.created_at,
        "decided_at": approval.decided_at,
    }


def _plan_dict(plan: Plan) -> dict[str, Any]:
    return {
        "id": str(plan.pk),
        "reply": _id(plan.reply_id),
        "message": _id(plan.message_id),
        "steps": plan.steps,
        "status": plan.status,
        "current_step": plan.current_step,
        "comment": plan.comment,
        "decided_by": _username(plan.decided_by),
        "created_at": plan.created_at,
        "decided_at": plan.decided_at,
    }


def _load_agentic(session_ids: list[Any]) -> dict[Any, dict[str, list[dict[str, Any]]]]:
    """Each session's tool calls, approvals and plans, oldest first: three queries."""
    found: dict[Any, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: {"tool_calls": [], "approvals": [], "plans": []})
    if not session_ids:
        return found
    calls = ToolCall.objects.filter(session_id__in=session_ids).select_related("agent").order_by("created_at", "ordinal", "pk")
    for call in calls:
        found[call.session_id]["tool_calls"].append(_tool_call_dict(call))
    approvals = (
        Approval.objects.filter(session_id__in=session_ids).select_related("tool_call", "decided_by").order_by("created_at", "pk")
    )
    for approval in approvals:
        found[approval.session_id]["approvals"].append(_approval_dict(approval))
    for plan in Plan.objects.filter(session_id__in=session_ids).select_related("decided_by").order_by("created_at", "pk"):
        found[plan.session_id]["plans"].append(_plan_dict(plan))
    return found


def _message_dict(message: Message, owner_id: int) -> dict[str, Any]:
    return dict(MessageSerializer(message, context={"viewer_id": owner_id}).data)


def _dumps(value: Any) -> str:
    return json.dumps(value, cls=DjangoJSONEncoder, ensure_ascii=False)


def _session_head(session: ChatSession) -> dict[str, Any]:
    return {
        "id": str(session.pk),
        "title": session.title,
        "owner": session.owner.get_username(),
        "mode": session.mode,
        "agent": session.agent.slug if session.agent else None,
        "created_at": session.created_at,
        "updated_at": session.updated_at,
        "message_count": session.message_count,
        "leaf": _id(session.leaf_id),
    }


def iter_export_json(sessions: Iterable[ChatSession], *, every_branch: bool = False) -> Iterator[str]:
    """A JSON array with one object per session: `messages` in seq order, then `tool_calls`, `approvals` and `plans`, oldest first.

    `messages` are those of the session's active branch (what its owner sees), or with
    `every_branch` all of them: every version, each naming its `parent`, so the tree can be rebuilt.
    """
    loaded = _sessions(sessions)
    agentic = _load_agentic([session.pk for session in loaded])
    yield "["
    for index, session in enumerate(loaded):
        head = _dumps({**_session_head(session), "branches": "all" if every_branch else "active"})
        yield ("," if index else "") + "\n" + head[:-1] + ', "messages": ['
        first = True
        for message in _messages(session, every_branch):
            yield ("" if first else ",") + "\n  " + _dumps(_message_dict(message, session.owner_id))
            first = False
        rest = agentic[session.pk]
        yield f'], "tool_calls": {_dumps(rest["tool_calls"])}, "approvals": {_dumps(rest["approvals"])}, "plans": {_dumps(rest["plans"])}}}'
    yield "\n]\n"


def session_export_json(sessions: Iterable[ChatSession], *, every_branch: bool = False) -> str:
    return "".join(iter_export_json(sessions, every_branch=every_branch))


def _when(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value else "-"


def _one_line(text: str) -> str:
    return html.escape(" ".join(text.split()), quote=False)


def _quote(text: str) -> str:
    """The text as a blockquote, every line of it (whatever ends it: \\r, \\r\\n, U+2028...) quoted, HTML escaped.

    A blockquote keeps the message's own Markdown rendering without letting its headings break the
    document; a line end other than \\n would otherwise start an unquoted line that forges an entry,
    and raw HTML would run in a viewer that renders it.
    """
    return "\n".join(f"> {html.escape(line, quote=False)}" if line.strip() else ">" for line in text.splitlines())


def _reactions_line(message: Message) -> str:
    summary = summarize_reactions(message.reactions.all(), None)
    return ", ".join(f"{entry['emoji']} {entry['count']}" for entry in summary)


def _message_markdown(message: Message) -> list[str]:
    heading = f"### {message.seq}. {message.role} · {message.type} · {message.status}"
    if message.agent is not None:
        heading += f" · {message.agent.slug}"
    versions = getattr(message, "_versions", None)
    if versions:
        heading += f" · version {versions.index(str(message.pk)) + 1} of {len(versions)}"
    lines = [heading, "", f"*{_when(message.created_at)}*", ""]
    lines.append(_quote(message.content) if message.content else "> *(empty)*")
    lines.append("")
    if message.error:
        lines += [f"**Error:** {_one_line(message.error)}", ""]
    reactions = _reactions_line(message)
    if reactions:
        lines += [f"**Reactions:** {reactions}", ""]
    return lines


def _session_markdown(session: ChatSession) -> Iterator[str]:
    title = _one_line(session.title) or "Untitled session"
    lines = [
        f"## {title}",
        "",
        f"- Session: `{session.pk}`",
        f"- Owner: {_one_line(session.owner.get_username())}",
        f"- Mode: {session.mode}",
        f"- Agent: {session.agent.slug if session.agent else '-'}",
        f"- Created: {_when(session.created_at)}",
        f"- Last activity: {_when(session.updated_at)}",
        f"- Messages: {session.message_count}" + (f" ({session.leaf_depth} on the active branch, shown here)" if session.lines > 1 else ""),
        "",
    ]
    yield "\n".join(lines) + "\n"
    for message in _messages(session):
        yield "\n".join(_message_markdown(message)) + "\n"


def iter_export_markdown(sessions: Iterable[ChatSession]) -> Iterator[str]:
    """A Markdown document with one `##` section per session and one `###` entry per message."""
    yield "# Chat export\n\n"
    for session in _sessions(sessions):
        yield from _session_markdown(session)


def session_export_markdown(sessions: Iterable[ChatSession]) -> str:
    return "".join(iter_export_markdown(sessions)).rstrip("\n") + "\n"
