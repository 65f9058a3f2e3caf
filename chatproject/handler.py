"""Django's ASGI handler, with a request's middleware and view run in one trip to its thread.

Under ASGI Django builds the middleware chain in async mode, and every `MiddlewareMixin`
middleware (security, sessions, common, CSRF, auth, messages, clickjacking) then sends its
`process_request` and its `process_response` to the request's thread separately: about a
dozen round trips between the event loop and that thread per request, each waiting behind
whatever else the loop has to do (hundreds of streaming replies). This handler builds the chain
in sync mode, as a WSGI server would run it, and makes one trip per request: the whole chain and
a sync view run in the request's own thread (`thread_sensitive`: one thread per request, as
Django does), an async view (`/healthz`) runs back on the event loop. Everything else is
Django's ASGIHandler: request parsing, streamed responses, disconnects, closing.
"""

from __future__ import annotations

import django
from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIHandler


class OneTripASGIHandler(ASGIHandler):
    def load_middleware(self, is_async: bool = False) -> None:
        super().load_middleware(is_async=False)
        self._middleware_chain = sync_to_async(self._middleware_chain, thread_sensitive=True)


def get_asgi_application() -> OneTripASGIHandler:
    """What django.core.asgi.get_asgi_application gives, with the one-trip handler."""
    django.setup(set_prefix=False)
    return OneTripASGIHandler()
