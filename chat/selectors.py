from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.db.models import Exists, Prefetch, Q, QuerySet
from django.utils import timezone

from chat.branches import Tip, session_path
from chat.exceptions import NotFound
from chat.models import Agent, Message, Plan, QueuedMessage, Reaction, TokenBudget, ToolCall, UsageDay
from chat.serializers import queued_data
from sessions_app.models import ChatSession


def agent_list() -> QuerySet[Agent]:
    return Agent.objects.filter(is_active=True).order_by("slug")


def message_page(*, session: ChatSession, leaf: str | None = None, tree: bool = False) -> tuple[QuerySet[Message], int]:
    """The messages of the session's active branch (or the branch ending at `leaf`, or with `tree` all of them) in
    ascending seq, with agents and reactions, and how many there are.

    Two queries per page, plus one (where the session's branches fork) when it forked, and one to
    find `leaf`; the count is kept on rows (chat.branches). A `leaf` not in the session is not found.
    """
    messages = Message.objects.filter(session=session)
    total = session.message_count
    path = None
    if leaf is not None:
        try:
            found = Message.objects.filter(pk=uuid.UUID(leaf), session=session).values_list("pk", "line", "seq", "depth").first()
        except ValueError:
            found = None
        if found is None:
            raise NotFound("Message not found.")
        tip = Tip(*found)
        path = session_path(session, leaf=tip)
        total = tip.depth or total
    elif not tree:
        path = session_path(session)
        if path is not None:
            total = session.leaf_depth
    if path is not None:
        messages = messages.filter(path.q())
    return (
        messages.select_related("agent")
        .prefetch_related(Prefetch("reactions", queryset=Reaction.objects.order_by("created_at", "pk")))
        .order_by("seq"),
        total,
    )


OPEN_PLANS = (Plan.Status.PENDING, Plan.Status.APPROVED, Plan.Status.RUNNING)
ENDED_CALLS = (ToolCall.Status.DONE, ToolCall.Status.FAILED, ToolCall.Status.REJECTED, ToolCall.Status.SUPERSEDED)


def turn_under_way(session: Any) -> Q:
    """A filter on sessions (`session` a reference to their id, e.g. OuterRef("pk")): the session's turn is not over.

    A reply streaming, a tool call not ended (about to run, running, or waiting for a person or
    the client), a plan pending or between its steps.
    """
    return (
        Exists(Message.objects.filter(session_id=session, status=Message.Status.STREAMING))
        | Exists(ToolCall.objects.filter(session_id=session).exclude(status__in=ENDED_CALLS))
        | Exists(Plan.objects.filter(session_id=session, status__in=OPEN_PLANS))
    )


def queue_items(*, session_id: uuid.UUID) -> list[dict[str, Any]]:
    """The session's queued messages (the `QueuedMessage` shape) in the order they will be answered: one query."""
    return [queued_data(item) for item in QueuedMessage.objects.filter(session_id=session_id).order_by("position")]


def message_get(*, user: AbstractBaseUser, message_id: uuid.UUID | str) -> Message:
    """A message in one of the user's sessions; another user's is reported exactly like a missing one."""
    try:
        mid = uuid.UUID(str(message_id))
    except (TypeError, ValueError, AttributeError):
        raise NotFound("Message not found.") from None
    message = Message.objects.filter(pk=mid, session__owner=user).first()
    if message is None:
        raise NotFound("Message not found.")
    return message


def active_replies(*, session_id: uuid.UUID) -> list[Message]:
    return list(Message.objects.filter(session_id=session_id, status=Message.Status.STREAMING).order_by("seq"))


def usage_days(*, user: AbstractBaseUser, days: int) -> list[UsageDay]:
    """The user's token totals of the last `days` days (today included), newest first; days without usage are left out."""
    since = timezone.localdate() - timedelta(days=days - 1)
    return list(UsageDay.objects.filter(user=user, day__gte=since).order_by("-day"))


def daily_token_budget(*, user: AbstractBaseUser) -> int:
    """The user's daily token budget: their own (TokenBudget) or DAILY_TOKEN_BUDGET; 0 for none."""
    own = TokenBudget.objects.filter(user=user).values_list("daily_tokens", flat=True).first()
    return settings.CHAT["DAILY_TOKEN_BUDGET"] if own is None else own
