"""Schema post-processing: each operation states the API-key scope it needs (from the one table
in marketplace.api.permissions), and each operation with a body documents the 413 that the
WSGI body limit (marketplace.body_limit) answers before reading it."""

from __future__ import annotations

import re
from typing import Any

from django.urls import Resolver404, resolve

from marketplace.accounts.scopes import DESCRIPTIONS
from marketplace.api.permissions import right_needed

BODY_TOO_LARGE = (
    "The request body is over the upload limit (PARTAGE_MAX_UPLOAD_BYTES plus 1 MiB of "
    "multipart framing): refused from its Content-Length before it is read, or as soon as a "
    "chunked body passes the limit."
)


def _url_name(path: str) -> str | None:
    try:
        return resolve(re.sub(r"\{[^}]+\}", "x", path)).url_name
    except Resolver404:
        return None


def postprocess_scopes_and_body_limit(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    error_ref = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for path, path_item in result.get("paths", {}).items():
        name = _url_name(path)
        for method, operation in path_item.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            needed = right_needed(name, method.upper())
            if needed is not None and operation.get("security") != [{}]:
                operation["x-partage-scope"] = needed
                sentence = (
                    f"Needs an API key whose scopes grant '{needed}' ({DESCRIPTIONS[needed]})."
                )
                operation["description"] = (
                    f"{operation.get('description', '')}\n\n{sentence}".strip()
                )
                operation["responses"]["403"] = {
                    "description": f"The API key's scopes do not grant '{needed}', or the key "
                    "is limited to other resources.",
                    "content": error_ref,
                }
            if "requestBody" in operation:
                operation["responses"].setdefault(
                    "413", {"description": BODY_TOO_LARGE, "content": error_ref}
                )
    return result
