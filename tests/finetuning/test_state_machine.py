"""Every transition is a conditional update that records an event; invalid ones are refused."""

from __future__ import annotations

import io
from typing import Any

import pytest

from marketplace.errors import InvalidTransition
from marketplace.finetuning import services, states
from marketplace.finetuning.models import FineTuningJob, JobEvent
from marketplace.finetuning.models import JobStatus as S
from tests.conftest import chat_lines, jsonl


@pytest.fixture
def job(org_a: Any) -> FineTuningJob:
    file = services.file_create(
        organization=org_a, stream=io.BytesIO(jsonl(chat_lines(3))), filename="a.jsonl"
    )
    return services.job_create(
        organization=org_a, model="partage/tiny-llama", training_file=file.id
    )


def test_new_job_is_queued_with_events(job: FineTuningJob) -> None:
    assert job.status == S.QUEUED
    messages = list(JobEvent.objects.filter(job=job).order_by("seq").values_list("seq", "message"))
    assert [seq for seq, _ in messages] == [1, 2]
    assert "queued" in messages[-1][1]


def test_invalid_transition_is_refused_and_records_nothing(job: FineTuningJob) -> None:
    before = JobEvent.objects.filter(job=job).count()
    with pytest.raises(InvalidTransition, match="cannot become succeeded"):
        services.job_transition(job_id=job.id, to=S.SUCCEEDED, message="nope")
    job.refresh_from_db()
    assert job.status == S.QUEUED
    assert JobEvent.objects.filter(job=job).count() == before


def test_every_state_maps_to_a_public_status() -> None:
    assert {states.public_status(s) for s in S.values} <= {
        "validating_files",
        "queued",
        "running",
        "succeeded",
        "failed",
        "cancelled",
        "paused",
    }
    for target, sources in states.ALLOWED.items():
        assert target not in states.TERMINAL or not (sources & states.TERMINAL)


def test_cancel_queued_job(job: FineTuningJob, org_a: Any) -> None:
    cancelled = services.job_cancel(organization=org_a, job_id=job.id)
    assert cancelled.status == S.CANCELLED and cancelled.finished_at is not None
    with pytest.raises(InvalidTransition):
        services.job_cancel(organization=org_a, job_id=job.id)


def test_bad_hyperparameters_are_explained(org_a: Any, job: FineTuningJob) -> None:
    from marketplace.errors import InvalidInput

    with pytest.raises(InvalidInput) as excinfo:
        services.job_create(
            organization=org_a,
            model="partage/tiny-llama",
            training_file=job.training_file_id,
            hyperparameters={"n_epochs": 0},
        )
    assert excinfo.value.param == "hyperparameters.n_epochs"
    with pytest.raises(InvalidInput) as excinfo:
        services.job_create(organization=org_a, model="gpt-4o", training_file=job.training_file_id)
    assert excinfo.value.param == "model"
    with pytest.raises(InvalidInput) as excinfo:
        services.job_create(
            organization=org_a,
            model="partage/tiny-llama",
            training_file=job.training_file_id,
            lora={"r": 10_000},
        )
    assert excinfo.value.param == "lora.r"
    assert FineTuningJob.objects.count() == 1
