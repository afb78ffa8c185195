"""Shared by the tests that check real response bodies against the /v1 OpenAPI schema:
schemathesis' response checks, and an exact-fields check (the schema itself does not reject
undocumented keys)."""

from __future__ import annotations

from typing import Any

import schemathesis
from django.core.wsgi import get_wsgi_application
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

schema = schemathesis.openapi.from_wsgi("/v1/openapi.json", get_wsgi_application())
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    while True:
        if "$ref" in node:
            node = schema.raw_schema["components"]["schemas"][node["$ref"].rsplit("/", 1)[-1]]
        elif "allOf" in node and len(node["allOf"]) == 1:
            node = node["allOf"][0]
        else:
            return node


def assert_exact_fields(node: dict[str, Any], value: Any, where: str = "body") -> None:
    """Every object in `value` has exactly the properties its schema documents."""
    node = _resolve(node)
    if isinstance(value, dict) and "properties" in node:
        assert set(value) == set(node["properties"]), (
            f"{where}: returned {sorted(value)}, documented {sorted(node['properties'])}"
        )
        for name, item in value.items():
            assert_exact_fields(node["properties"][name], item, f"{where}.{name}")
    elif isinstance(value, list) and "items" in node:
        for index, item in enumerate(value):
            assert_exact_fields(node["items"], item, f"{where}[{index}]")


def documented(
    path: str, method: str, status: str = "200", content_type: str = "application/json"
) -> dict[str, Any]:
    """The documented schema of one response."""
    response = schema.raw_schema["paths"][path][method.lower()]["responses"][status]
    return dict(response["content"][content_type]["schema"])
