"""WebSocket authentication.

Non-browser clients send `Authorization: Token <key>` (no Origin needed). Browsers use the
session cookie, accepted only with an `Origin` that matches ALLOWED_HOSTS (or
CSRF_TRUSTED_ORIGINS): a cookie riding on a cross-site socket is ignored, so the socket is
unauthenticated and closed with 4401.
"""

from __future__ import annotations

from urllib.parse import urlparse

from channels.auth import AuthMiddleware
from channels.sessions import CookieMiddleware, SessionMiddleware
from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.http.request import split_domain_port, validate_host

from chat.engine.process import engine
from chat.turn import rows


def _header(scope: dict, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def origin_allowed(origin: str | None, host: str | None, scheme: str) -> bool:
    """The Origin must be this very site, on an allowed host, or be listed in CSRF_TRUSTED_ORIGINS.

    This very site: the Origin's host and port are the request's `Host`, which ALLOWED_HOSTS
    allows. Cookies are not scoped by port, so another port of the same host (another app) is
    another site. The scheme is compared only on a `wss` socket (then the page must be https):
    behind a proxy that ends TLS, the socket reaches us as `ws` from an https page.
    """
    if not origin or origin == "null":
        return False
    if origin in settings.CSRF_TRUSTED_ORIGINS:
        return True
    if not host or not validate_host(split_domain_port(host)[0], settings.ALLOWED_HOSTS):
        return False
    parsed = urlparse(origin)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        return False
    if scheme == "wss" and parsed.scheme != "https":
        return False
    return _with_default_port(parsed.netloc, parsed.scheme) == _with_default_port(host, "https" if scheme == "wss" else parsed.scheme)


def _with_default_port(netloc: str, scheme: str) -> str:
    domain, port = split_domain_port(netloc.lower())
    return f"{domain}:{port or ('443' if scheme == 'https' else '80')}"


def _user_for_token(key: str):  # type: ignore[no-untyped-def]
    return rows.active_user_for_token(key) or AnonymousUser()


class SocketAuthMiddleware:
    def __init__(self, inner) -> None:  # type: ignore[no-untyped-def]
        self.inner = inner
        self.cookie_auth = CookieMiddleware(SessionMiddleware(AuthMiddleware(inner)))

    async def __call__(self, scope, receive, send):  # type: ignore[no-untyped-def]
        authorization = _header(scope, b"authorization")
        if authorization is not None:
            scheme, _, key = authorization.partition(" ")
            if scheme.lower() == "token" and key.strip():
                await engine.start()
                user = await engine.read(_user_for_token, key.strip())
            else:
                user = AnonymousUser()
            return await self.inner({**scope, "user": user, "auth": "token", "auth_key": key.strip()}, receive, send)
        if origin_allowed(_header(scope, b"origin"), _header(scope, b"host"), scope.get("scheme", "ws")):
            return await self.cookie_auth({**scope, "auth": "cookie"}, receive, send)
        return await self.inner({**scope, "user": AnonymousUser(), "auth": "none"}, receive, send)
