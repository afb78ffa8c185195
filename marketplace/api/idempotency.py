"""Idempotency-Key for POSTs that create something or move money.

Same key + same request → the stored response, replayed (header `Idempotent-Replayed: true`).
Same key + a different request → 409 `idempotency_key_reused`. One record per organization and
key, enforced by a UNIQUE constraint; the record is inserted in the same transaction as the
view's work, so a concurrent duplicate blocks on the unique index until the first request
commits, then replays its answer (or, if the first failed and rolled back, runs itself).

Use it on a view method: `@idempotent` above `def post(self, request, ...)`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Callable
from typing import Any, TypeVar, cast

from django.db import IntegrityError, transaction
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from marketplace.api.authentication import organization_of
from marketplace.api.models import IdempotencyRecord
from marketplace.errors import Conflict, InvalidInput

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255
# 1 to 255 visible ASCII characters, spaces allowed inside (HTTP trims them at the ends); the
# OpenAPI schema publishes this very pattern (marketplace/api/schema.py).
KEY_PATTERN = rf"^[!-~](?:[ -~]{{0,{MAX_KEY_LENGTH - 2}}}[!-~])?$"
_KEY = re.compile(KEY_PATTERN)

Handler = TypeVar("Handler", bound=Callable[..., Any])


def _fingerprint(request: Request) -> str:
    """A hash of what the request asks for: method, path, fields, and uploaded files' bytes."""
    digest = hashlib.sha256(f"{request.method} {request.path}\n".encode())
    fields: dict[str, Any] = {}
    data = request.data
    if hasattr(data, "lists"):  # QueryDict from a form or multipart body
        fields = {k: v for k, v in data.lists() if k not in request.FILES}
    elif isinstance(data, dict | list):
        fields = {"json": data}
    digest.update(json.dumps(fields, sort_keys=True, default=str).encode())
    for name in sorted(request.FILES):
        for upload in request.FILES.getlist(name):
            digest.update(f"\nfile {name} {upload.name} {upload.size}\n".encode())
            for chunk in upload.chunks():
                digest.update(chunk)
            upload.seek(0)
    return digest.hexdigest()


def _key_of(request: Request) -> str | None:
    key = request.headers.get(HEADER)
    if key is None:
        return None
    if not _KEY.fullmatch(key):
        raise InvalidInput(
            f"{HEADER} must be 1 to {MAX_KEY_LENGTH} visible ASCII characters (spaces only "
            "between them), e.g. a UUID.",
            code="invalid_idempotency_key",
            param=HEADER,
        )
    return key


def _replay(record: IdempotencyRecord, fingerprint: str) -> Response:
    if record.fingerprint != fingerprint:
        raise Conflict(
            f"This {HEADER} was already used for a different request ({record.method} "
            f"{record.path} with other parameters). Use a new key for a new request.",
            code="idempotency_key_reused",
            param=HEADER,
        )
    return Response(
        record.response_body,
        status=record.status_code or 200,
        headers={"Idempotent-Replayed": "true"},
    )


def idempotent(handler: Handler) -> Handler:
    @functools.wraps(handler)
    def wrapper(view: Any, request: Request, *args: Any, **kwargs: Any) -> Any:
        key = _key_of(request)
        if key is None:
            return handler(view, request, *args, **kwargs)
        organization = organization_of(request)
        fingerprint = _fingerprint(request)
        with transaction.atomic():
            try:
                with transaction.atomic():
                    record = IdempotencyRecord.objects.create(
                        organization=organization,
                        key=key,
                        fingerprint=fingerprint,
                        method=request.method or "",
                        path=request.path[:500],
                    )
            except IntegrityError:
                existing = IdempotencyRecord.objects.get(organization=organization, key=key)
                return _replay(existing, fingerprint)
            response = handler(view, request, *args, **kwargs)
            # Errors raise and roll the record back with the work: a retry runs again.
            record.status_code = response.status_code
            record.response_body = json.loads(JSONRenderer().render(response.data) or b"null")
            record.save(update_fields=["status_code", "response_body"])
            return response

    return cast(Handler, wrapper)
