"""A NUL character anywhere a database would store it is a 400 naming where, on every database
(PostgreSQL text cannot hold one: without the guard these were 500s there)."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("method", "path", "param"),
    [
        ("get", "/v1/billing/invoices/a%00b", "path"),
        ("get", "/v1/fine_tuning/jobs/ftjob-%00", "path"),
        ("get", "/v1/billing/usage?job=a%00", "job"),
        ("get", "/v1/files?after=file-%00", "after"),
        ("get", "/v1/pools?limit=1%00", "limit"),
        ("post", "/v1/webhook_endpoints", "body"),
    ],
)
def test_nul_characters_are_refused_with_a_clear_400(
    client_a: Any, method: str, path: str, param: str
) -> None:
    body = {"url": "https://example.com/hook\u0000", "enabled_events": ["*"]}
    response = (
        getattr(client_a, method)(path, body, format="json")
        if method == "post"
        else (client_a.get(path))
    )
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid_characters" and error["param"] == param
    assert "NUL" in error["message"]


def test_a_file_upload_may_carry_binary_bytes(client_a: Any, upload: Any) -> None:
    """Uploads are multipart: binary content reaches the file validator and its line report."""
    response = upload(b'{"text": "a"}\n\x00\x01\x02\n')
    assert response.status_code == 400
    assert response.json()["error"]["code"] != "invalid_characters"
