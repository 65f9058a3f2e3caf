from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.pagination import Cursor, CursorPagination
from rest_framework.response import Response

INVALID_CURSOR = {"cursor": ["Invalid cursor: use the next or previous link of an earlier page."]}


class StrictCursorPagination(CursorPagination):
    """DRF's cursor pagination; a tampered cursor is a 400 `validation_error`, never a 500."""

    page_size = 50
    page_size_query_param = "limit"
    max_page_size = 200

    def decode_cursor(self, request):  # type: ignore[no-untyped-def]
        try:
            return super().decode_cursor(request)
        except NotFound:
            raise ValidationError(INVALID_CURSOR) from None

    def get_page_size(self, request):  # type: ignore[no-untyped-def]
        """`limit`: a whole number of 1 or more, given once (above 200 it is 200); anything else is 400, where DRF would quietly use 50."""
        given = request.query_params.getlist(self.page_size_query_param)
        if not given:
            return self.page_size
        if len(given) > 1 or not given[0].isascii() or not given[0].isdigit() or int(given[0]) < 1:
            raise ValidationError({self.page_size_query_param: ["Must be a whole number of 1 or more (at most 200 are returned), given once."]})
        return min(int(given[0]), self.max_page_size)

    def paginate_queryset(self, queryset, request, view=None):  # type: ignore[no-untyped-def]
        try:
            return super().paginate_queryset(queryset, request, view)
        except (ValueError, TypeError, DjangoValidationError):
            # A well-formed cursor whose position is not a value of the ordering field.
            raise ValidationError(INVALID_CURSOR) from None

    def get_paginated_response_schema(self, schema: dict) -> dict:
        base = super().get_paginated_response_schema(schema)
        base["required"] = ["next", "previous", "results"]
        return base


class SessionPagination(StrictCursorPagination):
    ordering = ("-updated_at", "-id")


class MessagePagination(StrictCursorPagination):
    """Ascending `seq` (unique per session, so cursors never skip or repeat), plus `total_count`.

    `?from=end` (without a cursor) starts at the newest page, still in ascending order, with a
    `previous` link to older pages: a client opening a long conversation reads one page, not all.
    """

    ordering = "seq"

    def decode_cursor(self, request):  # type: ignore[no-untyped-def]
        cursor = super().decode_cursor(request)
        if cursor is None and request.query_params.get("from") == "end":
            return Cursor(offset=0, reverse=True, position=None)
        return cursor

    def paginate_queryset(self, queryset, request, view=None):  # type: ignore[no-untyped-def]
        start = request.query_params.get("from")
        if start is not None and start not in ("start", "end"):
            raise ValidationError({"from": ['Must be "start" or "end".']})
        # The view may know the count already (the session row keeps it): then no COUNT per page.
        known = getattr(view, "total_count", None)
        self.total_count = known if known is not None else queryset.count()
        return super().paginate_queryset(queryset, request, view)

    def get_paginated_response(self, data: Any) -> Response:
        return Response(
            {"total_count": self.total_count, "next": self.get_next_link(), "previous": self.get_previous_link(), "results": data}
        )

    def get_paginated_response_schema(self, schema: dict) -> dict:
        base = super().get_paginated_response_schema(schema)
        base["properties"] = {"total_count": {"type": "integer", "example": 123}, **base["properties"]}
        base["required"] = ["total_count", "next", "previous", "results"]
        return base

    def get_schema_operation_parameters(self, view):  # type: ignore[no-untyped-def]
        return [
            *super().get_schema_operation_parameters(view),
            {
                "name": "from",
                "required": False,
                "in": "query",
                "description": 'Without a cursor: "start" (default) is the oldest page, "end" the newest (still ascending).',
                "schema": {"type": "string", "enum": ["start", "end"]},
            },
        ]


