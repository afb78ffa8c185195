"""The site's 400/403/404/500 answers: the API's one error shape under /v1 and /internal, branded
pages elsewhere. Lives beside the root URL map because it serves both the API and the portal."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template import loader

_API_PREFIXES = ("/v1/", "/internal/")

# (status, error type, code, message for API clients)
_ANSWERS: dict[int, tuple[str, str, str]] = {
    400: ("invalid_request_error", "bad_request", "The request could not be understood."),
    403: ("permission_error", "permission_denied", "You may not do this."),
    404: (
        "invalid_request_error",
        "not_found",
        "Nothing is at this URL; GET /v1/docs lists the API.",
    ),
    500: ("server_error", "server_error", "Partage failed on its side; try again shortly."),
}


def _answer(request: HttpRequest, status: int, context: dict[str, Any]) -> HttpResponse:
    if request.path.startswith(_API_PREFIXES):
        error_type, code, message = _ANSWERS[status]
        body = {"error": {"message": message, "type": error_type, "param": None, "code": code}}
        return JsonResponse(body, status=status)
    # The 500 page renders without the request context: whatever failed may fail again there.
    template = loader.get_template(f"{status}.html")
    body_html = template.render(context, None if status == 500 else request)
    return HttpResponse(body_html, status=status)


def bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return _answer(request, 400, {})


def permission_denied(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    # A PermissionDenied raised with a message meant for the user says why; a bare one does not.
    reason = str(exception) if exception is not None and str(exception) else ""
    return _answer(request, 403, {"reason": reason})


def page_not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return _answer(request, 404, {})


def server_error(request: HttpRequest) -> HttpResponse:
    return _answer(request, 500, {})
