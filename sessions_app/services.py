from __future__ import annotations

from django.contrib.auth.base_user import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from chat import events
from chat.exceptions import AgentNotFound, InvalidInput
from chat.models import Agent, Message
from chat.turn import outbox
from chat.turn.locking import lock_session
from sessions_app.models import ChatSession
from sessions_app.serializers import session_data

_UNSET = object()


def _resolve_agent(slug: str | None) -> Agent | None:
    if slug in (None, ""):
        return None
    agent = Agent.objects.filter(slug=slug, is_active=True).first()
    if agent is None:
        raise AgentNotFound(f"No active agent '{slug}'.")
    return agent


def session_create(
    *, owner: AbstractBaseUser, title: str = "", mode: str = ChatSession.Mode.ORCHESTRATED, agent: str | None = None,
    on_busy: str = ChatSession.OnBusy.REJECT,
) -> ChatSession:
    """Create a session. Direct mode needs an existing active agent (`agent_not_found` otherwise)."""
    resolved = _resolve_agent(agent)
    if mode == ChatSession.Mode.DIRECT and resolved is None:
        raise AgentNotFound("Direct mode needs an agent: give the slug of an active agent.")
    return ChatSession.objects.create(owner=owner, title=title.strip(), mode=mode, agent=resolved, on_busy=on_busy)


def session_update(
    *, session: ChatSession, title: object = _UNSET, mode: object = _UNSET, agent: object = _UNSET, on_busy: object = _UNSET,
    announce_switch: bool = False,
) -> ChatSession:
    """Edit title, mode, agent or what a message does while a turn runs (`on_busy`); broadcasts `session.updated`,
    and `agent.switched` when the agent changes (or always, with `announce_switch`: a `switch_agent` frame is always answered)."""
    fields: list[str] = []
    agent_changed = False
    if title is not _UNSET:
        session.title = str(title).strip()
        fields.append("title")
    if on_busy is not _UNSET:
        session.on_busy = str(on_busy)
        fields.append("on_busy")
    if agent is not _UNSET:
        resolved = _resolve_agent(agent)  # type: ignore[arg-type]
        agent_changed = resolved != session.agent
        session.agent = resolved
        fields.append("agent")
    if mode is not _UNSET:
        session.mode = str(mode)
        fields.append("mode")
    if (mode is not _UNSET or agent is not _UNSET) and session.mode == ChatSession.Mode.DIRECT and session.agent is None:
        raise AgentNotFound("Direct mode needs an agent: give the slug of an active agent.")
    if not fields:
        raise InvalidInput("Nothing to change: give title, mode, agent or on_busy.")
    session.updated_at = timezone.now()
    fields.append("updated_at")
    with transaction.atomic():
        session.save(update_fields=fields)
        data = session_data(session)
        outbox.frame(session.pk, events.session_updated(data))
        if agent_changed or announce_switch:
            outbox.frame(session.pk, events.agent_switched(data))
    return session


def session_delete(*, session: ChatSession) -> None:
    """Delete the session with its messages and reactions; a reply still streaming is stopped."""
    session_id = session.pk
    with transaction.atomic():
        # The session row first, as every step of a turn locks it: no deadlock with a reply ending.
        lock_session(session_id)
        # Read under the lock, before the delete: afterwards nothing says which process generates them.
        running = list(Message.objects.filter(session_id=session_id, status=Message.Status.STREAMING).values_list("pk", "worker_id"))
        session.delete()
        outbox.frame(session_id, events.session_deleted(session_id))
        for message_id, worker_id in running:
            outbox.after_commit(outbox.CancelReply(message_id, worker_id))
