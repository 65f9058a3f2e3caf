"""Who the client is, and what a locked-out login sees.

The client's address is the socket's peer unless the operator says how many proxies in front of
us append to `X-Forwarded-For` (TRUSTED_PROXIES): a client can write that header itself, so
without trusted proxies it is never read, and with N of them only the address the N-th proxy
saw is believed. The password throttle (DRF's NUM_PROXIES) and the login lockout
(django-axes) both key on this address.
"""

from __future__ import annotations

import math
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render


def client_ip(request: HttpRequest) -> str:
    remote = request.META.get("REMOTE_ADDR", "") or ""
    proxies = settings.TRUSTED_PROXIES
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    if proxies <= 0 or not forwarded:
        return remote
    hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
    return hops[-min(proxies, len(hops))] if hops else remote


def lockout_response(request: HttpRequest, original_response: HttpResponse | None, credentials: Any = None) -> HttpResponse:
    """Too many failed logins from this address: 429 in the API's error shape, or the login page saying so."""
    minutes = max(1, math.ceil(settings.AXES_COOLOFF_TIME.total_seconds() / 60))
    detail = f"Too many failed sign-ins from this address. Try again in {minutes} minute{'s' if minutes != 1 else ''}."
    headers = {"Retry-After": str(minutes * 60)}
    if request.path.startswith("/api/"):
        return JsonResponse({"code": "throttled", "detail": detail}, status=429, headers=headers)
    response = render(request, "registration/login.html", {"locked_out": detail, "next": request.POST.get("next", "/")}, status=429)
    response["Retry-After"] = headers["Retry-After"]
    return response
