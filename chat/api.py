from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from chat import idempotency, selectors, tools
from chat.serializers import (
    AgentSerializer,
    ErrorSerializer,
    MessageCreateSerializer,
    MessageSerializer,
    ReactionCreateSerializer,
    ReactionsResponseSerializer,
)
from chat.turn import reactions, turns
from sessions_app.selectors import session_get

IDEMPOTENCY_KEY = OpenApiParameter(
    "Idempotency-Key",
    OpenApiTypes.STR,
    OpenApiParameter.HEADER,
    description="Makes the request safe to retry: the same key and body replay the first answer (kept 24 h).",
)


class AgentList(APIView):
    @extend_schema(responses=AgentSerializer(many=True), operation_id="agents_list")
    def get(self, request: Request) -> Response:
        return Response(AgentSerializer(selectors.agent_list(), many=True).data)


class ToolList(APIView):
    @extend_schema(responses=tools.ToolSerializer(many=True), operation_id="tools_list")
    def get(self, request: Request) -> Response:
        return Response(tools.ToolSerializer(tools.all_tools(), many=True).data)


class MessageCreate(APIView):
    @extend_schema(
        request=MessageCreateSerializer,
        parameters=[IDEMPOTENCY_KEY],
        responses={
            201: MessageSerializer,
            400: ErrorSerializer,
            404: ErrorSerializer,
            409: ErrorSerializer,
            422: ErrorSerializer,
        },
        operation_id="messages_create",
    )
    def post(self, request: Request) -> Response:
        data = request.data  # parse first: malformed JSON is a 400 before anything else
        key = request.headers.get("Idempotency-Key")
        claim = None
        if key is not None:
            digest = idempotency.request_hash("POST", request.path, data)
            claim = idempotency.idempotency_claim(user=request.user, key=key, digest=digest)
            if claim.replay is not None:
                replay_status, replay_body = claim.replay
                return Response(replay_body, status=replay_status, headers={"Idempotent-Replayed": "true"})
        try:
            form = MessageCreateSerializer(data=data)
            form.is_valid(raise_exception=True)
            session = session_get(user=request.user, session_id=form.validated_data["session"])
        except BaseException:
            if claim is not None and claim.record is not None:
                idempotency.idempotency_release(record=claim.record)  # nothing ran: a corrected retry may
            raise
        body = turns.message_send(
            user=request.user, session=session, content=form.validated_data["content"],
            reply=form.validated_data["reply"], claim=claim,
        )
        return Response(body, status=status.HTTP_201_CREATED)


class MessageReactions(APIView):
    @extend_schema(
        request=ReactionCreateSerializer,
        responses={200: ReactionsResponseSerializer, 201: ReactionsResponseSerializer, 400: ErrorSerializer, 404: ErrorSerializer},
        operation_id="messages_reactions_create",
    )
    def post(self, request: Request, message_id: str) -> Response:
        message = selectors.message_get(user=request.user, message_id=message_id)
        form = ReactionCreateSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        created, summary = reactions.reaction_add(message=message, user=request.user, emoji=form.validated_data["emoji"])
        return Response(
            {"message_id": str(message.pk), "reactions": summary},
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )


class MessageReactionDelete(APIView):
    @extend_schema(responses={204: None, 404: ErrorSerializer}, operation_id="messages_reactions_destroy")
    def delete(self, request: Request, message_id: str, emoji: str) -> Response:
        message = selectors.message_get(user=request.user, message_id=message_id)
        reactions.reaction_remove(message=message, user=request.user, emoji=emoji)
        return Response(status=status.HTTP_204_NO_CONTENT)
