"""`manage.py cleanup_sessions`: delete idle sessions (with messages and reactions) and expired idempotency records."""

from __future__ import annotations

import uuid
from argparse import ArgumentParser
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.utils import timezone

from chat import events
from chat.engine.process import engine
from chat.idempotency import idempotency_purge
from chat.models import Approval, IdempotencyRecord, Message, QueuedMessage
from chat.selectors import turn_under_way
from chat.turn import outbox
from sessions_app.models import ChatSession


def _under_way(session_ref: Any) -> Q:
    """The session's turn is not over (chat.selectors.turn_under_way), an approval is pending, or a message is queued."""
    return (
        turn_under_way(session_ref)
        | Exists(Approval.objects.filter(session=session_ref, status=Approval.Status.PENDING))
        | Exists(QueuedMessage.objects.filter(session=session_ref))
    )


def idle_sessions(*, cutoff: datetime) -> QuerySet[ChatSession]:
    """Sessions with no activity since `cutoff` and nothing under way, oldest activity first."""
    return ChatSession.objects.filter(updated_at__lt=cutoff).filter(~_under_way(OuterRef("pk"))).order_by("updated_at", "pk")


def idle_sessions_under_way(*, cutoff: datetime) -> QuerySet[ChatSession]:
    """Idle sessions kept because something in them is under way (a reply, a tool, a plan, an approval)."""
    return ChatSession.objects.filter(updated_at__lt=cutoff).filter(_under_way(OuterRef("pk")))


@dataclass(frozen=True)
class BatchResult:
    candidates: int
    sessions: int
    messages: int


def idle_sessions_delete_batch(*, cutoff: datetime, batch_size: int, skip: set[uuid.UUID]) -> BatchResult:
    """Delete up to `batch_size` idle sessions in one transaction, with their messages and reactions.

    Locks the chosen session rows, skipping rows another transaction holds (a turn starting):
    `turn_start` locks the session row before adding messages, so once the lock is held the
    streaming re-check below is final. Sessions found streaming then are added to `skip`.
    """
    with transaction.atomic():
        candidates = list(
            idle_sessions(cutoff=cutoff)
            .exclude(pk__in=skip)
            .select_for_update(skip_locked=True)
            .values_list("pk", flat=True)[:batch_size]
        )
        if not candidates:
            return BatchResult(0, 0, 0)
        # Checked again under the locks: a turn that started meanwhile holds the row until it committed.
        running = set(ChatSession.objects.filter(pk__in=candidates).filter(_under_way(OuterRef("pk"))).values_list("pk", flat=True))
        skip.update(running)
        doomed = ChatSession.objects.filter(pk__in=[pk for pk in candidates if pk not in running], updated_at__lt=cutoff)
        doomed_ids = list(doomed.values_list("pk", flat=True))
        skip.update(set(candidates) - set(doomed_ids))  # touched meanwhile: not idle any more
        if not doomed_ids:
            return BatchResult(len(candidates), 0, 0)
        _, per_model = ChatSession.objects.filter(pk__in=doomed_ids).delete()
        for session_id in doomed_ids:
            outbox.frame(session_id, events.session_deleted(session_id))
    return BatchResult(len(candidates), per_model.get(ChatSession._meta.label, 0), per_model.get(Message._meta.label, 0))


class Command(BaseCommand):
    help = (
        "Delete chat sessions idle longer than the TTL (judged by their last activity), with their messages and "
        "reactions, in batches. Sessions with something under way (a reply streaming, a tool call, a plan, an approval, a "
        "queued message) are kept. Also purges expired idempotency records."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "--days",
            type=int,
            default=None,
            help="Delete sessions idle longer than this many days (default: CHAT['SESSION_TTL_DAYS']).",
        )
        parser.add_argument(
            "--batch-size", type=int, default=500, help="Sessions deleted per transaction (default: 500)."
        )
        parser.add_argument("--dry-run", action="store_true", help="List what would be deleted; delete nothing.")

    def handle(self, *args: Any, days: int | None, batch_size: int, dry_run: bool, **options: Any) -> None:
        if days is None:
            days = int(settings.CHAT["SESSION_TTL_DAYS"])
        if days < 0:
            raise CommandError(f"--days must be 0 or more, not {days}.")
        if batch_size < 1:
            raise CommandError(f"--batch-size must be 1 or more, not {batch_size}.")
        cutoff = timezone.now() - timedelta(days=days)
        if dry_run:
            self._dry_run(cutoff, days)
            return

        sessions = messages = 0
        skip: set[uuid.UUID] = set()
        while True:
            # Each batch deletes its sessions or adds them to `skip`, so this ends; rows locked by others are left.
            batch = idle_sessions_delete_batch(cutoff=cutoff, batch_size=batch_size, skip=skip)
            if not batch.candidates:
                break
            sessions += batch.sessions
            messages += batch.messages
        purged = idempotency_purge()
        kept = idle_sessions_under_way(cutoff=cutoff).count()
        # Open sockets of deleted sessions are told, in whichever process they are, before this exits.
        engine.wait_sent()

        self.stdout.write(self.style.SUCCESS(f"Deleted {sessions} sessions ({messages} messages)."))
        if kept:
            self.stdout.write(f"Kept {kept} idle sessions with a reply, a tool call, a plan or an approval under way.")
        self.stdout.write(f"Purged {purged} expired idempotency records.")

    def _dry_run(self, cutoff: datetime, days: int) -> None:
        idle = idle_sessions(cutoff=cutoff).select_related("owner")
        count = idle.count()
        message_count = Message.objects.filter(session__in=idle.values("pk")).count()
        self.stdout.write(
            f"Dry run: would delete {count} sessions ({message_count} messages) idle for more than {days} days "
            f"(last activity before {cutoff.isoformat(timespec='seconds')})."
        )
        for session in idle.iterator(chunk_size=1000):
            title = " ".join(session.title.split()) or "(untitled)"
            self.stdout.write(
                f"  {session.pk}  {session.owner.get_username()}  {title}  "
                f"last activity {session.updated_at.isoformat(timespec='seconds')}"
            )
        kept = idle_sessions_under_way(cutoff=cutoff).count()
        if kept:
            self.stdout.write(f"Would keep {kept} idle sessions with a reply, a tool call, a plan or an approval under way.")
        ttl = timedelta(seconds=settings.CHAT["IDEMPOTENCY_TTL_SECONDS"])
        expired = IdempotencyRecord.objects.filter(created_at__lt=timezone.now() - ttl).count()
        self.stdout.write(f"Would purge {expired} expired idempotency records.")
