"""Cursor pagination in OpenAI's shape: ?after=<id>&limit=<n>, newest first, has_more."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from django.db.models import Model, QuerySet
from drf_spectacular.utils import OpenApiParameter
from rest_framework.request import Request

from marketplace.errors import InvalidInput, NotFound

MAX_LIMIT = 100
# The schema says exactly what `page` accepts: an integer from 1 to MAX_LIMIT, in ASCII digits.
LIMIT_PARAMETER = OpenApiParameter(
    "limit",
    {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
    description=f"1 to {MAX_LIMIT} items; default 20.",
)
_INTEGER = re.compile(r"-?[0-9]+")


def page(
    request: Request,
    queryset: QuerySet[Any],
    render: Callable[[Any], dict[str, Any]],
    *,
    id_of: Callable[[Any], str] = lambda obj: str(obj.pk),
    cursor: Callable[[QuerySet[Any], str], QuerySet[Any] | None] | None = None,
    default_limit: int = 20,
) -> dict[str, Any]:
    """One page of a queryset ordered newest first; `after` is the id of the last item seen."""
    raw_limit = request.query_params.get("limit", str(default_limit))
    if not _INTEGER.fullmatch(raw_limit):
        raise InvalidInput(f"limit must be an integer from 1 to {MAX_LIMIT}.", param="limit")
    limit = int(raw_limit)
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(f"limit must be an integer from 1 to {MAX_LIMIT}.", param="limit")
    after = request.query_params.get("after")
    if after:
        narrowed = cursor(queryset, after) if cursor else _after_by_created(queryset, after)
        if narrowed is None:
            # A well-formed request for an object that is not there: 404, as for any other id.
            raise NotFound(
                f"after={after!r} is not an id from this list; pass the last_id of the page "
                "before.",
                param="after",
            )
        queryset = narrowed
    items = list(queryset[: limit + 1])
    has_more = len(items) > limit
    items = items[:limit]
    data = [render(item) for item in items]
    return {
        "object": "list",
        "data": data,
        "has_more": has_more,
        "first_id": id_of(items[0]) if items else None,
        "last_id": id_of(items[-1]) if items else None,
    }


def _after_by_created(queryset: QuerySet[Any], after: str) -> QuerySet[Any] | None:
    model: type[Model] = queryset.model
    anchor = model._default_manager.filter(pk=after).values("created_at", "pk").first()
    if anchor is None:
        return None
    from django.db.models import Q

    return queryset.filter(
        Q(created_at__lt=anchor["created_at"])
        | Q(created_at=anchor["created_at"], pk__lt=anchor["pk"])
    )
