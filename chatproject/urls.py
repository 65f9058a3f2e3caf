from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.contrib.auth.signals import user_logged_in
from django.urls import include, path
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework import serializers
from rest_framework.authtoken.models import Token
from rest_framework.authtoken.views import ObtainAuthToken
from rest_framework.parsers import JSONParser
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response

from chat import api as chat_api
from chat.serializers import ErrorSerializer
from chatproject import metrics, views
from chatproject.throttling import LoginRateThrottle
from sessions_app import api as sessions_api


class TokenView(ObtainAuthToken):
    """`{"username","password"}` → `{"token"}`; attempts are throttled (THROTTLE_LOGIN)."""

    throttle_classes = (LoginRateThrottle,)
    parser_classes = (JSONParser,)  # JSON, as the rest of the API (DRF's view also takes forms)
    # Needs no credentials, and a browser's session cookie must not make it demand a CSRF token.
    authentication_classes = ()

    @extend_schema(
        auth=[],
        responses={
            200: inline_serializer("Token", {"token": serializers.CharField()}),
            400: OpenApiResponse(ErrorSerializer, description="Wrong username or password (validation_error)."),
            429: OpenApiResponse(ErrorSerializer, description="Too many attempts, or too many failed ones, from this address (throttled)."),
        },
    )
    def post(self, request, *args, **kwargs):  # type: ignore[no-untyped-def]
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        user = serializer.validated_data["user"]
        token, _created = Token.objects.get_or_create(user=user)
        # A sign-in like the login page's: the lockout's count of failures starts again, last_login is set.
        user_logged_in.send(sender=user.__class__, request=request._request, user=user)
        return Response({"token": token.key})

    def get_serializer_context(self) -> dict:
        # Authenticate with Django's own request, so the sign-in lockout (django-axes) records the
        # failure and its middleware answers 429 once this address is locked out.
        return {**super().get_serializer_context(), "request": self.request._request}


class SchemaView(SpectacularAPIView):
    """The OpenAPI document; its errors are plain JSON in the one error shape, whatever format was asked."""

    def handle_exception(self, exc):  # type: ignore[no-untyped-def]
        response = super().handle_exception(exc)
        self.request.accepted_renderer = JSONRenderer()
        self.request.accepted_media_type = JSONRenderer.media_type
        return response


api_v1 = [
    path("auth/token/", TokenView.as_view(), name="api-token"),
    path("agents/", chat_api.AgentList.as_view(), name="agents"),
    path("tools/", chat_api.ToolList.as_view(), name="tools"),
    path("usage/", chat_api.Usage.as_view(), name="usage"),
    path("search/", chat_api.Search.as_view(), name="search"),
    path("sessions/", sessions_api.SessionListCreate.as_view(), name="sessions"),
    path("sessions/<str:session_id>/", sessions_api.SessionDetail.as_view(), name="session-detail"),
    path("sessions/<str:session_id>/messages/", sessions_api.SessionMessages.as_view(), name="session-messages"),
    path("sessions/<str:session_id>/switch/", sessions_api.SessionSwitch.as_view(), name="session-switch"),
    path("sessions/<str:session_id>/queue/", sessions_api.SessionQueue.as_view(), name="session-queue"),
    path("sessions/<str:session_id>/queue/<str:queued_id>/", sessions_api.SessionQueueItem.as_view(), name="session-queue-item"),
    path("messages/", chat_api.MessageCreate.as_view(), name="messages"),
    path("messages/<str:message_id>/regenerate/", chat_api.MessageRegenerate.as_view(), name="message-regenerate"),
    path("messages/<str:message_id>/reactions/", chat_api.MessageReactions.as_view(), name="message-reactions"),
    path(
        "messages/<str:message_id>/reactions/<str:emoji>/",
        chat_api.MessageReactionDelete.as_view(),
        name="message-reaction-delete",
    ),
    path("schema/", SchemaView.as_view(), name="schema"),
    # A page for people: signing in (the session cookie) is what it asks of anonymous visitors.
    path("docs/", login_required(SpectacularSwaggerView.as_view(url_name="schema")), name="swagger-ui"),
]

urlpatterns = [
    path("api/v1/", include(api_v1)),
    path("admin/", admin.site.urls),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("healthz", views.healthz, name="healthz"),
    path("metrics", metrics.metrics_view, name="metrics"),
    path("", include("chat.urls")),
]

handler400 = "chatproject.errors.handler400"
handler403 = "chatproject.errors.handler403"
handler404 = "chatproject.errors.handler404"
handler500 = "chatproject.errors.handler500"
