from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from django.db.models import prefetch_related_objects
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from chat.exceptions import InvalidInput
from chat.models import Agent, Message, QueuedMessage, Reaction
from chat.validation import validate_content, validate_emoji
from sessions_app.models import ChatSession


class StrictCharField(serializers.CharField):
    """Only a JSON string: DRF's CharField would quietly turn 42 into "42"."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictUUIDField(serializers.UUIDField):
    """Only a UUID string: DRF's UUIDField would turn the number 17 into a UUID."""

    def to_internal_value(self, data: Any) -> Any:
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictBooleanField(serializers.BooleanField):
    """Only JSON true or false: DRF's BooleanField would take "yes", 1 or "off" as well."""

    def to_internal_value(self, data: Any) -> bool:
        if not isinstance(data, bool):
            self.fail("invalid", input=data)
        return data


class ReactionSerializer(serializers.Serializer):
    emoji = serializers.CharField()
    count = serializers.IntegerField()
    me = serializers.BooleanField()


def summarize_reactions(reactions: Iterable[Reaction], viewer_id: int | None) -> list[dict[str, Any]]:
    """Aggregate reaction rows into `[{"emoji","count","me"}]`, in order of first use."""
    summary: dict[str, dict[str, Any]] = {}
    for reaction in sorted(reactions, key=lambda r: (r.created_at, r.pk)):
        entry = summary.setdefault(reaction.emoji, {"emoji": reaction.emoji, "count": 0, "me": False})
        entry["count"] += 1
        if reaction.user_id == viewer_id:
            entry["me"] = True
    return list(summary.values())


class AgentSerializer(serializers.ModelSerializer):
    tools = serializers.ListField(child=serializers.CharField())

    class Meta:
        model = Agent
        fields = ["slug", "name", "description", "tools"]


class MessageSerializer(serializers.ModelSerializer):
    """The contract's `Message`. Reactions come from a prefetch (no query per message)."""

    session = serializers.UUIDField(source="session_id", read_only=True)
    agent = serializers.SlugRelatedField(slug_field="slug", read_only=True, allow_null=True)
    reply_to = serializers.UUIDField(source="reply_to_id", read_only=True, allow_null=True)
    parent = serializers.UUIDField(source="parent_id", read_only=True, allow_null=True, help_text="The message before this one on its branch; null for a first message.")
    versions = serializers.SerializerMethodField(
        help_text="Ids of this message's versions (the messages with its parent: regenerated replies, edited messages), oldest first, this one included.",
    )
    reactions = serializers.SerializerMethodField()

    class Meta:
        model = Message
        fields = [
            "id", "session", "seq", "role", "type", "content", "status", "agent", "client_id",
            "reply_to", "parent", "versions", "metadata", "error", "reactions", "created_at", "completed_at",
        ]
        read_only_fields = fields

    @extend_schema_field(serializers.ListField(child=serializers.UUIDField()))
    def get_versions(self, message: Message) -> list[str]:
        return versions(message)

    @extend_schema_field(ReactionSerializer(many=True))
    def get_reactions(self, message: Message) -> list[dict[str, Any]]:
        cache = getattr(message, "_prefetched_objects_cache", {})
        if "reactions" not in cache:
            return []  # a message just created has none; pages prefetch them
        return summarize_reactions(cache["reactions"], self.context.get("viewer_id"))

    def to_representation(self, instance: Message) -> dict[str, Any]:
        # The fields above describe the shape (and the OpenAPI schema); `message_data` builds it,
        # about ten times faster than DRF's field by field walk (a page has up to 200 messages).
        cache = getattr(instance, "_prefetched_objects_cache", {})
        return message_data(instance, self.context.get("viewer_id"), reactions=cache.get("reactions", ()))

    def to_representation_by_fields(self, instance: Message) -> dict[str, Any]:
        """DRF's own walk over the declared fields: what `message_data` must equal (see the tests)."""
        return dict(super().to_representation(instance))


def versions(message: Message) -> list[str]:
    """The message's versions as `chat.branches.attach_versions` left them; just itself otherwise."""
    return getattr(message, "_versions", None) or [str(message.pk)]


def iso_datetime(value: datetime | None) -> str | None:
    """A datetime as DRF's DateTimeField writes it (ISO 8601 in UTC, with Z)."""
    if value is None:
        return None
    text = value.astimezone(UTC).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def message_data(
    message: Message, viewer_id: int | None = None, *, with_reactions: bool = False, reactions: Iterable[Reaction] | None = None
) -> dict[str, Any]:
    """The Message shape, as `MessageSerializer` gives it, built by hand: frames are built on the hot path.

    `with_reactions` reads them (one query) for a message that may have some; or pass `reactions`
    already read (then `viewer_id` is the session's owner).
    """
    summary: list[dict[str, Any]] = []
    if reactions is not None:
        summary = summarize_reactions(reactions, viewer_id)
    elif with_reactions:
        prefetch_related_objects([message], "reactions")
        if viewer_id is None:
            viewer_id = message.session.owner_id
        summary = summarize_reactions(message._prefetched_objects_cache["reactions"], viewer_id)
    agent = message.agent if message.agent_id is not None else None
    return {
        "id": str(message.pk),
        "session": str(message.session_id),
        "seq": message.seq,
        "role": message.role,
        "type": message.type,
        "content": message.content,
        "status": message.status,
        "agent": agent.slug if agent is not None else None,
        "client_id": message.client_id,
        "reply_to": str(message.reply_to_id) if message.reply_to_id is not None else None,
        "parent": str(message.parent_id) if message.parent_id is not None else None,
        "versions": versions(message),
        "metadata": message.metadata,
        "error": message.error,
        "reactions": summary,
        "created_at": iso_datetime(message.created_at),
        "completed_at": iso_datetime(message.completed_at),
    }


def queued_data(item: QueuedMessage) -> dict[str, Any]:
    """The `QueuedMessage` shape of REST and frames."""
    return {
        "id": str(item.pk), "session": str(item.session_id), "content": item.content, "client_id": item.client_id, "reply": item.reply,
        "edit_of": str(item.edit_of_id) if item.edit_of_id else None, "interrupt": item.interrupt, "created_at": iso_datetime(item.created_at),
    }


class MessageCreateSerializer(serializers.Serializer):
    session = StrictUUIDField()
    type = serializers.ChoiceField(choices=["text"], default="text")
    content = StrictCharField(trim_whitespace=False, allow_blank=True)
    reply = StrictBooleanField(default=True)
    on_busy = serializers.ChoiceField(
        choices=ChatSession.OnBusy.choices, required=False,
        help_text="While the session's turn runs: reject (409 busy), enqueue (202, answered when the turn ends), interrupt (the turn is "
        "stopped, then this is answered). Default: the session's on_busy.",
    )
    edit_of = StrictUUIDField(required=False, help_text="A user message of the session this one is a new version of: the conversation branches there.")

    def validate_content(self, value: str) -> str:
        try:
            return validate_content(value)
        except InvalidInput as exc:
            raise serializers.ValidationError(exc.detail) from None


class RegenerateSerializer(serializers.Serializer):
    """No fields: `{}` or no body."""


class QueuedMessageSerializer(serializers.Serializer):
    """A user message waiting in its session's queue, answered when the running turn ends."""

    id = serializers.UUIDField()
    session = serializers.UUIDField()
    content = serializers.CharField(allow_blank=True)
    client_id = serializers.CharField(allow_null=True)
    reply = serializers.BooleanField()
    edit_of = serializers.UUIDField(allow_null=True)
    interrupt = serializers.BooleanField(help_text="Sent with on_busy interrupt: it goes first.")
    created_at = serializers.DateTimeField()


class QueuedResponseSerializer(serializers.Serializer):
    queued = QueuedMessageSerializer()


class BranchSwitchSerializer(serializers.Serializer):
    message = StrictUUIDField(help_text="A message of the session (a version to show): the active branch becomes the one through it, to its newest message.")


class ReactionCreateSerializer(serializers.Serializer):
    emoji = StrictCharField(max_length=32, trim_whitespace=False)

    def validate_emoji(self, value: str) -> str:
        try:
            return validate_emoji(value)
        except InvalidInput as exc:
            raise serializers.ValidationError(exc.detail) from None


class ReactionsResponseSerializer(serializers.Serializer):
    message_id = serializers.UUIDField()
    reactions = ReactionSerializer(many=True)


class ErrorSerializer(serializers.Serializer):
    code = serializers.CharField()
    detail = serializers.CharField()
    fields = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()), required=False,
        help_text="validation_error only: the messages of each field.",
    )
    retry_after = serializers.IntegerField(required=False, help_text="throttled only: seconds to wait.")


class TokensSerializer(serializers.Serializer):
    """Tokens as providers report them: a session's totals (`Session.usage`, `message.completed`'s `session_usage`)."""

    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()


class UsageDaySerializer(serializers.Serializer):
    day = serializers.DateField()
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()
    replies = serializers.IntegerField(help_text="Replies counted (usage reported, or estimated from the text).")


class UsageSerializer(serializers.Serializer):
    """`GET /api/v1/usage/`: the user's tokens per day, and what is left of today's budget."""

    daily_budget = serializers.IntegerField(allow_null=True, help_text="Tokens a day; null when there is no budget.")
    today = UsageDaySerializer()
    remaining_today = serializers.IntegerField(allow_null=True, help_text="Tokens left today; null when there is no budget.")
    days = UsageDaySerializer(many=True, help_text="Newest first; days without usage are left out.")


class SearchHitSerializer(serializers.Serializer):
    class HitMessage(serializers.Serializer):
        id = serializers.UUIDField()
        session = serializers.UUIDField()
        seq = serializers.IntegerField()
        role = serializers.CharField()
        created_at = serializers.DateTimeField(allow_null=True)

    class HitSession(serializers.Serializer):
        id = serializers.UUIDField()
        title = serializers.CharField(allow_blank=True)

    message = HitMessage()
    session = HitSession()
    snippet = serializers.CharField(allow_blank=True, help_text="Plain text around the matches (never markup).")
    highlights = serializers.ListField(
        child=serializers.ListField(child=serializers.IntegerField(), min_length=2, max_length=2),
        help_text="[start, end) character ranges of `snippet` that matched.",
    )
    rank = serializers.FloatField(help_text="Higher is better; comparable within one search only.")


class SearchPageSerializer(serializers.Serializer):
    next = serializers.CharField(allow_null=True)
    previous = serializers.CharField(allow_null=True)
    results = SearchHitSerializer(many=True)
