"""Per-user budgets: how many turns a user starts a minute, how many replies run for them at once, and tokens a day.

One budget for every way a turn starts (REST and the socket both start turns through
`turns.turn_start_many`). Turns are counted in Django's cache, per fixed minute: shared by every
process when the cache is Redis (REDIS_URL), per process otherwise. Concurrent replies are
counted in the database, in the statement that locks the session (`rows.lock_for_turns`), so
they hold across processes; two turns of one user in two sessions at the same instant may
both pass (the cap is checked, not locked). Tokens a day are read from the user's day total
(`UsageDay`, kept by each reply's end) in that same statement: a turn starts while the total
of the replies that ended today is below the budget; turns already running (their tool rounds
and plan steps too) finish even if they cross it, and the next message is refused. 0 turns a
setting off.
"""

from __future__ import annotations

import time

from django.conf import settings
from django.core.cache import cache

from chat.exceptions import RateLimited


def take_turn(user_id: int) -> RateLimited | None:
    """Count one turn of the user; the error to answer when this one is over the minute's budget."""
    limit = settings.CHAT["TURNS_PER_MINUTE"]
    if limit <= 0:
        return None
    minute = int(time.time() // 60)
    key = f"chat:turns:{user_id}:{minute}"
    cache.add(key, 0, timeout=120)
    try:
        count = cache.incr(key)
    except ValueError:  # expired between add and incr
        cache.set(key, 1, timeout=120)
        count = 1
    if count > limit:
        wait = 60 - int(time.time() % 60)
        return RateLimited(f"At most {limit} messages a minute; try again in {wait} s.")
    return None


def replies_full(running: int) -> RateLimited | None:
    """The error when `running` replies of the user already stream (at the cap)."""
    limit = settings.CHAT["MAX_REPLIES_PER_USER"]
    if limit > 0 and running >= limit:
        return RateLimited(f"{running} of your replies are running; wait for one to finish (at most {limit} at once).")
    return None


def tokens_spent(used_today: int, own_budget: int | None) -> RateLimited | None:
    """The error when the user's tokens today reached their daily budget (their own, or DAILY_TOKEN_BUDGET)."""
    limit = settings.CHAT["DAILY_TOKEN_BUDGET"] if own_budget is None else own_budget
    if limit > 0 and used_today >= limit:
        return RateLimited(f"Your daily budget of {limit:,} tokens is spent ({used_today:,} used today); it renews at midnight UTC.")
    return None
