from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.utils import timezone
from django.utils.http import urlencode
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from chat import idempotency, search, selectors, tools, usage
from chat.engine.process import engine
from chat.exceptions import Unavailable
from chat.models import Message
from chat.serializers import (
    AgentSerializer,
    ErrorSerializer,
    MessageCreateSerializer,
    MessageSerializer,
    QueuedResponseSerializer,
    ReactionCreateSerializer,
    ReactionsResponseSerializer,
    RegenerateSerializer,
    SearchPageSerializer,
    UsageSerializer,
    message_data,
)
from chat.turn import branching, reactions, turns
from chatproject.throttling import SearchRateThrottle
from sessions_app.selectors import session_get

IDEMPOTENCY_KEY = OpenApiParameter(
    "Idempotency-Key",
    OpenApiTypes.STR,
    OpenApiParameter.HEADER,
    description="Makes the request safe to retry: the same key and body replay the first answer (kept 24 h).",
)


class StartsTurns:
    """A view whose POST starts a turn: refused (503 `unavailable`, nothing read or saved) while this process drains."""

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)  # type: ignore[misc]
        if request.method == "POST" and engine.draining:
            raise Unavailable("This server is restarting and takes no new turns: send it again (with the same Idempotency-Key).")


class AgentList(APIView):
    @extend_schema(responses=AgentSerializer(many=True), operation_id="agents_list")
    def get(self, request: Request) -> Response:
        return Response(AgentSerializer(selectors.agent_list(), many=True).data)


class ToolList(APIView):
    @extend_schema(responses=tools.ToolSerializer(many=True), operation_id="tools_list")
    def get(self, request: Request) -> Response:
        return Response(tools.ToolSerializer(tools.all_tools(), many=True).data)


def _claim(request: Request, data: Any) -> idempotency.Claim | None:
    """The request's `Idempotency-Key` claim (None without the header); `claim.replay` when it was answered before."""
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    return idempotency.idempotency_claim(user=request.user, key=key, digest=idempotency.request_hash("POST", request.path, data))


def _replayed(claim: idempotency.Claim) -> Response:
    replay_status, replay_body = claim.replay  # type: ignore[misc]
    return Response(replay_body, status=replay_status, headers={"Idempotent-Replayed": "true"})


def _checked(claim: idempotency.Claim | None, check: Callable[[], Any]) -> Any:
    """Run the request's checks; when they fail nothing ran, so the key is released (a corrected retry may use it)."""
    try:
        return check()
    except BaseException:
        if claim is not None and claim.record is not None:
            idempotency.idempotency_release(record=claim.record)
        raise


class MessageCreate(StartsTurns, APIView):
    @extend_schema(
        request=MessageCreateSerializer,
        parameters=[IDEMPOTENCY_KEY],
        responses={
            201: MessageSerializer,
            202: OpenApiResponse(QueuedResponseSerializer, description="The session's turn runs: the message waits in its queue (on_busy enqueue or interrupt)."),
            400: ErrorSerializer,
            404: ErrorSerializer,
            409: ErrorSerializer,
            422: ErrorSerializer,
        },
        operation_id="messages_create",
    )
    def post(self, request: Request) -> Response:
        data = request.data  # parse first: malformed JSON is a 400 before anything else
        claim = _claim(request, data)
        if claim is not None and claim.replay is not None:
            return _replayed(claim)

        def check() -> tuple[dict[str, Any], Any]:
            form = MessageCreateSerializer(data=data)
            form.is_valid(raise_exception=True)
            return form.validated_data, session_get(user=request.user, session_id=form.validated_data["session"])

        valid, session = _checked(claim, check)
        answer, body = turns.message_send(
            user=request.user, session=session, content=valid["content"], reply=valid["reply"], claim=claim,
            on_busy=valid.get("on_busy"), edit_of=valid.get("edit_of"),
        )
        return Response(body, status=answer)


class MessageRegenerate(StartsTurns, APIView):
    @extend_schema(
        request=RegenerateSerializer,
        parameters=[IDEMPOTENCY_KEY],
        responses={201: MessageSerializer, 400: ErrorSerializer, 404: ErrorSerializer, 409: ErrorSerializer, 422: ErrorSerializer, 429: ErrorSerializer},
        operation_id="messages_regenerate",
    )
    def post(self, request: Request, message_id: str) -> Response:
        """Another answer to what this assistant reply answered: a new version of it (the old one is kept), streamed to
        the session's sockets like any reply; the session's active branch moves to it. 409 `busy` while the turn runs."""
        data = request.data
        claim = _claim(request, data)
        if claim is not None and claim.replay is not None:
            return _replayed(claim)

        def check() -> Message:
            RegenerateSerializer(data=data).is_valid(raise_exception=True)
            return selectors.message_get(user=request.user, message_id=message_id)

        message = _checked(claim, check)

        def regenerate() -> tuple[int, dict[str, Any]]:
            turn = branching.reply_regenerate(user=request.user, session_id=message.session_id, message_id=message.pk)
            assert turn.reply is not None
            return 201, message_data(turn.reply, request.user.pk)

        answer, body = idempotency.run_once(claim=claim, work=regenerate)
        return Response(body, status=answer)


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


USAGE_MAX_DAYS = 366


def _whole(request: Request, name: str, default: int, low: int, high: int) -> int:
    given = request.query_params.getlist(name)
    if not given:
        return default
    if len(given) > 1 or not (given[0].isascii() and given[0].isdigit() and low <= int(given[0]) <= high):
        raise ValidationError({name: [f"Must be a whole number from {low} to {high}, given once."]})
    return int(given[0])


class Usage(APIView):
    @extend_schema(
        parameters=[OpenApiParameter("days", OpenApiTypes.INT, description=f"Days back, today included (1 to {USAGE_MAX_DAYS}; default 30).")],
        responses={200: UsageSerializer, 400: ErrorSerializer},
        operation_id="usage_retrieve",
    )
    def get(self, request: Request) -> Response:
        """The user's token usage per day (UTC), kept up to date by each reply's end, and today's budget."""
        days = selectors.usage_days(user=request.user, days=_whole(request, "days", 30, 1, USAGE_MAX_DAYS))
        rows = [{"day": d.day, "replies": d.replies, **usage.as_data(d.prompt_tokens, d.completion_tokens)} for d in days]
        today = next((row for row in rows if row["day"] == timezone.localdate()), None)
        if today is None:
            today = {"day": timezone.localdate(), "replies": 0, **usage.as_data(0, 0)}
        budget = selectors.daily_token_budget(user=request.user)
        data = {
            "daily_budget": budget or None,
            "today": today,
            "remaining_today": max(0, budget - today["total_tokens"]) if budget else None,
            "days": rows,
        }
        return Response(UsageSerializer(data).data)


class Search(APIView):
    throttle_classes = (SearchRateThrottle,)  # reads, but costly ones (bench/search.py)

    @extend_schema(
        parameters=[
            OpenApiParameter("q", OpenApiTypes.STR, required=True, description="Words to find (each a prefix, all required; up to 10 words)."),
            OpenApiParameter("limit", OpenApiTypes.INT, description="Results per page (1 to 50; default 20)."),
            OpenApiParameter("offset", OpenApiTypes.INT, description=f"Results to skip (0 to {search.MAX_OFFSET})."),
        ],
        responses={200: SearchPageSerializer, 400: ErrorSerializer, 429: ErrorSerializer},
        operation_id="search_messages",
    )
    def get(self, request: Request) -> Response:
        """Full-text search over the user's own finished text messages, across their sessions, best match first."""
        q = request.query_params.getlist("q")
        if len(q) != 1:
            raise ValidationError({"q": ["Give the words to search for, once."]})
        limit = _whole(request, "limit", 20, 1, 50)
        offset = _whole(request, "offset", 0, 0, search.MAX_OFFSET)
        hits = search.search_messages(user_id=request.user.pk, q=q[0], limit=limit + 1, offset=offset)

        def page(at: int) -> str:
            return request.build_absolute_uri(f"{request.path}?{urlencode({'q': q[0], 'limit': limit, 'offset': at})}")

        more = len(hits) > limit and offset + limit <= search.MAX_OFFSET
        data = {
            "next": page(offset + limit) if more else None,
            "previous": page(max(0, offset - limit)) if offset > 0 else None,
            "results": [
                {
                    "message": {"id": h.message_id, "session": h.session_id, "seq": h.seq, "role": h.role, "created_at": h.created_at},
                    "session": {"id": h.session_id, "title": h.session_title},
                    "snippet": h.snippet, "highlights": [list(r) for r in h.highlights], "rank": h.rank,
                }
                for h in hits[:limit]
            ],
        }
        return Response(SearchPageSerializer(data).data)
