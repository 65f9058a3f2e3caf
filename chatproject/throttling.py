from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured
from rest_framework.request import Request
from rest_framework.settings import api_settings
from rest_framework.throttling import AnonRateThrottle, UserRateThrottle


class WriteRateThrottle(UserRateThrottle):
    """Limits writes (POST, PATCH, PUT, DELETE) per user; reads are not throttled."""

    scope = "writes"

    def allow_request(self, request: Request, view: object) -> bool:
        if request.method in ("GET", "HEAD", "OPTIONS"):
            return True
        return super().allow_request(request, view)

    def get_rate(self) -> str | None:
        # DRF binds THROTTLE_RATES when the class is first imported; read the live settings instead.
        try:
            return api_settings.DEFAULT_THROTTLE_RATES[self.scope]
        except KeyError:
            raise ImproperlyConfigured(f"No throttle rate set for the '{self.scope}' scope") from None


class LoginRateThrottle(AnonRateThrottle):
    """Password attempts at the token endpoint, per client address (THROTTLE_LOGIN)."""

    scope = "login"

    def get_rate(self) -> str | None:
        return api_settings.DEFAULT_THROTTLE_RATES.get(self.scope)


class SearchRateThrottle(UserRateThrottle):
    """Searches per user (THROTTLE_SEARCH): a search over a long history costs the database far more than a page read."""

    scope = "search"

    def get_rate(self) -> str | None:
        return api_settings.DEFAULT_THROTTLE_RATES.get(self.scope)
