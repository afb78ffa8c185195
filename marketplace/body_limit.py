"""Refuses request bodies over the upload limit before the application reads a byte of them.

A WSGI wrapper, so that it acts before Django and DRF buffer anything:
- a Content-Length over the limit is answered 413 at once, with `Connection: close`, so the
  client sees the refusal while it is still sending, and the server reads none of the body;
- a chunked body (no Content-Length) is counted as it streams into a spool file and refused the
  moment the count passes the limit; under it, the spool is handed on with its length, as Django
  reads only bodies whose length it is told.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterable
from typing import Any

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

CHUNK = 64 * 1024
# Room for the multipart framing and the other form fields around a file of the full limit.
MULTIPART_ALLOWANCE = 1024 * 1024


def request_limit_bytes() -> int:
    from django.conf import settings

    return int(settings.PARTAGE_MAX_UPLOAD_BYTES) + MULTIPART_ALLOWANCE


def _too_large(start_response: StartResponse, limit: int, size: int | None) -> list[bytes]:
    told = f"{size} bytes" if size is not None else f"more than {limit} bytes"
    body = json.dumps(
        {
            "error": {
                "message": f"The request body is {told}; the limit is {limit} bytes (files up "
                "to the upload limit plus the multipart framing). Split the file into smaller "
                "files.",
                "type": "invalid_request_error",
                "param": "file",
                "code": "file_too_large",
            }
        }
    ).encode()
    start_response(
        "413 Request Entity Too Large",
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            ("Connection", "close"),
        ],
    )
    return [body]


def _is_chunked(environ: dict[str, Any]) -> bool:
    return "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()


class BodySizeLimit:
    def __init__(self, app: WSGIApp, limit: Callable[[], int] = request_limit_bytes) -> None:
        self.app = app
        self.limit = limit

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        limit = self.limit()
        length = environ.get("CONTENT_LENGTH") or ""
        if length.strip().isdigit():
            if int(length) > limit:
                return _too_large(start_response, limit, int(length))
            return self.app(environ, start_response)
        if _is_chunked(environ):
            spool = self._spool(environ["wsgi.input"], limit)
            if spool is None:
                return _too_large(start_response, limit, None)
            environ["wsgi.input"] = spool
            environ["CONTENT_LENGTH"] = str(spool.tell())
            spool.seek(0)
        return self.app(environ, start_response)

    @staticmethod
    def _spool(stream: Any, limit: int) -> Any:
        """The whole body in a temporary file, or None as soon as it passes `limit`."""
        spool = tempfile.SpooledTemporaryFile(max_size=5 * 1024 * 1024)  # noqa: SIM115
        total = 0
        while chunk := stream.read(CHUNK):
            total += len(chunk)
            if total > limit:
                spool.close()
                return None
            spool.write(chunk)
        return spool
