"""One error shape everywhere: `{"code": "<snake_case>", "detail": "<human text>", ...}`."""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import ObjectDoesNotExist, PermissionDenied, RequestDataTooBig
from django.db import InterfaceError, OperationalError
from django.http import Http404, HttpRequest, JsonResponse
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler

logger = logging.getLogger(__name__)


class ApiError(exceptions.APIException):
    """An error with our own code, e.g. `ApiError(400, "agent_not_found", "No active agent 'x'.")`."""

    def __init__(self, status_code: int, code: str, detail: str, **extra: Any) -> None:
        self.status_code = status_code
        self.code = code
        self.extra = extra
        super().__init__(detail=detail, code=code)


_CODES = {
    exceptions.NotAuthenticated: "not_authenticated",
    exceptions.AuthenticationFailed: "authentication_failed",
    exceptions.PermissionDenied: "permission_denied",
    exceptions.NotFound: "not_found",
    exceptions.MethodNotAllowed: "method_not_allowed",
    exceptions.NotAcceptable: "not_acceptable",
    exceptions.UnsupportedMediaType: "unsupported_media_type",
    exceptions.Throttled: "throttled",
    exceptions.ParseError: "invalid_json",
}


def _flatten(detail: Any) -> Any:
    if isinstance(detail, dict):
        return {k: _flatten(v) for k, v in detail.items()}
    if isinstance(detail, list):
        return [_flatten(v) for v in detail]
    return str(detail)


def _first_message(fields: Any) -> str:
    if isinstance(fields, dict):
        for name, value in fields.items():
            inner = _first_message(value)
            return inner if name == "non_field_errors" else f"{name}: {inner}"
    if isinstance(fields, list) and fields:
        return _first_message(fields[0])
    return str(fields)


def api_exception_handler(exc: Exception, context: dict) -> Response | None:
    if isinstance(exc, RecursionError):
        return Response({"code": "invalid_json", "detail": "The JSON body is nested too deeply."}, status=400)
    if isinstance(exc, RequestDataTooBig):
        return Response({"code": "request_too_large", "detail": "The request body is too large."}, status=413)
    if isinstance(exc, (OperationalError, InterfaceError)):
        # The database is away or every connection is taken (a pool timeout under load): nothing was
        # saved (the request's transaction did not commit); the client may retry.
        logger.warning("The database could not serve a request: %s", exc)
        response = Response({"code": "unavailable", "detail": "The server is busy or its database is unreachable; retry shortly."}, status=503)
        response["Retry-After"] = "1"
        return response
    if isinstance(exc, (Http404, ObjectDoesNotExist)):
        # ObjectDoesNotExist: a row deleted between reading and writing it (another tab, cleanup).
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    from chat.exceptions import ChatError

    if isinstance(exc, ChatError):
        body = {"code": exc.code, "detail": exc.detail}
        if exc.code == "validation_error":
            body["fields"] = {getattr(exc, "field", None) or "non_field_errors": [exc.detail]}
        response = Response(body, status=exc.status)
        if exc.status == 503:
            response["Retry-After"] = "1"
        return response
    if isinstance(exc, ApiError):
        return Response({"code": exc.code, "detail": str(exc.detail), **exc.extra}, status=exc.status_code)
    if isinstance(exc, exceptions.ValidationError):
        fields = _flatten(exc.detail)
        if not isinstance(fields, dict):
            fields = {"non_field_errors": fields if isinstance(fields, list) else [fields]}
        return Response(
            {"code": "validation_error", "detail": _first_message(fields), "fields": fields},
            status=status.HTTP_400_BAD_REQUEST,
        )
    response = exception_handler(exc, context)
    if response is None:
        logger.exception("Unhandled API error", exc_info=exc)
        return Response(
            {"code": "internal_error", "detail": "Something went wrong on our side."},
            status=status.HTTP_500_INTERNAL_SERVER_ERROR,
        )
    code = next((c for cls, c in _CODES.items() if isinstance(exc, cls)), None) or getattr(exc, "default_code", "error")
    detail = exc.detail if isinstance(exc, exceptions.APIException) else str(exc)
    body: dict[str, Any] = {"code": code, "detail": str(detail)}
    if isinstance(exc, exceptions.Throttled) and exc.wait is not None:
        body["retry_after"] = int(exc.wait)
    response.data = body
    return response


def handler404(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return JsonResponse({"code": "not_found", "detail": "Not found."}, status=404)


def handler500(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"code": "internal_error", "detail": "Something went wrong on our side."}, status=500)


def handler403(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return JsonResponse({"code": "permission_denied", "detail": "You do not have permission to do this."}, status=403)


def handler400(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return JsonResponse({"code": "bad_request", "detail": "Bad request."}, status=400)
