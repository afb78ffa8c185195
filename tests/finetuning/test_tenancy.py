"""One organization's key cannot list, read, download or cancel another's files, jobs or adapters."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.files.base import ContentFile

from marketplace.finetuning import services
from marketplace.finetuning.models import File, FineTuningJob, JobStatus
from tests.conftest import chat_lines, jsonl


@pytest.fixture
def alices_things(org_a: Any, key_a: str) -> dict[str, Any]:
    import io

    file = services.file_create(
        organization=org_a, stream=io.BytesIO(jsonl(chat_lines(3))), filename="a.jsonl"
    )
    job = services.job_create(organization=org_a, model="partage/tiny-llama", training_file=file.id)
    adapter = services.result_file_create(
        job=job, stream=io.BytesIO(b"adapter-bytes"), filename="adapter.tar.gz"
    )
    FineTuningJob.objects.filter(pk=job.pk).update(status=JobStatus.SUCCEEDED, result_file=adapter)
    return {"file": file, "job": job, "adapter": adapter}


def test_other_org_gets_404_everywhere(client_b: Any, alices_things: dict[str, Any]) -> None:
    file, job, adapter = alices_things["file"], alices_things["job"], alices_things["adapter"]
    attempts = [
        ("get", f"/v1/files/{file.id}"),
        ("get", f"/v1/files/{file.id}/content"),
        ("delete", f"/v1/files/{file.id}"),
        ("get", f"/v1/files/{adapter.id}"),
        ("get", f"/v1/files/{adapter.id}/content"),
        ("get", f"/v1/fine_tuning/jobs/{job.id}"),
        ("get", f"/v1/fine_tuning/jobs/{job.id}/events"),
        ("get", f"/v1/fine_tuning/jobs/{job.id}/checkpoints"),
        ("post", f"/v1/fine_tuning/jobs/{job.id}/cancel"),
        ("post", f"/v1/fine_tuning/jobs/{job.id}/pause"),
        ("post", f"/v1/fine_tuning/jobs/{job.id}/resume"),
    ]
    for method, url in attempts:
        response = getattr(client_b, method)(url)
        assert response.status_code == 404, (method, url, response.status_code)
        assert response.json()["error"]["type"] == "invalid_request_error"
    assert client_b.get("/v1/files").json()["data"] == []
    assert client_b.get("/v1/fine_tuning/jobs").json()["data"] == []
    assert File.objects.filter(pk=file.id, deleted_at__isnull=True).exists()
    assert FineTuningJob.objects.get(pk=job.id).status == JobStatus.SUCCEEDED


def test_owner_sees_own_things(client_a: Any, alices_things: dict[str, Any]) -> None:
    job = alices_things["job"]
    assert client_a.get(f"/v1/fine_tuning/jobs/{job.id}").status_code == 200
    content = client_a.get(f"/v1/files/{alices_things['adapter'].id}/content")
    assert content.status_code == 200 and b"".join(content.streaming_content) == b"adapter-bytes"
    ids = [j["id"] for j in client_a.get("/v1/fine_tuning/jobs").json()["data"]]
    assert ids == [job.id]


def test_job_token_is_scoped_to_one_job(
    client: Any, alices_things: dict[str, Any], org_b: Any
) -> None:
    import io

    from marketplace.finetuning.tokens import job_token_issue

    other_file = services.file_create(
        organization=org_b, stream=io.BytesIO(jsonl(chat_lines(2))), filename="b.jsonl"
    )
    other_job = services.job_create(
        organization=org_b, model="partage/tiny-llama", training_file=other_file.id
    )
    token = job_token_issue(job_id=alices_things["job"].id, attempt=1, deadline_seconds=3600)
    response = client.get(
        f"/internal/v1/jobs/{other_job.id}/spec", HTTP_AUTHORIZATION=f"Bearer {token}"
    )
    assert response.status_code == 403
    response = client.get(
        f"/internal/v1/jobs/{other_job.id}/spec", HTTP_AUTHORIZATION="Bearer forged"
    )
    assert response.status_code == 401
    _ = ContentFile
