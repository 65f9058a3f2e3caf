"""`Idempotency-Key` for REST writes: a retry replays the first answer and creates nothing.

The key is claimed by inserting a row in its own transaction: the unique (user, key) constraint
decides which of two concurrent requests runs; the other sees the row `in_progress` (409) or,
once done, replays its answer. A different body under the same key is 422.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.utils import timezone

from chat.exceptions import ChatError
from chat.models import IdempotencyRecord

MAX_KEY_LENGTH = 255
# A claim older than this whose request never finished (the process died) may be taken over.
STALE_CLAIM_SECONDS = 120


class KeyReused(ChatError):
    code = "idempotency_key_reused"
    status = 422


class KeyInUse(ChatError):
    code = "idempotency_key_in_use"
    status = 409


@dataclass
class Claim:
    record: IdempotencyRecord | None
    replay: tuple[int, Any] | None = None


def request_hash(method: str, path: str, body: Any) -> str:
    canonical = json.dumps({"m": method, "p": path, "b": body}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def validate_key(key: str) -> str:
    key = key.strip()
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise ChatError(
            f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable characters.", code="validation_error", field="Idempotency-Key"
        )
    return key


def idempotency_claim(*, user: AbstractBaseUser, key: str, digest: str) -> Claim:
    """Claim the key for this request, or say what to answer instead (replay, 409, 422)."""
    key = validate_key(key)
    now = timezone.now()
    ttl = timedelta(seconds=settings.CHAT["IDEMPOTENCY_TTL_SECONDS"])
    for _ in range(2):
        try:
            with transaction.atomic():
                record = IdempotencyRecord.objects.create(user=user, key=key, request_hash=digest)
            return Claim(record=record)
        except IntegrityError:
            existing = IdempotencyRecord.objects.filter(user=user, key=key).first()
            if existing is None:
                continue  # deleted meanwhile: claim again
            expired = existing.created_at < now - ttl
            stale = existing.state == IdempotencyRecord.State.IN_PROGRESS and existing.created_at < now - timedelta(
                seconds=STALE_CLAIM_SECONDS
            )
            if expired or stale:
                # A stale claim is only taken over while it is still in progress; its first request,
                # should it still run, then finds its claim gone and rolls back (`idempotency_hold`).
                gone = IdempotencyRecord.objects.filter(pk=existing.pk, created_at=existing.created_at)
                if not expired:
                    gone = gone.filter(state=IdempotencyRecord.State.IN_PROGRESS)
                gone.delete()
                continue
            if existing.request_hash != digest:
                raise KeyReused("This Idempotency-Key was used with a different request body.") from None
            if existing.state == IdempotencyRecord.State.IN_PROGRESS:
                raise KeyInUse("A request with this Idempotency-Key is still being processed; retry shortly.") from None
            return Claim(record=None, replay=(existing.response_status or 200, existing.response_body))
    raise KeyInUse("A request with this Idempotency-Key is still being processed; retry shortly.")


def idempotency_hold(*, record: IdempotencyRecord) -> None:
    """Lock this request's claim for the rest of the transaction; KeyInUse when another request took it over.

    Call inside the transaction that does the work: the work and the stored answer commit
    together, and a takeover of a stale claim waits for this transaction to end.
    """
    held = IdempotencyRecord.objects.select_for_update().filter(pk=record.pk, state=IdempotencyRecord.State.IN_PROGRESS).exists()
    if not held:
        raise KeyInUse("A request with this Idempotency-Key was taken over by a retry.")


def idempotency_complete(*, record: IdempotencyRecord, status: int, body: Any) -> None:
    IdempotencyRecord.objects.filter(pk=record.pk).update(
        state=IdempotencyRecord.State.DONE, response_status=status, response_body=body
    )


def idempotency_release(*, record: IdempotencyRecord) -> None:
    """The request failed on our side: forget the claim so a retry can run."""
    IdempotencyRecord.objects.filter(pk=record.pk).delete()


def run_once(*, claim: Claim | None, work: Callable[[], tuple[int, Any]]) -> tuple[int, Any]:
    """Run `work` (a write that returns its answer, status and body) in one transaction with its claim's stored answer.

    A retry either replays the answer or, when nothing committed, runs again; it never writes twice.
    """
    record = claim.record if claim is not None else None
    committed: list[bool] = []
    try:
        with transaction.atomic():
            # Registered first, so it runs before the work's own effects leave after the commit.
            transaction.on_commit(lambda: committed.append(True))
            if record is not None:
                idempotency_hold(record=record)
            status, body = work()
            if record is not None:
                idempotency_complete(record=record, status=status, body=body)
    except BaseException:
        if record is not None and not committed:
            idempotency_release(record=record)
        raise
    return status, body


def idempotency_purge() -> int:
    cutoff = timezone.now() - timedelta(seconds=settings.CHAT["IDEMPOTENCY_TTL_SECONDS"])
    deleted, _ = IdempotencyRecord.objects.filter(created_at__lt=cutoff).delete()
    return deleted
