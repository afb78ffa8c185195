"""Training-file validation: every bad upload gets a 400 with line-level reasons and leaves nothing."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from marketplace.finetuning.models import File, FineTuningJob
from tests.conftest import chat_lines, jsonl


def _stored_files() -> list[Path]:
    root = Path(settings.MEDIA_ROOT)
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def _assert_rejected(response: Any, *codes: str, status: int = 400) -> dict[str, Any]:
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "file"
    assert File.objects.count() == 0
    assert FineTuningJob.objects.count() == 0
    assert _stored_files() == []
    if codes:
        found = {e["code"] for e in error["details"]["errors"]}
        assert set(codes) <= found, found
    return error


def test_good_chat_file_is_stored_with_sha256(upload: Any) -> None:
    content = jsonl(chat_lines(5))
    response = upload(content)
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["object"] == "file" and body["status"] == "processed"
    assert body["bytes"] == len(content)
    stored = File.objects.get(pk=body["id"])
    import hashlib

    assert stored.sha256 == hashlib.sha256(content).hexdigest()
    assert stored.line_count == 5 and stored.data_format == "chat"
    assert len(_stored_files()) == 1


@pytest.mark.parametrize(
    "rows",
    [
        [{"prompt": "Say hi", "completion": "hi"}],
        [{"text": "Once upon a time"}],
    ],
)
def test_other_formats_are_accepted(upload: Any, rows: list[dict[str, Any]]) -> None:
    assert upload(jsonl(rows)).status_code == 200


def test_truncated_json_reports_the_line(upload: Any) -> None:
    content = jsonl(chat_lines(3)) + b'{"messages": [{"role": "user", "content": "hi"'
    error = _assert_rejected(upload(content), "invalid_json")
    assert error["details"]["errors"][0]["line"] == 4


def test_wrong_keys_are_reported_per_line(upload: Any) -> None:
    rows: list[Any] = [
        *chat_lines(1),
        {"messages": [{"role": "user", "content": "hi"}]},
        {"messages": [{"role": "wizard", "content": "x"}, {"role": "assistant", "content": "y"}]},
        {"messages": [{"role": "user"}, {"role": "assistant", "content": "y"}]},
        {"question": "no known key"},
        [1, 2, 3],
    ]
    error = _assert_rejected(upload(jsonl(rows)))
    by_line = {e["line"]: e["code"] for e in error["details"]["errors"]}
    assert by_line == {
        2: "no_assistant_message",
        3: "unrecognized_role",
        4: "message_missing_key",
        5: "missing_messages",
        6: "not_an_object",
    }
    assert "line 2" in error["message"]


def test_mixed_formats_are_rejected(upload: Any) -> None:
    rows = [*chat_lines(1), {"prompt": "p", "completion": "c"}]
    _assert_rejected(upload(jsonl(rows)), "mixed_formats")


def test_empty_file(upload: Any) -> None:
    _assert_rejected(upload(b""), "empty_file")


def test_blank_line_is_an_empty_example(upload: Any) -> None:
    content = jsonl(chat_lines(1)) + b"\n" + jsonl(chat_lines(1))
    error = _assert_rejected(upload(content), "empty_example")
    assert error["details"]["errors"][0]["line"] == 2


def test_binary_bytes(upload: Any) -> None:
    _assert_rejected(upload(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + os.urandom(64)))


def test_non_utf8(upload: Any) -> None:
    content = json.dumps({"text": "café"}, ensure_ascii=False).encode("latin-1") + b"\n"
    _assert_rejected(upload(content), "invalid_encoding")


def test_over_limit_file(upload: Any, settings: Any) -> None:
    settings.PARTAGE_MAX_UPLOAD_BYTES = 1000
    content = jsonl(chat_lines(40))
    assert len(content) > 1000
    error = _assert_rejected(upload(content), status=413)
    assert error["code"] == "file_too_large"


def test_too_many_lines(upload: Any, settings: Any) -> None:
    settings.PARTAGE_MAX_TRAINING_LINES = 3
    _assert_rejected(upload(jsonl(chat_lines(5))), "too_many_lines")


def test_wrong_purpose_is_rejected(client_a: Any) -> None:
    from django.core.files.uploadedfile import SimpleUploadedFile

    response = client_a.post(
        "/v1/files",
        {"file": SimpleUploadedFile("t.jsonl", jsonl(chat_lines(1))), "purpose": "assistants"},
        format="multipart",
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "purpose"
    assert File.objects.count() == 0
