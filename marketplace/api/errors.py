"""Maps every error to the one shape: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

import logging
from typing import Any

from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_handler

from marketplace.errors import PartageError

logger = logging.getLogger("partage.api")


def error_body(
    message: str, *, type_: str, code: str | None, param: str | None = None, details: Any = None
) -> dict[str, Any]:
    body: dict[str, Any] = {"message": message, "type": type_, "param": param, "code": code}
    if details is not None:
        body["details"] = details
    return {"error": body}


def _first_validation_error(detail: Any, prefix: str = "") -> tuple[str | None, str]:
    if isinstance(detail, dict):
        for key, value in detail.items():
            name = key if key != "non_field_errors" else ""
            return _first_validation_error(value, f"{prefix}.{name}".strip(".") if name else prefix)
    if isinstance(detail, list) and detail:
        return _first_validation_error(detail[0], prefix)
    return (prefix or None), str(detail)


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, PartageError):
        return Response(
            error_body(
                exc.message,
                type_=exc.error_type,
                code=exc.code,
                param=exc.param,
                details=exc.details,
            ),
            status=exc.http_status,
        )
    if isinstance(exc, Http404):
        exc = exceptions.NotFound("Not found.")
    response = drf_handler(exc, context)
    if response is None:
        # A bug, not the caller's fault: log it whole, answer in the one shape without details.
        logger.exception(
            "unhandled error in %s", context.get("view").__class__.__name__, exc_info=exc
        )
        return Response(
            error_body(
                "Partage hit an internal error; it has been logged. Retry later, or contact "
                "support with the time of the request.",
                type_="server_error",
                code="internal_error",
            ),
            status=status.HTTP_500_INTERNAL_SERVER_ERROR,
        )
    if isinstance(exc, exceptions.ValidationError):
        param, message = _first_validation_error(exc.detail)
        text = f"{param}: {message}" if param else message
        response.data = error_body(
            text,
            type_="invalid_request_error",
            code="invalid_request",
            param=param,
            details=exc.detail,
        )
        return response
    code = getattr(exc, "default_code", "error")
    type_ = {
        status.HTTP_401_UNAUTHORIZED: "authentication_error",
        status.HTTP_403_FORBIDDEN: "permission_error",
        status.HTTP_404_NOT_FOUND: "invalid_request_error",
        status.HTTP_429_TOO_MANY_REQUESTS: "rate_limit_error",
    }.get(response.status_code, "invalid_request_error")
    detail = getattr(exc, "detail", str(exc))
    response.data = error_body(str(detail), type_=type_, code=str(code))
    return response
