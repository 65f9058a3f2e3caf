from __future__ import annotations

from typing import Any

from rest_framework.pagination import CursorPagination
from rest_framework.response import Response


class SessionPagination(CursorPagination):
    ordering = ("-updated_at", "-id")
    page_size = 50
    page_size_query_param = "limit"
    max_page_size = 200


class MessagePagination(CursorPagination):
    """Ascending `seq` (unique per session, so cursors never skip or repeat), plus `total_count`."""

    ordering = "seq"
    page_size = 50
    page_size_query_param = "limit"
    max_page_size = 200

    def paginate_queryset(self, queryset, request, view=None):  # type: ignore[no-untyped-def]
        self.total_count = queryset.count()
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
