from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q


class Agent(models.Model):
    class Provider(models.TextChoices):
        DEMO = "demo", "Demo (offline)"
        OPENAI = "openai", "OpenAI-compatible"

    slug = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=100)
    description = models.TextField(blank=True, default="")
    system_prompt = models.TextField(blank=True, default="")
    provider = models.CharField(max_length=16, choices=Provider.choices, default=Provider.DEMO)
    model = models.CharField(max_length=200, blank=True, default="", help_text="Model name; empty uses OPENAI_MODEL.")
    base_url = models.CharField(max_length=500, blank=True, default="", help_text="Empty uses OPENAI_BASE_URL.")
    api_key_env = models.CharField(
        max_length=100, blank=True, default="", help_text="Name of the environment variable holding the key; empty uses OPENAI_API_KEY."
    )
    tools = models.JSONField(default=list, blank=True, help_text="Names of the tools this agent may call.")
    is_orchestrator = models.BooleanField(default=False)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.name


class Message(models.Model):
    class Role(models.TextChoices):
        USER = "user"
        ASSISTANT = "assistant"
        TOOL = "tool"
        SYSTEM = "system"

    class Type(models.TextChoices):
        TEXT = "text"
        TOOL_CALL = "tool_call"
        TOOL_RESULT = "tool_result"
        APPROVAL = "approval"
        PLAN = "plan"
        EVENT = "event"

    class Status(models.TextChoices):
        COMPLETE = "complete"
        STREAMING = "streaming"
        CANCELLED = "cancelled"
        FAILED = "failed"
        INTERRUPTED = "interrupted"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    session = models.ForeignKey("sessions_app.ChatSession", on_delete=models.CASCADE, related_name="messages")
    seq = models.PositiveBigIntegerField()
    role = models.CharField(max_length=16, choices=Role.choices)
    type = models.CharField(max_length=16, choices=Type.choices, default=Type.TEXT)
    content = models.TextField(blank=True, default="")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.COMPLETE)
    agent = models.ForeignKey(Agent, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    client_id = models.CharField(max_length=64, null=True, blank=True)
    reply_to = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="replies")
    # The conversation is a tree (chat.branches): `parent` is the message before this one on its
    # branch (None for a first message). A message and the messages with the same parent are its
    # versions (a regenerated reply, an edited message). `line` numbers the chains of the tree: a
    # message continues its parent's line unless the parent had a child already, then it starts a
    # new one (a `Branch` row says where it forks). `depth` is the message's place on its branch
    # (1 for a first message), so the length of a branch is its last message's depth.
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.DO_NOTHING, related_name="+", db_index=False)
    # Defaults in the database too: a server process of the previous release, still running while a
    # deployment migrates, inserts messages without these columns.
    line = models.PositiveIntegerField(default=1, db_default=1)
    depth = models.PositiveBigIntegerField(default=0, db_default=0)
    metadata = models.JSONField(default=dict, blank=True)
    error = models.TextField(null=True, blank=True)
    # The server process generating a streaming reply (see chat.turn.liveness); empty otherwise.
    worker_id = models.CharField(max_length=64, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["session", "seq"]
        constraints = [
            models.UniqueConstraint(fields=["session", "seq"], name="message_session_seq_unique"),
            models.UniqueConstraint(
                fields=["session", "client_id"], condition=Q(client_id__isnull=False), name="message_session_client_id_unique"
            ),
        ]
        indexes = [
            # Finding running replies (busy check, interrupted sweep) stays cheap however long the history.
            models.Index(fields=["session"], condition=Q(status="streaming"), name="message_streaming_session"),
            models.Index(fields=["reply_to"], name="message_reply_to"),
            models.Index(fields=["session", "parent"], name="message_session_parent"),
        ]

    def __str__(self) -> str:
        return f"{self.session_id}#{self.seq} {self.role}"


class Branch(models.Model):
    """Where a line of a session's message tree forks from another (chat.branches). Line 1 has no row.

    A line starts when a message is added under a parent that already has a child (an edit, a
    regenerated reply): the new line's messages follow `base_seq` of line `base_line`. A first
    message added when the session has one already (an edit of it) starts a line with no base.
    """

    session = models.ForeignKey("sessions_app.ChatSession", on_delete=models.CASCADE, related_name="branches")
    line = models.PositiveIntegerField()
    base_line = models.PositiveIntegerField(null=True, blank=True)
    base_seq = models.PositiveBigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["session", "line"], name="branch_session_line_unique")]

    def __str__(self) -> str:
        return f"{self.session_id} line {self.line}"


class QueuedMessage(models.Model):
    """A user message waiting for the session's running turn to end (`on_busy` enqueue or interrupt).

    Saved at once; when the turn is over it becomes a message of the session, in `position`
    order, and is answered (chat.turn.turns). Any server process takes it, so a queued message
    outlives the process it arrived at. Until then the user may cancel it.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    session = models.ForeignKey("sessions_app.ChatSession", on_delete=models.CASCADE, related_name="queue")
    position = models.BigIntegerField()
    content = models.TextField(blank=True, default="")
    client_id = models.CharField(max_length=64, null=True, blank=True)
    reply = models.BooleanField(default=True)
    # The user message this one is a new version of (an edit), if any.
    edit_of = models.ForeignKey(Message, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    # Sent with on_busy=interrupt: the running turn was stopped for it, and it goes first.
    interrupt = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["session", "position"]
        constraints = [
            models.UniqueConstraint(fields=["session", "position"], name="queued_session_position_unique"),
            models.UniqueConstraint(
                fields=["session", "client_id"], condition=Q(client_id__isnull=False), name="queued_session_client_id_unique"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.session_id} queued #{self.position}"


class Reaction(models.Model):
    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="reactions")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    emoji = models.CharField(max_length=32)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["message", "user", "emoji"], name="reaction_unique")]

    def __str__(self) -> str:
        return f"{self.emoji} on {self.message_id}"


class IdempotencyRecord(models.Model):
    """The first answer to a request sent with an `Idempotency-Key`, replayed on retries."""

    class State(models.TextChoices):
        IN_PROGRESS = "in_progress"
        DONE = "done"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=255)
    request_hash = models.CharField(max_length=64)
    state = models.CharField(max_length=16, choices=State.choices, default=State.IN_PROGRESS)
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    response_body = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "key"], name="idempotency_user_key_unique")]


class Worker(models.Model):
    """A live server process: its heartbeat tells other processes whether its replies still run."""

    id = models.CharField(primary_key=True, max_length=64)
    hostname = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    started_at = models.DateTimeField(auto_now_add=True)
    heartbeat_at = models.DateTimeField(db_index=True)


class ToolCall(models.Model):
    """One call of a tool by an agent, from request to result. Survives restarts; decided at most once."""

    class Status(models.TextChoices):
        REQUESTED = "requested"  # made by the model, not yet looked at
        AWAITING_APPROVAL = "awaiting_approval"  # a human must approve it first
        APPROVED = "approved"  # approved, about to run
        AWAITING_CLIENT = "awaiting_client"  # runs in the client; waiting for its tool_result
        RUNNING = "running"
        DONE = "done"
        FAILED = "failed"  # invalid arguments, unknown tool, or the tool raised
        REJECTED = "rejected"  # a human said no; it never ran
        SUPERSEDED = "superseded"  # the user sent a new message instead of answering; it never ran

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    session = models.ForeignKey("sessions_app.ChatSession", on_delete=models.CASCADE, related_name="tool_calls")
    # The assistant reply whose model asked for the call; the turn goes on after all its calls end.
    reply = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="tool_calls")
    # The `tool_call` message shown in the history.
    message = models.ForeignKey(Message, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    ordinal = models.PositiveSmallIntegerField(default=0)
    provider_call_id = models.CharField(max_length=200, blank=True, default="")
    agent = models.ForeignKey(Agent, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    name = models.CharField(max_length=100)
    arguments = models.JSONField(default=dict, blank=True)
    runs_on = models.CharField(max_length=16, default="server")
    needs_approval = models.BooleanField(default=False)
    status = models.CharField(max_length=24, choices=Status.choices, default=Status.REQUESTED)
    output = models.JSONField(null=True, blank=True)
    is_error = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    # When a server tool began to run, and in which process (see chat.turn.liveness): a call
    # `running` in a dead process lost its result.
    started_at = models.DateTimeField(null=True, blank=True)
    worker_id = models.CharField(max_length=64, blank=True, default="")
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at", "ordinal"]
        indexes = [models.Index(fields=["reply", "ordinal"], name="toolcall_reply_ordinal"), models.Index(fields=["session", "status"])]

    def __str__(self) -> str:
        return f"{self.name} ({self.status})"


class Approval(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending"
        APPROVED = "approved"
        REJECTED = "rejected"
        SUPERSEDED = "superseded"  # the user sent a new message instead of deciding

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    session = models.ForeignKey("sessions_app.ChatSession", on_delete=models.CASCADE, related_name="approvals")
    tool_call = models.OneToOneField(ToolCall, on_delete=models.CASCADE, related_name="approval")
    message = models.ForeignKey(Message, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    comment = models.TextField(blank=True, default="")
    decided_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    decided_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["session", "status"])]


class Plan(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending"
        APPROVED = "approved"
        REJECTED = "rejected"
        RUNNING = "running"
        DONE = "done"
        FAILED = "failed"
        SUPERSEDED = "superseded"  # the user sent a new message instead of deciding

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    session = models.ForeignKey("sessions_app.ChatSession", on_delete=models.CASCADE, related_name="plans")
    # The reply in which the orchestrator proposed the plan, and the `plan` message shown in the history.
    reply = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="plans")
    message = models.ForeignKey(Message, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    steps = models.JSONField(default=list)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    current_step = models.PositiveSmallIntegerField(default=0)
    # While running: the reply of the step under way, and the process driving the plan.
    step_message = models.ForeignKey(Message, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    worker_id = models.CharField(max_length=64, blank=True, default="")
    comment = models.TextField(blank=True, default="")
    decided_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    decided_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["session", "status"])]


class UsageDay(models.Model):
    """A user's tokens on one day (UTC, TIME_ZONE): added in each reply's final transaction, never summed per request."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    day = models.DateField()
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)
    replies = models.PositiveIntegerField(default=0, help_text="Replies counted (usage reported, or estimated from the text).")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "day"], name="usage_user_day_unique")]
        indexes = [models.Index(fields=["day"], name="usage_day")]
        verbose_name = "usage per day"
        verbose_name_plural = "usage per day"

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __str__(self) -> str:
        return f"{self.user_id} on {self.day}"


class TokenBudget(models.Model):
    """A user's own daily token budget, instead of DAILY_TOKEN_BUDGET (0: no budget for this user)."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="token_budget")
    daily_tokens = models.PositiveBigIntegerField(help_text="Tokens a day (prompt and completion); 0 for no limit.")

    def __str__(self) -> str:
        return f"{self.daily_tokens} tokens a day for {self.user_id}"
