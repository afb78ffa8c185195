"""One domain error hierarchy. Services raise these; the API and portal map them for people.

Each error carries a machine `code`, a human `message` (what is wrong, where, how to fix it) and
optionally the `param` it concerns. `http_status` is only a hint for the API layer.
"""

from __future__ import annotations

from typing import Any


class PartageError(Exception):
    code = "partage_error"
    error_type = "invalid_request_error"
    http_status = 400

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        details: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        self.param = param
        self.details = details


class InvalidInput(PartageError):
    code = "invalid_request"


class PayloadTooLarge(InvalidInput):
    code = "file_too_large"
    http_status = 413


class NotFound(PartageError):
    code = "not_found"
    http_status = 404


class Forbidden(PartageError):
    code = "permission_denied"
    error_type = "permission_error"
    http_status = 403


class Conflict(PartageError):
    code = "conflict"
    http_status = 409


class InvalidTransition(Conflict):
    code = "invalid_state"


class QuotaExceeded(PartageError):
    code = "quota_exceeded"
    http_status = 429
    error_type = "quota_error"


class InsufficientFunds(PartageError):
    code = "insufficient_funds"
    http_status = 402
    error_type = "billing_error"
