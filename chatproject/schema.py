"""OpenAPI postprocessing: the error answers every endpoint can give, in the one error shape."""

from __future__ import annotations

from typing import Any

_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
_WRITES = {"post", "put", "patch", "delete"}


def add_error_responses(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """401 on every endpoint that needs credentials, 429 on every write (throttled)."""
    for operations in result.get("paths", {}).values():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            security = operation.get("security")
            if security and {} not in security:
                responses.setdefault("401", {"description": "Not authenticated.", "content": _ERROR})
            if method in _WRITES:
                responses.setdefault("429", {"description": "Throttled: retry after `retry_after` seconds.", "content": _ERROR})
    return result
