from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from chat.selectors import message_page
from chat.serializers import ErrorSerializer, MessageSerializer
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


class SessionMessages(generics.ListAPIView):
    """The session's messages in ascending `seq`, with `total_count`."""

    serializer_class = MessageSerializer
    pagination_class = MessagePagination

    def get_queryset(self):  # type: ignore[no-untyped-def]
        session = selectors.session_get(user=self.request.user, session_id=self.kwargs["session_id"])
        self.total_count = session.message_count  # kept on the row: the page needs no COUNT
        return message_page(session=session)

    def get_serializer_context(self) -> dict:
        return {**super().get_serializer_context(), "viewer_id": self.request.user.pk}

    @extend_schema(parameters=[LIMIT], responses={200: MessageSerializer(many=True), 404: ErrorSerializer}, operation_id="sessions_messages_list")
    def get(self, request: Request, *args: object, **kwargs: object) -> Response:
        return super().get(request, *args, **kwargs)
