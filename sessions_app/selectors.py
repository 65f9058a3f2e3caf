from __future__ import annotations

import uuid

from django.contrib.auth.base_user import AbstractBaseUser
from django.db.models import QuerySet

from chat.exceptions import NotFound
from sessions_app.models import ChatSession


def session_list(*, user: AbstractBaseUser) -> QuerySet[ChatSession]:
    """The user's sessions, newest activity first: one query per page, whatever the history."""
    return ChatSession.objects.filter(owner=user).select_related("agent").order_by("-updated_at", "-id")


def session_get(*, user: AbstractBaseUser, session_id: uuid.UUID | str) -> ChatSession:
    """The user's session; another user's is reported exactly like a missing one."""
    try:
        sid = uuid.UUID(str(session_id))
    except (TypeError, ValueError, AttributeError):
        raise NotFound("Session not found.") from None
    session = ChatSession.objects.select_related("agent").filter(pk=sid, owner=user).first()
    if session is None:
        raise NotFound("Session not found.")
    return session
