"""Reactions on messages: added and removed under the session lock, announced after commit."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser

from chat import events
from chat.exceptions import InvalidInput, NotFound
from chat.models import Message, Reaction
from chat.serializers import summarize_reactions
from chat.turn import outbox
from chat.turn.locking import session_step
from chat.validation import validate_emoji


def _reaction_summary(message: Message, viewer_id: int | None) -> list[dict[str, Any]]:
    return summarize_reactions(Reaction.objects.filter(message=message), viewer_id)


def reaction_add(*, message: Message, user: AbstractBaseUser, emoji: str) -> tuple[bool, list[dict[str, Any]]]:
    """Add the user's reaction (once per emoji); sends `reaction.updated`. Returns (created, summary)."""
    emoji = validate_emoji(emoji)
    limit = settings.CHAT["MAX_REACTIONS_PER_USER"]
    with session_step(message.session_id):  # as every write in a session: a deletion cannot cross it
        mine = set(Reaction.objects.filter(message=message, user=user).values_list("emoji", flat=True))
        if emoji not in mine and len(mine) >= limit:
            raise InvalidInput(f"At most {limit} different reactions per message; remove one first.")
        _, created = Reaction.objects.get_or_create(message=message, user=user, emoji=emoji)
        summary = _reaction_summary(message, user.pk)
        if created:
            outbox.frame(message.session_id, events.reaction_updated(message.pk, summary))
    return created, summary


def reaction_remove(*, message: Message, user: AbstractBaseUser, emoji: str) -> list[dict[str, Any]]:
    """Remove the user's reaction; raises NotFound when there is none. Sends `reaction.updated`."""
    try:
        emoji = validate_emoji(emoji)
    except InvalidInput:
        raise NotFound("Reaction not found.") from None  # not an emoji, so never a reaction
    with session_step(message.session_id):
        deleted, _ = Reaction.objects.filter(message=message, user=user, emoji=emoji).delete()
        if not deleted:
            raise NotFound("Reaction not found.")
        summary = _reaction_summary(message, user.pk)
        outbox.frame(message.session_id, events.reaction_updated(message.pk, summary))
    return summary
