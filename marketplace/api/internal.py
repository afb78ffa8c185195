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
from workers.protocol import EXIT_OK, exit_phase


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
        manifest = services.manifest_from_json(body_of(request).get("manifest") or "")
        job = services.adapter_store(
            job_id=job.id, attempt_number=number, archive=archive, manifest=manifest
        )
        return Response({"status": job.status, "result_file": job.result_file_id})


class ExitView(InternalView):
    def post(self, request: Request, job_id: str) -> Response:
        job = self.job(request, job_id)
        number = self.principal(request).attempt
        fields = body_of(request)
        attempt = job.attempts.filter(number=number).first()
        if attempt is None:
            raise NotFound("No such attempt.")
        try:
            code = int(fields.get("exit_code", ""))
        except (TypeError, ValueError):
            raise InvalidInput("exit_code must be an integer.", param="exit_code") from None
        phase = exit_phase(code)
        job = services.attempt_ended(
            attempt_id=attempt.pk,
            phase=phase,
            exit_code=code,
            reason="" if code == EXIT_OK else f"trainer exited with code {code}",
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
    from django.db import connection
    from django.http import JsonResponse

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
    ok = all(v == "ok" for v in checks.values())
    return JsonResponse(
        {"status": "ok" if ok else "unavailable", "checks": checks}, status=200 if ok else 503
    )
