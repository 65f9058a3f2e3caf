"""Token usage: what a reply's provider reported, in the shape every total is kept in.

Totals live on rows and are added to in the reply's final transaction (`chat.turn.replies`):
per session (`ChatSession.prompt_tokens`, `completion_tokens`) and per user per day
(`UsageDay`). A reply counts what its provider reported (`metadata.usage`); one that reported
nothing (stopped or failed before the end, where a provider reports usage, or a provider that
never does) counts its text at about 4 characters a token, so a stopped reply is not free.
`rebuild` recomputes every total from the replies themselves (`manage.py usage_rebuild`).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import date
from typing import Any

from django.db import transaction
from django.utils import timezone


def tokens_of(metadata: dict[str, Any] | None) -> tuple[int, int] | None:
    """(prompt, completion) tokens a reply's metadata reports; None when it reports none.

    Providers are not trusted: a count that is not a whole number of 0 or more counts as 0.
    """
    usage = (metadata or {}).get("usage")
    if not isinstance(usage, dict):
        return None

    def count(name: str) -> int:
        value = usage.get(name)
        return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**53 else 0

    return count("prompt_tokens"), count("completion_tokens")


CHARS_PER_TOKEN = 4


def estimate(content: str) -> tuple[int, int] | None:
    """(0, completion) for a reply whose provider reported nothing (cancelled or failed before its end, or a
    provider that never reports): its text at about CHARS_PER_TOKEN characters a token. None for no text."""
    return (0, -(-len(content) // CHARS_PER_TOKEN)) if content else None


def counted(metadata: dict[str, Any] | None, content: str) -> tuple[int, int] | None:
    """The tokens a reply counts for: as reported, else estimated from its text."""
    return tokens_of(metadata) or estimate(content)


def as_data(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def day_of(when: Any) -> date:
    return timezone.localdate(when)


def rebuild(message_model: Any, session_model: Any, usage_model: Any) -> tuple[int, int]:
    """Recompute every session's and every day's totals from the replies' metadata (models passed in: a migration's own).

    Returns (sessions with usage, user-days). Takes a while on a large history; safe to run again.
    """
    sessions: dict[Any, list[int]] = defaultdict(lambda: [0, 0])
    days: dict[tuple[int, date], list[int]] = defaultdict(lambda: [0, 0, 0])
    replies = (
        message_model.objects.filter(role="assistant", type="text").exclude(status="streaming")
        .values_list("session_id", "session__owner_id", "completed_at", "created_at", "metadata", "content")
        .order_by()
    )
    for session_id, owner_id, completed_at, created_at, metadata, content in replies.iterator(chunk_size=2000):
        tokens = counted(metadata, content)
        if tokens is None:
            continue
        total = sessions[session_id]
        total[0] += tokens[0]
        total[1] += tokens[1]
        day = days[(owner_id, day_of(completed_at or created_at))]
        day[0] += tokens[0]
        day[1] += tokens[1]
        day[2] += 1
    with transaction.atomic():
        session_model.objects.update(prompt_tokens=0, completion_tokens=0)
        for session_id, (prompt, completion) in sessions.items():
            session_model.objects.filter(pk=session_id).update(prompt_tokens=prompt, completion_tokens=completion)
        usage_model.objects.all().delete()
        usage_model.objects.bulk_create(
            [usage_model(user_id=user_id, day=day, prompt_tokens=p, completion_tokens=c, replies=n) for (user_id, day), (p, c, n) in days.items()],
            batch_size=1000,
        )
    return len(sessions), len(days)
