from __future__ import annotations

from typing import Any

from django.conf import settings
from rest_framework import serializers

from chat.serializers import StrictCharField
from sessions_app.models import ChatSession


class SessionSerializer(serializers.ModelSerializer):
    """The contract's `Session`; `message_count` is kept on the row by every step that adds a message."""

    agent = serializers.SlugRelatedField(slug_field="slug", read_only=True, allow_null=True)

    class Meta:
        model = ChatSession
        fields = ["id", "title", "mode", "agent", "created_at", "updated_at", "message_count"]
        read_only_fields = fields


class SessionWriteSerializer(serializers.Serializer):
    title = StrictCharField(max_length=settings.CHAT["MAX_TITLE_CHARS"], allow_blank=True, required=False)
    mode = serializers.ChoiceField(choices=ChatSession.Mode.choices, required=False)
    agent = StrictCharField(max_length=64, allow_null=True, required=False)


def session_data(session: ChatSession) -> dict[str, Any]:
    return dict(SessionSerializer(session).data)
