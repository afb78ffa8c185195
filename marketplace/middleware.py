"""Requests that no database can store are refused before any view runs.

PostgreSQL text cannot hold a NUL character: an id, filter or JSON string carrying one would
reach the ORM and fail there as a server error. It is the client's mistake, so it gets a 400
in the API's one error shape, naming where the character was.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import parse_qsl

from django.http import HttpRequest, HttpResponse, JsonResponse

from marketplace.api.errors import error_body

NUL = "\x00"


def _where(request: HttpRequest) -> str | None:
    if NUL in request.path:
        return "path"
    for name, value in parse_qsl(request.META.get("QUERY_STRING", ""), keep_blank_values=True):
        if NUL in name or NUL in value:
            return name.replace(NUL, "") or "query"
    content_type = request.content_type or ""
    if content_type == "application/json" or content_type.endswith("+json"):
        body = request.body
        if b"\\u0000" in body or b"\x00" in body:
            return "body"
    return None


class RefuseNulCharactersMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        where = _where(request)
        if where is not None:
            return JsonResponse(
                error_body(
                    f"The request's {where} contains a NUL character (\\u0000), which no field "
                    "accepts; remove it and retry.",
                    type_="invalid_request_error",
                    code="invalid_characters",
                    param=where,
                ),
                status=400,
            )
        return self.get_response(request)
