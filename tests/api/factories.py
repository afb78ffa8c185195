"""Rows for API tests, made directly (no training): files, jobs with events and checkpoints."""

from __future__ import annotations

import uuid
from typing import Any

from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

from marketplace.finetuning.models import Checkpoint, File, FineTuningJob, JobEvent


def file_for(
    org: Any, *, content: bytes = b'{"text": "hello"}\n', purpose: str = "fine-tune"
) -> File:
    file_id = f"file-{uuid.uuid4().hex[:24]}"
    stored = default_storage.save(f"files/{org.pk}/{file_id}.jsonl", ContentFile(content))
    return File.objects.create(
        id=file_id,
        organization=org,
        filename="train.jsonl",
        purpose=purpose,
        bytes=len(content),
        sha256="0" * 64,
        content=stored,
        line_count=1,
        data_format="text",
    )


def job_for(
    org: Any, *, status: str = "succeeded", events: int = 3, checkpoints: int = 1
) -> FineTuningJob:
    training = file_for(org)
    job_id = f"ftjob-{uuid.uuid4().hex[:24]}"
    job = FineTuningJob.objects.create(
        id=job_id,
        organization=org,
        model="partage/tiny-llama",
        training_file=training,
        seed=1,
        status=status,
        hyperparameters={"n_epochs": 1, "batch_size": 2, "learning_rate_multiplier": 1.0},
        fine_tuned_model=f"ft:partage/tiny-llama:{org.slug}:{job_id[6:14]}"
        if status == "succeeded"
        else "",
        event_seq=events,
    )
    for seq in range(1, events + 1):
        JobEvent.objects.create(job=job, seq=seq, message=f"event {seq}")
    for step in range(1, checkpoints + 1):
        archive = default_storage.save(f"checkpoints/{job_id}/{step}.tar.gz", ContentFile(b"x"))
        Checkpoint.objects.create(
            job=job,
            step=step * 10,
            metrics={"train_loss": 1.0},
            archive=archive,
            sha256="0" * 64,
            bytes=1,
        )
    return job
