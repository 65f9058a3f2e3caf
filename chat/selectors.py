from __future__ import annotations

import uuid
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.db.models import Prefetch, QuerySet
from django.utils import timezone

from chat.exceptions import NotFound
from chat.models import Agent, Message, Reaction, TokenBudget, UsageDay
from sessions_app.models import ChatSession


def agent_list() -> QuerySet[Agent]:
    return Agent.objects.filter(is_active=True).order_by("slug")


def message_page(*, session: ChatSession) -> QuerySet[Message]:
    """The session's messages in ascending seq, with agents and reactions: two queries per page."""
    return (
        Message.objects.filter(session=session)
        .select_related("agent")
        .prefetch_related(Prefetch("reactions", queryset=Reaction.objects.order_by("created_at", "pk")))
        .order_by("seq")
    )


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
