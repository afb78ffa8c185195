"""Files, fine-tuning jobs, their attempts, events and checkpoints.

The job's `status` is the internal state machine of REFERENCE §2; `public_status` maps it to the
OpenAI-compatible statuses. Transitions go through `services.job_transition` only.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from marketplace.accounts.models import ApiKey, Organization


class File(models.Model):
    class Purpose(models.TextChoices):
        FINE_TUNE = "fine-tune", "Training data"
        RESULTS = "fine-tune-results", "Fine-tuning results (adapter archive, eval.json)"

    class Status(models.TextChoices):
        UPLOADED = "uploaded"
        PROCESSED = "processed"
        ERROR = "error"

    id = models.CharField(primary_key=True, max_length=40, editable=False)
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="files")
    filename = models.CharField(max_length=255)
    purpose = models.CharField(max_length=30, choices=Purpose.choices)
    bytes = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)
    content = models.FileField(upload_to="files/%Y/%m/", max_length=300)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PROCESSED)
    status_details = models.JSONField(null=True, blank=True)
    data_format = models.CharField(max_length=20, blank=True)  # chat | prompt_completion | text
    line_count = models.IntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["organization", "-created_at"], name="file_org_created")]

    def __str__(self) -> str:
        return self.id


class JobStatus(models.TextChoices):
    VALIDATING_FILES = "validating_files"
    QUEUED = "queued"
    ADMITTED = "admitted"
    STARTING = "starting"
    RUNNING = "running"
    FINALIZING = "finalizing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"
    PAUSING = "pausing"
    PAUSED = "paused"
    REQUEUEING = "requeueing"


class FailureClass(models.TextChoices):
    USER_ERROR = "user_error"
    PLATFORM_ERROR = "platform_error"
    PROVIDER_ERROR = "provider_error"
    BUDGET = "budget"
    QUOTA = "quota"


class FineTuningJob(models.Model):
    id = models.CharField(primary_key=True, max_length=40, editable=False)
    # No index of its own: job_org_created (organization, -created_at) serves its lookups.
    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="jobs", db_index=False
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_by_key = models.ForeignKey(
        ApiKey, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    model = models.CharField(max_length=200)  # base model catalog id
    training_file = models.ForeignKey(File, on_delete=models.PROTECT, related_name="+")
    validation_file = models.ForeignKey(
        File, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    hyperparameters = models.JSONField(default=dict)
    lora = models.JSONField(default=dict)
    seed = models.BigIntegerField()
    suffix = models.CharField(max_length=64, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    gpu_flavor = models.CharField(max_length=40, blank=True)
    gpu_count = models.PositiveIntegerField(default=1)
    max_cost = models.DecimalField(max_digits=12, decimal_places=2, null=True, blank=True)
    priority = models.IntegerField(default=0)
    residency = models.JSONField(default=dict, blank=True)  # {"eu_only": bool, "countries": [...]}

    status = models.CharField(
        max_length=20, choices=JobStatus.choices, default=JobStatus.VALIDATING_FILES, db_index=True
    )
    failure_class = models.CharField(max_length=20, choices=FailureClass.choices, blank=True)
    error = models.JSONField(null=True, blank=True)  # {"code", "message", "param"}
    pending_reason = models.TextField(blank=True)
    estimated_start = models.DateTimeField(null=True, blank=True)
    estimated_finish = models.DateTimeField(null=True, blank=True)
    placement_reason = models.TextField(blank=True)
    attempt_count = models.PositiveIntegerField(default=0)
    progress = models.JSONField(default=dict, blank=True)  # latest progress event
    trained_tokens = models.BigIntegerField(null=True, blank=True)
    fine_tuned_model = models.CharField(max_length=255, blank=True)
    result_file = models.ForeignKey(
        File, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # eval.json: the base model's and the adapter's answers to held-out prompts (a result file)
    eval_file = models.ForeignKey(
        File, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    manifest = models.JSONField(null=True, blank=True)
    event_seq = models.PositiveIntegerField(default=0)

    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    admitted_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["organization", "-created_at"], name="job_org_created"),
        ]

    def __str__(self) -> str:
        return self.id


class JobEvent(models.Model):
    """Append-only. `seq` is per job and serves as the SSE event id (Last-Event-ID)."""

    class Level(models.TextChoices):
        INFO = "info"
        WARN = "warn"
        ERROR = "error"

    class Type(models.TextChoices):
        MESSAGE = "message"
        METRICS = "metrics"

    job = models.ForeignKey(FineTuningJob, on_delete=models.CASCADE, related_name="events")
    seq = models.PositiveIntegerField()
    created_at = models.DateTimeField(default=timezone.now)
    level = models.CharField(max_length=5, choices=Level.choices, default=Level.INFO)
    type = models.CharField(max_length=10, choices=Type.choices, default=Type.MESSAGE)
    message = models.TextField()
    data = models.JSONField(null=True, blank=True)

    class Meta:
        ordering = ["-seq"]
        constraints = [models.UniqueConstraint(fields=["job", "seq"], name="jobevent_unique_seq")]

    def __str__(self) -> str:
        return f"{self.job_id}#{self.seq}"

    @property
    def public_id(self) -> str:
        return f"ftevent-{self.job_id.removeprefix('ftjob-')}-{self.seq}"


class JobAttempt(models.Model):
    """One try at running a job on an executor. A requeue after eviction is a new attempt."""

    class Status(models.TextChoices):
        LAUNCHING = "launching"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        DISRUPTED = "disrupted"
        CANCELLED = "cancelled"
        LOST = "lost"

    job = models.ForeignKey(FineTuningJob, on_delete=models.CASCADE, related_name="attempts")
    number = models.PositiveIntegerField()
    executor = models.CharField(max_length=20)
    name = models.CharField(max_length=63)
    handle = models.CharField(max_length=200, blank=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.LAUNCHING)
    exit_code = models.IntegerField(null=True, blank=True)
    reason = models.TextField(blank=True)
    logs = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    training_started_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    gpu_seconds = models.DecimalField(max_digits=16, decimal_places=3, default=0)

    class Meta:
        ordering = ["job", "number"]
        constraints = [
            models.UniqueConstraint(fields=["job", "number"], name="attempt_unique_number"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def is_finished(self) -> bool:
        return self.ended_at is not None


class Checkpoint(models.Model):
    job = models.ForeignKey(FineTuningJob, on_delete=models.CASCADE, related_name="checkpoints")
    attempt = models.ForeignKey(JobAttempt, null=True, on_delete=models.SET_NULL, related_name="+")
    step = models.PositiveIntegerField()
    metrics = models.JSONField(default=dict)
    archive = models.FileField(upload_to="checkpoints/%Y/%m/", max_length=300)
    sha256 = models.CharField(max_length=64)
    bytes = models.BigIntegerField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-step"]
        constraints = [
            models.UniqueConstraint(fields=["job", "step"], name="checkpoint_unique_step"),
        ]

    def __str__(self) -> str:
        return self.public_id

    @property
    def public_id(self) -> str:
        return f"ftckpt-{self.job_id.removeprefix('ftjob-')}-{self.step}"
