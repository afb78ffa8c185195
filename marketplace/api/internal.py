"""Internal endpoints for trainers (pods and local processes), authenticated by job token.

A token is scoped to one job and one attempt. A stale attempt (one that was superseded) gets
409, so an evicted pod that comes back cannot overwrite its successor's work.
"""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.http import FileResponse, HttpRequest
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.parsers import JSONParser, MultiPartParser
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from marketplace.api.inputs import body_of
from marketplace.errors import Conflict, InvalidInput, NotFound
from marketplace.finetuning import selectors, services
from marketplace.finetuning.models import FineTuningJob
from marketplace.finetuning.tokens import job_token_verify


class JobPrincipal:
    is_authenticated = True

    def __init__(self, job_id: str, attempt: int) -> None:
        self.job_id = job_id
        self.attempt = attempt


class JobTokenAuthentication(BaseAuthentication):
    def authenticate(self, request: Request) -> tuple[JobPrincipal, str] | None:
        header = get_authorization_header(request).decode("latin-1")
        scheme, _, token = header.partition(" ")
        if scheme != "Bearer" or not token:
            raise exceptions.NotAuthenticated("Missing job token.")
        verified = job_token_verify(token.strip())
        if verified is None:
            raise exceptions.AuthenticationFailed("Invalid or expired job token.")
        return JobPrincipal(*verified), token

    def authenticate_header(self, request: Request) -> str:
        return "Bearer"


class TokenMatchesJob(BasePermission):
    def has_permission(self, request: Request, view: Any) -> bool:
        principal = request.user
        return isinstance(principal, JobPrincipal) and principal.job_id == view.kwargs.get("job_id")


class InternalView(APIView):
    authentication_classes = [JobTokenAuthentication]
    permission_classes = [TokenMatchesJob]
    parser_classes = [JSONParser, MultiPartParser]

    def principal(self, request: Request) -> JobPrincipal:
        principal: object = request.user
        if not isinstance(principal, JobPrincipal):
            raise exceptions.NotAuthenticated("Missing job token.")
        return principal

    def job(self, request: Request, job_id: str) -> FineTuningJob:
        job = FineTuningJob.objects.select_related("organization").filter(pk=job_id).first()
        if job is None:
            raise NotFound(f"No job {job_id}.")
        return job

    def attempt_number(self, request: Request, job: FineTuningJob) -> int:
        token_attempt = self.principal(request).attempt
        raw = body_of(request).get("attempt", token_attempt)
        try:
            number = int(raw)
        except (TypeError, ValueError):
            raise InvalidInput("attempt must be an integer.", param="attempt") from None
        if number != token_attempt:
            raise Conflict("The token belongs to another attempt.")
        if number != job.attempt_count:
            raise Conflict(
                f"Attempt {number} is stale: the job is on attempt {job.attempt_count}.",
                code="stale_attempt",
            )
        return number


def trainer_hyperparameters(job: FineTuningJob) -> dict[str, Any]:
    hp = job.hyperparameters
    return {
        "n_epochs": hp.get("n_epochs", 3),
        "batch_size": hp.get("batch_size", 8),
        "learning_rate": 2e-4 * float(hp.get("learning_rate_multiplier", 1.0)),
        "max_seq_length": hp.get("max_seq_length", 1024),
    }


class SpecView(InternalView):
    def get(self, request: Request, job_id: str) -> Response:
        job = self.job(request, job_id)
        self.attempt_number(request, job)
        base = f"/internal/v1/jobs/{job.id}"
        checkpoint = selectors.latest_checkpoint(job.id)
        return Response(
            {
                "job_id": job.id,
                "attempt": job.attempt_count,
                "base_model": job.model,
                "seed": job.seed,
                "hyperparameters": trainer_hyperparameters(job),
                "lora": job.lora,
                "max_rank": settings.PARTAGE_MAX_ADAPTER_RANK,
                "training_file_url": f"/files/{job.training_file_id}",
                "validation_file_url": f"/files/{job.validation_file_id}"
                if job.validation_file_id
                else None,
                "checkpoint_url": "/checkpoints/latest" if checkpoint else None,
                "checkpoint_step": checkpoint.step if checkpoint else None,
                "urls_relative_to": base,
            }
        )


class JobFileView(InternalView):
    def get(self, request: Request, job_id: str, file_id: str) -> FileResponse:
        job = self.job(request, job_id)
        if file_id not in {job.training_file_id, job.validation_file_id}:
            raise NotFound("This file is not part of the job.")
        file = job.training_file if file_id == job.training_file_id else job.validation_file
        assert file is not None
        return FileResponse(file.content.open("rb"), content_type="application/jsonl")


class EventsView(InternalView):
    def post(self, request: Request, job_id: str) -> Response:
        job = self.job(request, job_id)
        number = self.attempt_number(request, job)
        events = body_of(request).get("events")
        if not isinstance(events, list):
            raise InvalidInput("events must be a list of trainer events.", param="events")
        flags = services.trainer_events_record(job_id=job.id, attempt_number=number, events=events)
        return Response(flags)


class CheckpointUploadView(InternalView):
    def post(self, request: Request, job_id: str) -> Response:
        job = self.job(request, job_id)
        number = self.attempt_number(request, job)
        archive = request.FILES.get("archive")
        if archive is None:
            raise InvalidInput("Send the checkpoint as multipart field 'archive'.", param="archive")
        fields = body_of(request)
        try:
            step = int(fields.get("step", ""))
            metrics = json.loads(fields.get("metrics") or "{}")
        except (TypeError, ValueError) as e:
            raise InvalidInput(f"Bad checkpoint fields: {e}") from e
        checkpoint = services.checkpoint_store(
            job_id=job.id, attempt_number=number, step=step, metrics=metrics, archive=archive
        )
        return Response({"id": checkpoint.public_id, "step": checkpoint.step})


class LatestCheckpointView(InternalView):
    def get(self, request: Request, job_id: str) -> FileResponse:
        checkpoint = selectors.latest_checkpoint(job_id)
        if checkpoint is None:
            raise NotFound("No checkpoint yet.")
        return FileResponse(checkpoint.archive.open("rb"), content_type="application/gzip")


class AdapterUploadView(InternalView):
    def post(self, request: Request, job_id: str) -> Response:
        job = self.job(request, job_id)
        number = self.attempt_number(request, job)
        archive = request.FILES.get("archive")
        if archive is None:
            raise InvalidInput("Send the adapter as multipart field 'archive'.", param="archive")
        fields = body_of(request)
        manifest = services.manifest_from_json(fields.get("manifest") or "")
        eval_report = services.eval_from_json(fields.get("eval") or "")
        job = services.adapter_store(
            job_id=job.id,
            attempt_number=number,
            archive=archive,
            manifest=manifest,
            eval_report=eval_report,
        )
        return Response({"status": job.status, "result_file": job.result_file_id})


class LogView(InternalView):
    def post(self, request: Request, job_id: str) -> Response:
        job = self.job(request, job_id)
        number = self.attempt_number(request, job)
        logs = body_of(request).get("logs")
        if not isinstance(logs, str):
            raise InvalidInput("logs must be the trainer's log as a string.", param="logs")
        taken = services.attempt_log_report(job_id=job.id, attempt_number=number, logs=logs)
        return Response({"taken": taken})


class ExitView(InternalView):
    def post(self, request: Request, job_id: str) -> Response:
        job = self.job(request, job_id)
        fields = body_of(request)
        try:
            code = int(fields.get("exit_code", ""))
        except (TypeError, ValueError):
            raise InvalidInput("exit_code must be an integer.", param="exit_code") from None
        job = services.attempt_exit_report(
            job_id=job.id,
            attempt_number=self.principal(request).attempt,
            exit_code=code,
            logs=str(fields.get("logs") or ""),
        )
        return Response({"status": job.status})


def health_live(request: HttpRequest) -> Any:
    from django.http import JsonResponse

    return JsonResponse({"status": "ok"})


def metrics(request: HttpRequest) -> Any:
    """Prometheus exposition (workers/metrics.py). With PARTAGE_METRICS_TOKEN set, and always in
    production, it needs `Authorization: Bearer <that token>`: the Ingress routes every path."""
    import hmac

    from django.http import HttpResponse

    from marketplace import env
    from workers.metrics import render

    token = env.raw("PARTAGE_METRICS_TOKEN") or ""
    if token or settings.PRODUCTION:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not token or not hmac.compare_digest(given.encode(), token.encode()):
            return HttpResponse(
                "Metrics need `Authorization: Bearer <PARTAGE_METRICS_TOKEN>`.\n",
                status=403,
                content_type="text/plain",
            )
    body, content_type = render()
    return HttpResponse(body, content_type=content_type)


def health_ready(request: HttpRequest) -> Any:
    """Database, broker, a live worker and a running scheduler; 503 when one fails.

    `?exclude=workers&exclude=scheduler` leaves checks out, as kube-apiserver's /readyz does:
    the web pods' readiness probe excludes the workers, so that a dead worker pool is reported
    (and alerted on) without taking the API out of its Service.
    """
    from django.db import connection
    from django.http import JsonResponse

    from workers import heartbeat

    excluded = set(request.GET.getlist("exclude"))
    checks: dict[str, str] = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
    except Exception as e:
        checks["database"] = f"error: {e.__class__.__name__}"
    try:
        from workers.celery import app

        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        checks["broker"] = "ok"
    except Exception as e:
        checks["broker"] = f"error: {e.__class__.__name__}"
    max_age = settings.PARTAGE_HEARTBEAT_MAX_AGE_SECONDS
    try:
        ages = heartbeat.ages()
        checks["workers"] = _heartbeat_check(
            [a for s, a in ages.items() if s.startswith(heartbeat.WORKER_PREFIX)], max_age
        )
        checks["scheduler"] = _heartbeat_check(
            [ages[s] for s in ("task:partage.admission_pass",) if s in ages], max_age
        )
    except Exception as e:
        checks["workers"] = checks["scheduler"] = f"error: {e.__class__.__name__}"
    ok = all(v == "ok" for name, v in checks.items() if name not in excluded)
    return JsonResponse(
        {"status": "ok" if ok else "unavailable", "checks": checks}, status=200 if ok else 503
    )


def _heartbeat_check(ages: list[float], max_age: int) -> str:
    if not ages:
        return "error: no heartbeat yet"
    newest = min(ages)
    if newest > max_age:
        return f"error: last heartbeat {newest:.0f} s ago (limit {max_age} s)"
    return "ok"
