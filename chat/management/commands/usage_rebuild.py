from __future__ import annotations

from django.core.management.base import BaseCommand

from chat import usage
from chat.models import Message, UsageDay
from sessions_app.models import ChatSession


class Command(BaseCommand):
    help = (
        "Recompute every session's token totals and every user's tokens per day from the replies' own "
        "metadata.usage. The totals are kept by each reply's end; this is for repairs (after restoring rows "
        "by hand, say). Run it while no reply streams: replies ending meanwhile may be counted twice or not at all."
    )

    def handle(self, *args: object, **options: object) -> None:
        sessions, days = usage.rebuild(Message, ChatSession, UsageDay)
        self.stdout.write(f"Token totals recomputed: {sessions} sessions with usage, {days} user-days.")
