"""Sockets lose their authorisation with their credentials.

A socket is authorised once, when it opens, by an API token or a session cookie. It is closed
with 4401 when that credential goes: at once in this process when the user signs out (the
cookie's session), the token is deleted, or the user is deactivated or deleted (Django's
signals); and in every process by a recheck of all its sockets' credentials every
WS_AUTH_RECHECK_SECONDS (three queries per process, however many sockets), which also covers
changes made by another process or straight in the database.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_out
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from django.utils import timezone
from rest_framework.authtoken.models import Token

from chat.engine.process import engine

logger = logging.getLogger(__name__)

# (kind, key): ("token", token key) or ("cookie", session key).
Credential = tuple[str, str]


class Holder:
    """What the registry keeps of a socket: whose it is, by what credential, and how to close it."""

    __slots__ = ("close", "credential", "user_id")

    def __init__(self, user_id: int, credential: Credential, close: Callable[[], Awaitable[None]]) -> None:
        self.user_id = user_id
        self.credential = credential
        self.close = close


_by_user: dict[int, set[Holder]] = {}
_watching: set[asyncio.AbstractEventLoop] = set()


def register(holder: Holder) -> None:
    _by_user.setdefault(holder.user_id, set()).add(holder)
    loop = asyncio.get_running_loop()
    if loop not in _watching:
        _watching.add(loop)
        engine.spawn(_recheck_forever(loop))


def sockets_of(user_id: int) -> int:
    """The user's open sockets in this process (WS_MAX_SOCKETS_PER_USER)."""
    return len(_by_user.get(user_id, ()))


def unregister(holder: Holder) -> None:
    holders = _by_user.get(holder.user_id)
    if holders is not None:
        holders.discard(holder)
        if not holders:
            _by_user.pop(holder.user_id, None)


def _revoke(user_id: int, credential: Credential | None = None) -> None:
    """Close the user's sockets (those opened with `credential`, or all); callable from any thread."""
    holders = [h for h in list(_by_user.get(user_id, ())) if credential is None or h.credential == credential]
    for holder in holders:
        unregister(holder)
        engine.spawn(holder.close())


# At once, in this process --------------------------------------------------------------------

@receiver(user_logged_out, dispatch_uid="chat.ws.revoke.logged_out")
def _logged_out(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    key = getattr(getattr(request, "session", None), "session_key", None)
    if user is not None and key and user.pk in _by_user:
        _revoke(user.pk, ("cookie", key))


@receiver(post_delete, sender=Token, dispatch_uid="chat.ws.revoke.token_deleted")
def _token_deleted(sender: Any, instance: Token, **kwargs: Any) -> None:
    if instance.user_id in _by_user:
        _revoke(instance.user_id, ("token", instance.key))


@receiver(post_save, dispatch_uid="chat.ws.revoke.user_saved")
def _user_saved(sender: Any, instance: Any, **kwargs: Any) -> None:
    if sender is get_user_model() and not instance.is_active and instance.pk in _by_user:
        _revoke(instance.pk)


@receiver(post_delete, dispatch_uid="chat.ws.revoke.user_deleted")
def _user_deleted(sender: Any, instance: Any, **kwargs: Any) -> None:
    if sender is get_user_model() and instance.pk in _by_user:
        _revoke(instance.pk)


# In every process, every few seconds ------------------------------------------------------------

def still_valid(users: set[int], tokens: set[str], sessions: set[str]) -> tuple[set[int], set[tuple[str, int]], set[str]]:
    """Of these, the active users, the (token, user) pairs that still exist, the sessions still signed in."""
    active = set(get_user_model().objects.filter(pk__in=users, is_active=True).values_list("pk", flat=True))
    live_tokens = set(Token.objects.filter(key__in=tokens).values_list("key", "user_id")) if tokens else set()
    live_sessions: set[str] = set()
    if sessions:
        if settings.SESSION_ENGINE == "django.contrib.sessions.backends.db":
            from django.contrib.sessions.models import Session

            live_sessions = set(Session.objects.filter(session_key__in=sessions, expire_date__gt=timezone.now()).values_list("session_key", flat=True))
        else:
            from importlib import import_module

            store = import_module(settings.SESSION_ENGINE).SessionStore
            live_sessions = {key for key in sessions if store().exists(key)}
    return active, live_tokens, live_sessions


async def recheck() -> int:
    """Close every socket of this process whose credential is gone; how many were closed."""
    holders = [h for hs in list(_by_user.values()) for h in hs]
    if not holders:
        return 0
    users = {h.user_id for h in holders}
    tokens = {h.credential[1] for h in holders if h.credential[0] == "token"}
    sessions = {h.credential[1] for h in holders if h.credential[0] == "cookie"}
    active, live_tokens, live_sessions = await engine.read(still_valid, users, tokens, sessions)
    closed = 0
    for holder in holders:
        kind, key = holder.credential
        valid = holder.user_id in active and ((key, holder.user_id) in live_tokens if kind == "token" else key in live_sessions)
        if not valid:
            unregister(holder)
            engine.spawn(holder.close())
            closed += 1
    return closed


async def _recheck_forever(loop: asyncio.AbstractEventLoop) -> None:
    try:
        while True:
            await asyncio.sleep(settings.CHAT["WS_AUTH_RECHECK_SECONDS"])
            try:
                await recheck()
            except Exception:
                logger.warning("Rechecking the sockets' credentials failed; trying again", exc_info=True)
    finally:
        _watching.discard(loop)
