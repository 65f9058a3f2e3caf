from __future__ import annotations

import uuid

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics, status
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from chat.branches import attach_versions
from chat.exceptions import NotFound
from chat.selectors import message_page, queue_items
from chat.serializers import BranchSwitchSerializer, ErrorSerializer, MessageSerializer, QueuedMessageSerializer
from chat.turn import branching, turns
from chatproject.pagination import MessagePagination, SessionPagination
from sessions_app import selectors, services
from sessions_app.serializers import SessionSerializer, SessionWriteSerializer

LIMIT = OpenApiParameter("limit", {"type": "integer", "minimum": 1}, description="Page size, 1 or more (at most 200 are returned; 400 for anything else).")


class SessionListCreate(generics.ListAPIView):
    """GET: the user's sessions, newest activity first. POST: a new session."""

    serializer_class = SessionSerializer
    pagination_class = SessionPagination

    def get_queryset(self):  # type: ignore[no-untyped-def]
        return selectors.session_list(user=self.request.user)

    @extend_schema(parameters=[LIMIT], operation_id="sessions_list")
    def get(self, request: Request, *args: object, **kwargs: object) -> Response:
        return super().get(request, *args, **kwargs)

    @extend_schema(
        request=SessionWriteSerializer,
        responses={201: SessionSerializer, 400: ErrorSerializer},
        operation_id="sessions_create",
    )
    def post(self, request: Request) -> Response:
        form = SessionWriteSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        session = services.session_create(owner=request.user, **form.validated_data)
        return Response(SessionSerializer(session).data, status=status.HTTP_201_CREATED)


class SessionDetail(APIView):
    @extend_schema(responses={200: SessionSerializer, 404: ErrorSerializer}, operation_id="sessions_retrieve")
    def get(self, request: Request, session_id: str) -> Response:
        session = selectors.session_get(user=request.user, session_id=session_id)
        return Response(SessionSerializer(session).data)

    @extend_schema(
        request=SessionWriteSerializer,
        responses={200: SessionSerializer, 400: ErrorSerializer, 404: ErrorSerializer},
        operation_id="sessions_partial_update",
    )
    def patch(self, request: Request, session_id: str) -> Response:
        session = selectors.session_get(user=request.user, session_id=session_id)
        form = SessionWriteSerializer(data=request.data, partial=True)
        form.is_valid(raise_exception=True)
        session = services.session_update(session=session, **form.validated_data)
        return Response(SessionSerializer(session).data)

    @extend_schema(responses={204: None, 404: ErrorSerializer}, operation_id="sessions_destroy")
    def delete(self, request: Request, session_id: str) -> Response:
        session = selectors.session_get(user=request.user, session_id=session_id)
        services.session_delete(session=session)
        return Response(status=status.HTTP_204_NO_CONTENT)


LEAF = OpenApiParameter(
    "leaf", {"type": "string", "format": "uuid"},
    description="Read the branch that ends at this message of the session instead of the active branch (every message from the first to it).",
)
TREE = OpenApiParameter("tree", {"type": "boolean"}, description="true: every message of the session, every branch, by seq (each message names its parent).")


class SessionMessages(generics.ListAPIView):
    """The messages of the session's active branch (or `?leaf=`'s, or `?tree=true`: all) in ascending `seq`, with `total_count`."""

    serializer_class = MessageSerializer
    pagination_class = MessagePagination

    def get_queryset(self):  # type: ignore[no-untyped-def]
        session = selectors.session_get(user=self.request.user, session_id=self.kwargs["session_id"])
        self.session = session
        tree = self.request.query_params.getlist("tree")
        leaf = self.request.query_params.getlist("leaf")
        if len(tree) > 1 or (tree and tree[0] not in ("true", "false")):
            raise ValidationError({"tree": ['Must be "true" or "false", given once.']})
        if leaf and tree == ["true"]:
            raise ValidationError({"leaf": ["Give leaf or tree=true, not both."]})
        if len(leaf) > 1:
            raise ValidationError({"leaf": ["Give one message id."]})
        # Counts are kept on rows: the session's messages, or the depth of the branch's last message.
        queryset, self.total_count = message_page(session=session, leaf=leaf[0] if leaf else None, tree=tree == ["true"])
        return queryset

    def paginate_queryset(self, queryset):  # type: ignore[no-untyped-def]
        page = super().paginate_queryset(queryset)
        if page is not None:
            attach_versions(page, lines=self.session.lines)
        return page

    def get_serializer_context(self) -> dict:
        return {**super().get_serializer_context(), "viewer_id": self.request.user.pk}

    @extend_schema(
        parameters=[LIMIT, LEAF, TREE], responses={200: MessageSerializer(many=True), 400: ErrorSerializer, 404: ErrorSerializer},
        operation_id="sessions_messages_list",
    )
    def get(self, request: Request, *args: object, **kwargs: object) -> Response:
        return super().get(request, *args, **kwargs)


class SessionSwitch(APIView):
    @extend_schema(
        request=BranchSwitchSerializer, responses={200: SessionSerializer, 400: ErrorSerializer, 404: ErrorSerializer, 409: ErrorSerializer},
        operation_id="sessions_switch",
    )
    def post(self, request: Request, session_id: str) -> Response:
        """Make the branch through a message the session's active one (it ends at the newest message under it): how a client
        shows another version of a reply or an edited message. Every socket gets `branch.switched`. 409 `busy` while a turn runs,
        something waits for an answer, or messages are queued."""
        session = selectors.session_get(user=request.user, session_id=session_id)
        form = BranchSwitchSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        branching.branch_switch(user=request.user, session_id=session.pk, message_id=form.validated_data["message"])
        session.refresh_from_db()
        return Response(SessionSerializer(session).data)


class SessionQueue(APIView):
    @extend_schema(responses={200: QueuedMessageSerializer(many=True), 404: ErrorSerializer}, operation_id="sessions_queue_list")
    def get(self, request: Request, session_id: str) -> Response:
        """The messages waiting in the session's queue, in the order they will be answered."""
        session = selectors.session_get(user=request.user, session_id=session_id)
        return Response(queue_items(session_id=session.pk))


class SessionQueueItem(APIView):
    @extend_schema(responses={204: None, 404: ErrorSerializer}, operation_id="sessions_queue_destroy")
    def delete(self, request: Request, session_id: str, queued_id: str) -> Response:
        """Take a message out of the queue before it is answered (404 once it was)."""
        session = selectors.session_get(user=request.user, session_id=session_id)
        try:
            queued = uuid.UUID(queued_id)
        except ValueError:
            raise NotFound("Queued message not found.") from None
        turns.queue_cancel(user=request.user, session_id=session.pk, queued_id=queued)
        return Response(status=status.HTTP_204_NO_CONTENT)
