"""ASGI entry point: HTTP through Django, WebSockets through Channels (served by daphne)."""

from __future__ import annotations

import logging
import os
import sys

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatproject.settings")

from django.conf import settings
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

from chatproject.handler import get_asgi_application

django_asgi_app = get_asgi_application()
if settings.CHAT["GIL_SWITCH_INTERVAL"] > 0:
    # The engine's database threads get the GIL back sooner after each statement (see settings.py).
    sys.setswitchinterval(settings.CHAT["GIL_SWITCH_INTERVAL"])
if settings.SERVE_STATIC:
    # Django's own static handler: enough for the page's few files; put a CDN or proxy in front at scale.
    django_asgi_app = ASGIStaticFilesHandler(django_asgi_app)

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from chat.engine.process import engine  # noqa: E402
from chat.turn import outbox  # noqa: E402
from chat.turn.replies import replies_mark_interrupted  # noqa: E402
from chat.ws import routes  # noqa: E402
from chat.ws.auth import SocketAuthMiddleware  # noqa: E402


async def http_app(scope, receive, send):  # type: ignore[no-untyped-def]
    # Replies started by REST requests run on this loop (the engine binds to it), and this
    # process is in the worker list before its first reply exists.
    try:
        await engine.start()
    except Exception:  # the database may be down: /healthz must still answer 503
        logging.getLogger(__name__).warning("Could not start the engine", exc_info=True)
    engine.http_requests += 1  # a drain lets the requests in flight end
    try:
        await django_asgi_app(scope, receive, send)
    finally:
        engine.http_requests -= 1


application = ProtocolTypeRouter(
    {
        "http": http_app,
        "websocket": SocketAuthMiddleware(URLRouter(routes.websocket_urlpatterns)),
    }
)


def _startup_sweep() -> None:
    """At server start: mark the replies of dead processes `interrupted` (what follows, frames and queued messages, once
    the server's loop runs)."""
    try:
        with outbox.collecting() as effects:
            marked = replies_mark_interrupted()
        engine.defer(effects)
        if marked:
            logging.getLogger(__name__).info("Marked %d interrupted replies at startup", len(marked))
    except Exception:  # the database may not be migrated yet; the socket-open sweep covers it later
        logging.getLogger(__name__).warning("Startup sweep skipped", exc_info=True)


if os.environ.get("CHAT_SKIP_STARTUP_SWEEP") != "1":
    _startup_sweep()
