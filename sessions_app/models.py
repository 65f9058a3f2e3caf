from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models


class ChatSession(models.Model):
    class Mode(models.TextChoices):
        ORCHESTRATED = "orchestrated"
        DIRECT = "direct"

    class OnBusy(models.TextChoices):
        """What a user message does while the session's turn runs (a reply, a tool or a plan)."""

        REJECT = "reject"  # refused with `busy`
        ENQUEUE = "enqueue"  # saved in the queue, answered when the turn ends
        INTERRUPT = "interrupt"  # the running turn is stopped, then the message is answered

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="chat_sessions")
    title = models.CharField(max_length=200, blank=True, default="")
    mode = models.CharField(max_length=16, choices=Mode.choices, default=Mode.ORCHESTRATED)
    agent = models.ForeignKey("chat.Agent", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    # The last seq handed out, and the number of messages: both bumped under the session row lock
    # in the transaction that adds the messages (see chat.turn.locking), never counted per request.
    seq = models.PositiveBigIntegerField(default=0)
    message_count = models.PositiveBigIntegerField(default=0)
    # Tokens of the session's replies, as their providers reported them: added in each reply's final
    # transaction (chat.turn.replies), never summed per request.
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)
    # The active branch of the message tree (chat.branches): its last message, that message's line
    # and depth, and how many lines the tree has (1: the conversation never forked). Moved under
    # the session row lock by the steps that add messages or switch branches.
    leaf = models.ForeignKey("chat.Message", null=True, blank=True, on_delete=models.DO_NOTHING, related_name="+")
    # Defaults in the database too: a server process of the previous release, still running while a
    # deployment migrates, creates sessions without these columns.
    leaf_line = models.PositiveIntegerField(default=1, db_default=1)
    leaf_depth = models.PositiveBigIntegerField(default=0, db_default=0)
    lines = models.PositiveIntegerField(default=1, db_default=1)
    on_busy = models.CharField(max_length=16, choices=OnBusy.choices, default=OnBusy.REJECT, db_default=OnBusy.REJECT)
    # Messages waiting in the session's queue (chat.QueuedMessage), kept with them under the row lock.
    queued = models.PositiveIntegerField(default=0, db_default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    # Last activity: set when the session is edited or gets a message.
    updated_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        indexes = [models.Index(fields=["owner", "-updated_at", "-id"], name="session_owner_activity")]

    def __str__(self) -> str:
        return self.title or f"Session {self.pk}"
