"""Output shapes of the OpenAI-compatible objects (REFERENCE §1). Timestamps are Unix seconds."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from marketplace.finetuning.models import Checkpoint, File, FineTuningJob, JobEvent
from marketplace.finetuning.states import public_status


def unix(moment: datetime | None) -> int | None:
    return int(moment.timestamp()) if moment else None


def file_object(file: File) -> dict[str, Any]:
    return {
        "id": file.id,
        "object": "file",
        "bytes": file.bytes,
        "created_at": unix(file.created_at),
        "filename": file.filename,
        "purpose": file.purpose,
        "status": file.status,
        "status_details": file.status_details if file.status == File.Status.ERROR else None,
        "sha256": file.sha256,
        "line_count": file.line_count,
        "format": file.data_format or None,
    }


def job_object(job: FineTuningJob) -> dict[str, Any]:
    hp = job.hyperparameters or {}
    openai_hp = {
        "n_epochs": hp.get("n_epochs"),
        "batch_size": hp.get("batch_size"),
        "learning_rate_multiplier": hp.get("learning_rate_multiplier"),
    }
    progress = job.progress or {}
    return {
        "id": job.id,
        "object": "fine_tuning.job",
        "created_at": unix(job.created_at),
        "finished_at": unix(job.finished_at),
        "model": job.model,
        "fine_tuned_model": job.fine_tuned_model or None,
        "organization_id": job.organization.public_id,
        "status": public_status(job.status),
        "error": job.error,
        "hyperparameters": openai_hp,
        "method": {"type": "supervised", "supervised": {"hyperparameters": openai_hp}},
        "training_file": job.training_file_id,
        "validation_file": job.validation_file_id,
        "result_files": [f for f in (job.result_file_id, job.eval_file_id) if f],
        "trained_tokens": job.trained_tokens,
        "seed": job.seed,
        "estimated_finish": unix(job.estimated_finish),
        "metadata": job.metadata or None,
        "suffix": job.suffix or None,
        "integrations": [],
        "user_provided_suffix": job.suffix or None,
        # Partage's own fields, beside OpenAI's.
        "partage": {
            "state": job.status,
            "failure_class": job.failure_class or None,
            "pending_reason": job.pending_reason or None,
            "estimated_start": unix(job.estimated_start),
            "placement_reason": job.placement_reason or None,
            "lora": job.lora,
            "max_seq_length": hp.get("max_seq_length"),
            "gpu": {"flavor": job.gpu_flavor or None, "count": job.gpu_count},
            "max_cost": str(job.max_cost) if job.max_cost is not None else None,
            "residency": job.residency or None,
            "attempts": job.attempt_count,
            "progress": {
                "step": progress.get("step"),
                "total_steps": progress.get("total_steps"),
                "epoch": progress.get("epoch"),
                "train_loss": progress.get("train_loss"),
                "tokens_per_s": progress.get("tokens_per_s"),
                "eta_s": progress.get("eta_s"),
            }
            if progress
            else None,
        },
    }


def event_object(event: JobEvent) -> dict[str, Any]:
    return {
        "id": event.public_id,
        "object": "fine_tuning.job.event",
        "created_at": unix(event.created_at),
        "level": event.level,
        "message": event.message,
        "type": event.type,
        "data": event.data,
    }


def checkpoint_object(checkpoint: Checkpoint) -> dict[str, Any]:
    metrics = {"step": checkpoint.step, **(checkpoint.metrics or {})}
    return {
        "id": checkpoint.public_id,
        "object": "fine_tuning.job.checkpoint",
        "created_at": unix(checkpoint.created_at),
        "fine_tuned_model_checkpoint": f"{checkpoint.job_id}:step-{checkpoint.step}",
        "fine_tuning_job_id": checkpoint.job_id,
        "step_number": checkpoint.step,
        "metrics": metrics,
    }


def model_object(entry: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": entry["id"],
        "object": "model",
        "created": entry.get("created", 0),
        "owned_by": entry.get("owned_by", "partage"),
        **{
            k: v
            for k, v in entry.items()
            if k in {"description", "architecture", "parameters", "context_length"}
        },
    }
