"""ASGI entry point: HTTP through Django, WebSockets through Channels (served by daphne)."""

from __future__ import annotations

import logging
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatproject.settings")

from django.conf import settings
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.asgi import get_asgi_application

django_asgi_app = get_asgi_application()
if settings.SERVE_STATIC:
    # Django's own static handler: enough for the page's few files; put a CDN or proxy in front at scale.
    django_asgi_app = ASGIStaticFilesHandler(django_asgi_app)

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from chat import routing_ws, workers  # noqa: E402
from chat.auth import SocketAuthMiddleware  # noqa: E402


async def http_app(scope, receive, send):  # type: ignore[no-untyped-def]
    # Replies started by REST requests run on this loop (see chat.streaming.spawn), and this
    # process is in the worker list before its first reply exists.
    workers.process.note_loop()
    try:
        await workers.process.ensure_started()
    except Exception:  # the database may be down: /healthz must still answer 503
        logging.getLogger(__name__).warning("Could not join the worker list", exc_info=True)
    await django_asgi_app(scope, receive, send)


application = ProtocolTypeRouter(
    {
        "http": http_app,
        "websocket": SocketAuthMiddleware(URLRouter(routing_ws.websocket_urlpatterns)),
    }
)

if os.environ.get("CHAT_SKIP_STARTUP_SWEEP") != "1":
    workers.startup_sweep()
