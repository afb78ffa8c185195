"""Hostile uploads (issue 14, point 4): deep nesting, a huge line, bodies over the limit (told by
Content-Length or streamed chunked), validation off the request, and no cascading format errors."""

from __future__ import annotations

import io
import json
import socket
import time
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from marketplace.finetuning.models import File
from marketplace.finetuning.validation import MAX_JSON_DEPTH, read_lines, validate_lines
from tests.conftest import chat_lines, jsonl


def _errors(response: Any) -> list[dict[str, Any]]:
    assert response.status_code == 400, response.content
    return list(response.json()["error"]["details"]["errors"])


# ------------------------------------------------------------------ bounded parsing


def test_100000_deep_nesting_is_a_line_error_not_a_500(upload: Any) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    nested_in_object = b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    content = jsonl(chat_lines(1)) + deep + b"\n" + nested_in_object + b"\n"
    errors = _errors(upload(content))
    assert [(e["line"], e["code"]) for e in errors] == [
        (2, "too_deeply_nested"),
        (3, "too_deeply_nested"),
    ]
    assert File.objects.count() == 0


def test_brackets_inside_strings_do_not_count_as_nesting(upload: Any) -> None:
    row = {"messages": [{"role": "user", "content": "[" * 5000 + "{" * 5000}]}
    row["messages"].append({"role": "assistant", "content": "fine"})
    response = upload(jsonl([row]))
    assert response.status_code == 200, response.content


def test_nesting_just_under_the_depth_limit_is_parsed() -> None:
    ok = b'{"text": "x", "extra": ' + b"[" * (MAX_JSON_DEPTH - 1) + b"]" * (MAX_JSON_DEPTH - 1)
    report = validate_lines([ok + b"}"], max_lines=10)
    assert report.ok, report.as_dict()


def test_a_line_over_the_line_limit_is_reported_with_its_number(upload: Any, settings: Any) -> None:
    settings.PARTAGE_MAX_LINE_BYTES = 4096
    huge = json.dumps({"text": "x" * 50_000}).encode()
    content = jsonl(chat_lines(2)) + huge + b"\n" + jsonl(chat_lines(1))
    errors = _errors(upload(content))
    assert [(e["line"], e["code"]) for e in errors] == [(3, "line_too_large")]
    assert f"{len(huge)} bytes" in errors[0]["message"]
    assert "4096" in errors[0]["message"]


class _ReadRecorder(io.BytesIO):
    largest = 0

    def readline(self, size: int | None = -1) -> bytes:  # type: ignore[override]
        line = super().readline(size)
        self.largest = max(self.largest, len(line))
        return line


def test_a_huge_line_is_never_held_whole_in_memory() -> None:
    stream = _ReadRecorder(b'{"text": "ok"}\n' + b"x" * (8 << 20) + b'\n{"text": "after"}')
    lines = list(read_lines(stream, max_line_bytes=1024))
    assert lines[0] == b'{"text": "ok"}' and lines[2] == b'{"text": "after"}'
    assert getattr(lines[1], "size", None) == 8 << 20
    assert stream.largest <= 1 << 20  # read in chunks of at most 1 MiB, never 8 MiB at once


# ------------------------------------------------------------------ no cascade


def test_one_line_in_another_format_is_the_only_line_flagged(upload: Any) -> None:
    rows: list[Any] = [*chat_lines(8), {"text": "a stray plain-text line"}, *chat_lines(8)]
    errors = _errors(upload(jsonl(rows)))
    assert [(e["line"], e["code"]) for e in errors] == [(9, "mixed_formats")]
    assert "the file is chat (16 of 17 examples)" in errors[0]["message"]
    assert upload(jsonl(rows)).json()["error"]["details"]["format"] == "chat"


def test_the_majority_decides_even_when_the_first_line_differs(upload: Any) -> None:
    rows: list[Any] = [
        {"text": "first"},
        *[{"prompt": f"p{i}", "completion": "c"} for i in range(5)],
    ]
    errors = _errors(upload(jsonl(rows)))
    assert [(e["line"], e["code"]) for e in errors] == [(1, "mixed_formats")]


def test_a_prompt_without_completion_is_missing_a_key_not_a_format_mix(upload: Any) -> None:
    rows: list[Any] = [
        {"prompt": "p", "completion": "c"},
        {"prompt": "x"},
        {"prompt": "y", "completion": "z"},
    ]
    errors = _errors(upload(jsonl(rows)))
    assert [(e["line"], e["code"]) for e in errors] == [(2, "message_missing_key")]
    assert "'completion'" in errors[0]["message"]


def test_errors_of_a_minority_line_are_not_reported_twice() -> None:
    rows: list[Any] = [*chat_lines(3), {"prompt": "x"}]
    report = validate_lines([json.dumps(r).encode() for r in rows], max_lines=10)
    assert [(e.line, e.code) for e in report.errors] == [(4, "mixed_formats")]
    assert report.error_count == 1 and report.data_format == "chat"


# ------------------------------------------------------------------ off the request


@pytest.fixture
def async_validation(settings: Any) -> None:
    settings.PARTAGE_UPLOAD_INLINE_VALIDATION_BYTES = 64


def test_a_large_file_is_uploaded_then_validated_by_the_worker(
    upload: Any, client_a: Any, async_validation: None, django_capture_on_commit_callbacks: Any
) -> None:
    from workers.tasks import file_validate

    with django_capture_on_commit_callbacks(execute=False) as enqueued:
        response = upload(jsonl(chat_lines(10)))
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "uploaded" and body["status_details"] is None
    assert len(enqueued) == 1  # the validation task, sent after commit
    refused = client_a.post(
        "/v1/fine_tuning/jobs",
        {"model": "partage/tiny-llama", "training_file": body["id"]},
        format="json",
    )
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "file_not_ready"

    assert file_validate(body["id"]) == "processed"
    done = client_a.get(f"/v1/files/{body['id']}").json()
    assert done["status"] == "processed" and done["line_count"] == 10
    assert file_validate(body["id"]) is None  # a second run changes nothing


def test_a_large_bad_file_ends_in_error_with_its_line_report(
    upload: Any, client_a: Any, async_validation: None, django_capture_on_commit_callbacks: Any
) -> None:
    from workers.tasks import file_validate

    content = jsonl(chat_lines(4)) + b"[" * 100_000 + b"\n"
    with django_capture_on_commit_callbacks(execute=False):
        file_id = upload(content).json()["id"]
    assert file_validate(file_id) == "error"
    body = client_a.get(f"/v1/files/{file_id}").json()
    assert body["status"] == "error"
    assert body["status_details"]["errors"] == [
        {
            "line": 5,
            "code": "too_deeply_nested",
            "message": body["status_details"]["errors"][0]["message"],
        }
    ]
    assert "line 5" in body["status_details"]["message"]


def test_the_openai_sdk_parses_a_file_still_being_validated(
    client_a: Any, async_validation: None
) -> None:
    from openai.types import FileObject

    with_status = client_a.post(
        "/v1/files",
        {"file": SimpleUploadedFile("t.jsonl", jsonl(chat_lines(10))), "purpose": "fine-tune"},
        format="multipart",
    ).json()
    parsed = FileObject.model_validate(with_status)  # strict: the SDK's own type accepts it
    assert parsed.status == "uploaded"


# ------------------------------------------------------------------ 413 before the body is read


def _raw_request(base_url: str, head: str, body_part: bytes) -> tuple[bytes, float]:
    """Send a request head and part of a body, then read what the server answers (and when)."""
    address = urlsplit(base_url)
    with socket.create_connection((address.hostname, address.port), timeout=15) as conn:
        conn.sendall(head.encode())
        conn.sendall(body_part)
        started = time.monotonic()
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = conn.recv(65536)
            if not chunk:
                break
            answer += chunk
        return answer, time.monotonic() - started


def _head(key: str, extra: str) -> str:
    return (
        "POST /v1/files HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {key}\r\n"
        "Content-Type: multipart/form-data; boundary=xyz\r\n"
        f"{extra}\r\n"
    )


@pytest.mark.slow
def test_content_length_over_the_limit_gets_413_before_the_body_is_sent(
    gunicorn_server: Any, key_a: str
) -> None:
    base_url = gunicorn_server()
    declared = 200 * 1024 * 1024  # twice the 100 MiB limit; only 64 KiB is ever sent
    answer, waited = _raw_request(
        base_url, _head(key_a, f"Content-Length: {declared}\r\n"), b"x" * 65536
    )
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert waited < 10
    body = answer.split(b"\r\n\r\n", 1)[1]
    if body:
        assert b'"file_too_large"' in body
    assert File.objects.count() == 0


def _chunked(payload: bytes, size: int = 65536) -> bytes:
    out = b""
    for start in range(0, len(payload), size):
        piece = payload[start : start + size]
        out += f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    return out


def _multipart(content: bytes) -> bytes:
    return (
        b'--xyz\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
        b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="t.jsonl"\r\n'
        b"Content-Type: application/jsonl\r\n\r\n" + content + b"\r\n--xyz--\r\n"
    )


@pytest.mark.slow
def test_a_chunked_body_is_counted_as_it_streams(gunicorn_server: Any, key_a: str) -> None:
    # A limit of 1 MiB + the 1 MiB multipart allowance: 3 MiB streamed is refused midway.
    base_url = gunicorn_server(PARTAGE_MAX_UPLOAD_BYTES=str(1024 * 1024))
    head = _head(key_a, "Transfer-Encoding: chunked\r\n")
    answer, _ = _raw_request(base_url, head, _chunked(b"x" * (3 * 1024 * 1024)))
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]

    # Under the limit, a chunked upload goes through (Django alone would see an empty body).
    good = _multipart(jsonl(chat_lines(3)))
    answer, _ = _raw_request(base_url, head, _chunked(good) + b"0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
    assert File.objects.filter(status="processed", line_count=3).count() == 1


def test_an_upload_whose_validation_task_was_lost_is_swept(
    upload: Any, async_validation: None, django_capture_on_commit_callbacks: Any
) -> None:
    from datetime import timedelta

    from django.utils import timezone

    from marketplace.finetuning.services.files import files_validation_sweep
    from workers.celery import app

    with django_capture_on_commit_callbacks(execute=False):  # the task never reaches a worker
        file_id = upload(jsonl(chat_lines(10))).json()["id"]
    assert files_validation_sweep() == 0  # too recent: its task may still be on its way
    File.objects.filter(pk=file_id).update(created_at=timezone.now() - timedelta(minutes=11))
    previous = app.conf.task_always_eager
    app.conf.task_always_eager = True
    try:
        assert files_validation_sweep() == 1
    finally:
        app.conf.task_always_eager = previous
    assert File.objects.get(pk=file_id).status == "processed"


def test_the_portal_shows_a_file_being_validated_then_its_report(
    alice: Any, org_a: Any, async_validation: None, django_capture_on_commit_callbacks: Any
) -> None:
    from django.test import Client

    from workers.tasks import file_validate

    web = Client()
    web.force_login(alice)
    content = jsonl(chat_lines(3)) + b'{"text": "stray"}\n'
    with django_capture_on_commit_callbacks(execute=False):
        response = web.post(
            "/data/", {"file": SimpleUploadedFile("big.jsonl", content)}, follow=True
        )
    assert "being checked in the background" in response.content.decode()
    file_id = File.objects.get().id
    assert file_validate(file_id) == "error"
    page = web.get(f"/data/{file_id}/").content.decode()
    assert "mixed_formats" in page and "<td>4</td>" in page and "line 4" in page


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_real_worker_validates_a_large_upload_off_the_request(
    celery_worker_process: Any, client_a: Any, settings: Any
) -> None:
    _worker_validates(celery_worker_process, client_a, settings)


@pytest.mark.pg
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_real_worker_validates_a_large_upload_on_postgresql_and_redis(
    celery_worker_process: Any, client_a: Any, settings: Any
) -> None:
    _worker_validates(celery_worker_process, client_a, settings)


def _worker_validates(celery_worker_process: Any, client_a: Any, settings: Any) -> None:
    from tests.conftest import wait_for

    settings.PARTAGE_UPLOAD_INLINE_VALIDATION_BYTES = 64
    celery_worker_process()
    good = jsonl(chat_lines(50))
    bad = jsonl(chat_lines(5)) + b"[" * 100_000 + b"\n"
    ids = []
    for content in (good, bad):
        response = client_a.post(
            "/v1/files",
            {"file": SimpleUploadedFile("big.jsonl", content), "purpose": "fine-tune"},
            format="multipart",
        )
        assert response.status_code == 200 and response.json()["status"] == "uploaded"
        ids.append(response.json()["id"])

    def decided() -> bool:
        return not File.objects.filter(pk__in=ids, status="uploaded").exists()

    wait_for(decided, timeout=240, interval=1, what="the worker to validate both uploads")
    assert File.objects.get(pk=ids[0]).status == "processed"
    failed = client_a.get(f"/v1/files/{ids[1]}").json()
    assert failed["status"] == "error"
    errors = failed["status_details"]["errors"]
    assert [(e["line"], e["code"]) for e in errors] == [(6, "too_deeply_nested")]
