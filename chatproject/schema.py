"""OpenAPI postprocessing: the error answers every endpoint can give, in the one error shape."""

from __future__ import annotations

from typing import Any

_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
_WRITES = {"post", "put", "patch", "delete"}


def add_error_responses(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """401 on every endpoint that needs credentials, 429 on every write (throttled); 400 where a
    query parameter is checked (`limit`, `from`, `cursor`); 413 and 415 where a body is read (too large, not JSON)."""
    for operations in result.get("paths", {}).values():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            security = operation.get("security")
            if security and {} not in security:
                responses.setdefault("401", {"description": "Not authenticated.", "content": _ERROR})
            responses.setdefault(
                "503", {"description": "Busy, the database is unreachable, or this server process is restarting: nothing was saved; retry (unavailable).", "content": _ERROR},
            )
            if method in _WRITES:
                responses.setdefault("429", {"description": "Throttled: retry after `retry_after` seconds.", "content": _ERROR})
            if any(p.get("in") == "query" for p in operation.get("parameters", [])):
                responses.setdefault("400", {"description": "A query parameter is not valid (validation_error).", "content": _ERROR})
            if "requestBody" in operation:
                responses.setdefault("413", {"description": "The body is too large (request_too_large).", "content": _ERROR})
                responses.setdefault("415", {"description": "The body is not JSON (unsupported_media_type).", "content": _ERROR})
    return result
