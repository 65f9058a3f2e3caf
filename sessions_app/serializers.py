from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from chat import usage
from chat.serializers import StrictCharField, TokensSerializer
from sessions_app.models import ChatSession


class SessionSerializer(serializers.ModelSerializer):
    """The contract's `Session`; `message_count` and `usage` are kept on the row by the steps that add messages and end replies."""

    agent = serializers.SlugRelatedField(slug_field="slug", read_only=True, allow_null=True)
    usage = serializers.SerializerMethodField()
    leaf = serializers.UUIDField(
        source="leaf_id", read_only=True, allow_null=True,
        help_text="The last message of the active branch: history (pages, the model's context, exports) follows the branch that ends here.",
    )

    class Meta:
        model = ChatSession
        fields = ["id", "title", "mode", "agent", "created_at", "updated_at", "message_count", "usage", "leaf", "on_busy"]
        read_only_fields = fields
        extra_kwargs = {"on_busy": {"help_text": "What a user message does while the session's turn runs: reject (busy), enqueue, interrupt."}}

    @extend_schema_field(TokensSerializer)
    def get_usage(self, session: ChatSession) -> dict[str, int]:
        """Tokens of the session's replies, as their providers reported them."""
        return usage.as_data(session.prompt_tokens, session.completion_tokens)


class SessionWriteSerializer(serializers.Serializer):
    title = StrictCharField(max_length=settings.CHAT["MAX_TITLE_CHARS"], allow_blank=True, required=False)
    mode = serializers.ChoiceField(choices=ChatSession.Mode.choices, required=False)
    agent = StrictCharField(max_length=64, allow_null=True, required=False)
    on_busy = serializers.ChoiceField(choices=ChatSession.OnBusy.choices, required=False)


def session_data(session: ChatSession) -> dict[str, Any]:
    return dict(SessionSerializer(session).data)
