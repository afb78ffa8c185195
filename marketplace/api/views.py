"""The /v1 partner API for fine-tuning: files, jobs, events (and their live stream), checkpoints,
models. Shapes follow OpenAI's (REFERENCE §1); Partage's own options are extra body fields.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

from django.conf import settings
from django.db import OperationalError
from django.http import FileResponse, HttpRequest, JsonResponse, StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from marketplace.accounts.models import Organization
from marketplace.api import schema
from marketplace.api import selectors as api_selectors
from marketplace.api.authentication import api_key_of, organization_of
from marketplace.api.errors import error_body
from marketplace.api.idempotency import idempotent
from marketplace.api.inputs import body_of
from marketplace.api.pagination import LIMIT_PARAMETER, page
from marketplace.api.representations import (
    checkpoint_object,
    event_object,
    file_object,
    job_object,
    model_object,
    unix,
)
from marketplace.errors import InvalidInput, NotFound
from marketplace.events.types import JOB_STATUS_EVENTS
from marketplace.finetuning import selectors, services, states
from marketplace.finetuning.models import FineTuningJob, JobEvent


def org_of(request: Request) -> Organization:
    """The caller's organization (kept under this name for the other /v1 view modules)."""
    return organization_of(request)


LIST_PARAMETERS = [
    OpenApiParameter("after", str, description="The id of the last item of the previous page."),
    LIMIT_PARAMETER,
]


class FileUploadSerializer(serializers.Serializer):
    file = serializers.FileField()
    purpose = serializers.ChoiceField(choices=["fine-tune"])


class FileListView(APIView):
    parser_classes = [MultiPartParser]  # the file itself; every other /v1 body is JSON

    @extend_schema(
        operation_id="files_list",
        parameters=[*LIST_PARAMETERS, OpenApiParameter("purpose", str)],
        responses=schema.FileList,
    )
    def get(self, request: Request) -> Response:
        files = selectors.files_for_org(org_of(request))
        purpose = request.query_params.get("purpose")
        if purpose:
            files = files.filter(purpose=purpose)
        return Response(page(request, files, file_object))

    @extend_schema(
        operation_id="files_create", request=FileUploadSerializer, responses=schema.FileObject
    )
    @idempotent
    def post(self, request: Request) -> Response:
        if "file" not in request.FILES:
            raise InvalidInput("Send the training file as multipart field 'file'.", param="file")
        upload = request.FILES["file"]
        file = services.file_create(
            organization=org_of(request),
            stream=upload,
            filename=upload.name or "training.jsonl",
            purpose=str(body_of(request).get("purpose", "")),
            size=upload.size,
        )
        return Response(file_object(file), status=200)


class FileDetailView(APIView):
    def _file(self, request: Request, file_id: str) -> Any:
        file = selectors.files_for_org(org_of(request)).filter(pk=file_id).first()
        if file is None:
            raise NotFound(f"No file with id {file_id!r}.", param="file_id")
        return file

    @extend_schema(operation_id="files_retrieve", responses=schema.FileObject)
    def get(self, request: Request, file_id: str) -> Response:
        return Response(file_object(self._file(request, file_id)))

    @extend_schema(operation_id="files_delete", responses={200: schema.DeletedObject})
    def delete(self, request: Request, file_id: str) -> Response:
        file = services.file_delete(organization=org_of(request), file_id=file_id)
        return Response({"id": file.id, "object": "file", "deleted": True})


class AlwaysJson(DefaultContentNegotiation):
    """Views that stream bytes or events answer errors in JSON, whatever the Accept header says."""

    def select_renderer(self, request: Request, renderers: Any, format_suffix: Any = None) -> Any:
        return renderers[0], renderers[0].media_type


class FileContentView(FileDetailView):
    content_negotiation_class = AlwaysJson
    http_method_names = ["get", "head", "options"]

    @extend_schema(
        operation_id="files_content",
        responses={
            (200, "application/jsonl"): OpenApiTypes.BINARY,
            (200, "application/gzip"): OpenApiTypes.BINARY,
        },
    )
    def get(self, request: Request, file_id: str) -> FileResponse:  # type: ignore[override]
        file = self._file(request, file_id)
        content_type = (
            "application/gzip" if file.purpose == "fine-tune-results" else "application/jsonl"
        )
        return FileResponse(
            file.content.open("rb"),
            content_type=content_type,
            as_attachment=True,
            filename=file.filename,
        )


class LoraOptions(serializers.Serializer):
    r = serializers.IntegerField(required=False, help_text="LoRA rank, 1 to the platform cap.")
    alpha = serializers.FloatField(required=False)
    dropout = serializers.FloatField(required=False)
    target_modules = serializers.JSONField(required=False, help_text="'all-linear' or a list.")
    use_rslora = serializers.BooleanField(required=False)


class JobCreateSerializer(serializers.Serializer):
    model = serializers.CharField()
    training_file = serializers.CharField()
    validation_file = serializers.CharField(required=False, allow_null=True)
    hyperparameters = serializers.DictField(required=False, allow_null=True)
    method = serializers.DictField(required=False, allow_null=True)
    suffix = serializers.CharField(required=False, allow_null=True, allow_blank=True)
    seed = serializers.IntegerField(
        required=False, allow_null=True, min_value=0, max_value=2**31 - 1
    )
    metadata = serializers.DictField(
        child=serializers.CharField(max_length=512), required=False, allow_null=True
    )
    integrations = serializers.ListField(required=False, allow_null=True)
    # Partage's own options (extra_body in the OpenAI SDK).
    lora = serializers.DictField(
        required=False,
        allow_null=True,
        help_text="Partage: LoRA options {r, alpha, dropout, target_modules, use_rslora}.",
    )
    gpu_flavor = serializers.CharField(
        required=False,
        allow_blank=True,
        default="",
        help_text="Partage: GPU flavor, e.g. 'h100-80g'.",
    )
    gpu_count = serializers.IntegerField(
        required=False, min_value=1, max_value=64, default=1, help_text="Partage: GPUs per attempt."
    )
    max_cost = serializers.DecimalField(
        required=False,
        allow_null=True,
        max_digits=12,
        decimal_places=2,
        help_text="Partage: stop and keep the last checkpoint once the job would cost more (EUR).",
    )
    residency = serializers.DictField(
        required=False,
        allow_null=True,
        help_text="Partage: where the job may run, e.g. {'eu_only': true, 'countries': ['FR']}.",
    )
    booking = serializers.CharField(
        required=False,
        allow_null=True,
        allow_blank=True,
        help_text="Partage: run inside this booking of yours.",
    )
    priority = serializers.IntegerField(required=False, default=0, min_value=-100, max_value=100)


def _hyperparameters(data: dict[str, Any]) -> dict[str, Any] | None:
    method = data.get("method") or {}
    if method:
        kind = method.get("type", "supervised")
        if kind != "supervised":
            raise InvalidInput(
                f"method.type {kind!r} is not supported; use 'supervised'.", param="method.type"
            )
        nested = (method.get("supervised") or {}).get("hyperparameters")
        if nested:
            return dict(nested)
    return data.get("hyperparameters")


def _job_create_options(data: dict[str, Any]) -> dict[str, Any]:
    """Partage's options that job_create takes; `booking` only where the service knows it."""
    import inspect

    options: dict[str, Any] = {
        "gpu_flavor": data.get("gpu_flavor", ""),
        "gpu_count": data.get("gpu_count", 1),
        "max_cost": data.get("max_cost"),
        "residency": data.get("residency"),
        "priority": data.get("priority", 0),
    }
    if data.get("booking"):
        if "booking" not in inspect.signature(services.job_create).parameters:
            raise InvalidInput(
                "Running a job inside a booking is not available yet; omit 'booking'.",
                param="booking",
            )
        options["booking"] = data["booking"]
    return options


class JobListView(APIView):
    @extend_schema(
        operation_id="fine_tuning_jobs_list",
        parameters=LIST_PARAMETERS,
        responses=schema.JobList,
    )
    def get(self, request: Request) -> Response:
        org = org_of(request)
        jobs = api_selectors.jobs_for_org(org)
        return Response(page(request, jobs, api_selectors.rendered_with_org(org, job_object)))

    @extend_schema(
        operation_id="fine_tuning_jobs_create",
        request=JobCreateSerializer,
        responses=schema.JobObject,
    )
    @idempotent
    def post(self, request: Request) -> Response:
        serializer = JobCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        job = services.job_create(
            organization=org_of(request),
            model=data["model"],
            training_file=data["training_file"],
            validation_file=data.get("validation_file"),
            hyperparameters=_hyperparameters(data),
            lora=data.get("lora"),
            seed=data.get("seed"),
            suffix=data.get("suffix"),
            metadata=data.get("metadata"),
            created_by_key=api_key_of(request),
            **_job_create_options(data),
        )
        return Response(job_object(job), status=200)


def _job_or_404(request: Request, job_id: str) -> FineTuningJob:
    job = api_selectors.job_for_org(org_of(request), job_id)
    if job is None:
        raise NotFound(f"No fine-tuning job with id {job_id!r}.", param="job_id")
    return job


class JobDetailView(APIView):
    @extend_schema(operation_id="fine_tuning_jobs_retrieve", responses=schema.JobObject)
    def get(self, request: Request, job_id: str) -> Response:
        return Response(job_object(_job_or_404(request, job_id)))


class JobActionView(APIView):
    action_name = ""

    @extend_schema(request=None, responses=schema.JobObject)
    def post(self, request: Request, job_id: str) -> Response:
        action = {
            "cancel": services.job_cancel,
            "pause": services.job_pause,
            "resume": services.job_resume,
        }[self.action_name]
        job = action(organization=org_of(request), job_id=job_id)
        refreshed = api_selectors.job_for_org(org_of(request), job.id)
        return Response(job_object(refreshed or job))


class JobEventsView(APIView):
    @extend_schema(
        operation_id="fine_tuning_jobs_events_list",
        parameters=LIST_PARAMETERS,
        responses=schema.JobEventList,
    )
    def get(self, request: Request, job_id: str) -> Response:
        job = _job_or_404(request, job_id)
        events = selectors.events_for_job(job).order_by("-seq")

        def cursor(queryset: Any, after: str) -> Any:
            seq = after.rsplit("-", 1)[-1]
            return queryset.filter(seq__lt=int(seq)) if seq.isdigit() else None

        return Response(
            page(request, events, event_object, id_of=lambda e: e.public_id, cursor=cursor)
        )


def _sse(event: JobEvent) -> str:
    body = json.dumps(event_object(event), separators=(",", ":"))
    return f"id: {event.seq}\nevent: fine_tuning.job.event\ndata: {body}\n\n"


# The announcements in the outbox that end a job's stream, and the status each one means.
ENDING_EVENTS = {
    event_type: status
    for status, event_type in JOB_STATUS_EVENTS.items()
    if status in states.TERMINAL
}
# How often the stream also reads the job row itself: the safety net for a job deleted, or one
# whose ending announcement it could not see (it committed while the stream was starting).
STATUS_RECHECK_SECONDS = 15.0


def _job_ending(job: FineTuningJob, announced_after: int) -> tuple[int, str | None]:
    """(the stream's new outbox cursor, the job's final status if the outbox announced it)."""
    final = None
    for pk, event_type in selectors.job_announcements(job, after=announced_after).values_list(
        "pk", "event_type"
    ):
        announced_after = pk
        final = ENDING_EVENTS.get(event_type, final)
    return announced_after, final


def job_event_stream(job_id: str, *, after_seq: int, max_seconds: float) -> Iterator[str]:
    """Server-Sent Events: every event after `after_seq`, in order, until the job ends.

    The end is read from the outbox of domain events (the job's `fine_tuning.job.succeeded`,
    `failed` or `cancelled` announcement after the stream's cursor), with a read of the job row
    every STATUS_RECHECK_SECONDS as a safety net."""
    deadline = time.monotonic() + max_seconds
    last_beat = last_check = time.monotonic()
    yield "retry: 2000\n\n"
    job = None
    while job is None:
        try:
            job = FineTuningJob.objects.filter(pk=job_id).first()
            break
        except OperationalError as e:  # SQLite (embedded default) answers "locked" while written
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    if job is None:
        yield f"event: end\ndata: {json.dumps({'status': 'deleted'})}\n\n"
        return
    announced_after = 0
    final: str | None = job.status if job.status in states.TERMINAL else None
    if final is None:
        announced_after, _ = _job_ending(job, 0)  # what was announced before: the row said
    while True:
        try:
            events = list(
                JobEvent.objects.filter(job_id=job_id, seq__gt=after_seq).order_by("seq")[:200]
            )
            if final is None:
                announced_after, final = _job_ending(job, announced_after)
            if final is None and time.monotonic() - last_check > STATUS_RECHECK_SECONDS:
                last_check = time.monotonic()
                status = (
                    FineTuningJob.objects.filter(pk=job_id).values_list("status", flat=True).first()
                )
                final = (
                    "deleted" if status is None else status if status in states.TERMINAL else None
                )
        except OperationalError as e:  # SQLite (embedded default) answers "locked" while written
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.2)
            continue
        for event in events:
            after_seq = event.seq
            yield _sse(event)
        if events:
            continue
        if final is not None:
            status = final if final == "deleted" else states.public_status(final)
            yield f"event: end\ndata: {json.dumps({'status': status})}\n\n"
            return
        if time.monotonic() > deadline:
            return
        if time.monotonic() - last_beat > 15:
            last_beat = time.monotonic()
            yield ": keep-alive\n\n"
        time.sleep(0.5)


class JobEventStreamView(APIView):
    content_negotiation_class = AlwaysJson

    @extend_schema(
        operation_id="fine_tuning_jobs_events_stream",
        parameters=[
            OpenApiParameter(
                "Last-Event-ID",
                int,
                OpenApiParameter.HEADER,
                description="Resume after this event (its `seq`); sent by EventSource on reconnect.",
            ),
            OpenApiParameter("last_event_id", int, description="Same as the Last-Event-ID header."),
        ],
        responses={
            (200, "text/event-stream"): OpenApiResponse(
                {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string"},
                        "event": {"type": "string", "enum": ["fine_tuning.job.event", "end"]},
                        "data": {"type": "string"},
                        "retry": {"type": "integer"},
                    },
                },
                description="Server-Sent Events: `id` is the event's seq, `data` an event object; "
                "a final `end` event carries the job's status.",
            )
        },
    )
    def get(self, request: Request, job_id: str) -> StreamingHttpResponse:
        job = _job_or_404(request, job_id)
        raw = (
            request.headers.get("Last-Event-ID") or request.query_params.get("last_event_id") or "0"
        )
        if not raw.isdigit():
            raise InvalidInput(
                "Last-Event-ID must be the integer id of an event from this stream.",
                param="Last-Event-ID",
            )
        stream = job_event_stream(
            job.id, after_seq=int(raw), max_seconds=settings.PARTAGE_SSE_MAX_SECONDS
        )
        response = StreamingHttpResponse(stream, content_type="text/event-stream")
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"
        return response


class JobCheckpointsView(APIView):
    @extend_schema(
        operation_id="fine_tuning_jobs_checkpoints_list",
        parameters=LIST_PARAMETERS,
        responses=schema.CheckpointList,
    )
    def get(self, request: Request, job_id: str) -> Response:
        job = _job_or_404(request, job_id)
        checkpoints = selectors.checkpoints_for_job(job).order_by("-step")

        def cursor(queryset: Any, after: str) -> Any:
            step = after.rsplit("-", 1)[-1]
            return queryset.filter(step__lt=int(step)) if step.isdigit() else None

        return Response(
            page(
                request,
                checkpoints,
                checkpoint_object,
                id_of=lambda c: c.public_id,
                cursor=cursor,
                default_limit=10,
            )
        )


def _fine_tuned_model(job: FineTuningJob) -> dict[str, Any]:
    return {
        "id": job.fine_tuned_model,
        "object": "model",
        "created": unix(job.finished_at),
        "owned_by": job.organization.public_id,
    }


class ModelListView(APIView):
    @extend_schema(operation_id="models_list", responses=schema.ModelList)
    def get(self, request: Request) -> Response:
        data = [model_object(entry) for entry in selectors.base_models()]
        finished = selectors.fine_tuned_models_for_org(org_of(request)).order_by("-finished_at")
        data.extend(_fine_tuned_model(job) for job in finished[:100])
        return Response({"object": "list", "data": data, "has_more": False})


class ModelDetailView(APIView):
    @extend_schema(operation_id="models_retrieve", responses=schema.ModelObject)
    def get(self, request: Request, model_id: str) -> Response:
        entry = selectors.base_model_get(model_id)
        if entry is not None:
            return Response(model_object(entry))
        job = (
            selectors.fine_tuned_models_for_org(org_of(request))
            .filter(fine_tuned_model=model_id)
            .first()
        )
        if job is None:
            raise NotFound(f"No model {model_id!r}.", param="model")
        return Response(_fine_tuned_model(job))


def not_found(request: HttpRequest, unmatched: str = "") -> JsonResponse:
    """Unknown /v1 paths answer in the one error shape, not Django's HTML page."""
    return JsonResponse(
        error_body(
            f"Unknown API route: {request.method} {request.path}. The routes are listed at "
            "/v1/openapi.json and /v1/docs.",
            type_="invalid_request_error",
            code="unknown_url",
        ),
        status=404,
    )


def bench_bare(request: HttpRequest) -> JsonResponse:
    """Plain Django JSON views, the baselines of benchmarks/api_bench.py; off unless enabled.

    `?shape=constant` answers a constant; `?shape=job&id=…` and `?shape=list&org=<slug>` do the
    same database read and rendering as the API, without authentication, DRF or rate limits.
    """
    if not settings.PARTAGE_API_BENCH_VIEW:
        return not_found(request)
    shape = request.GET.get("shape", "constant")
    jobs = FineTuningJob.objects.select_related("organization").defer("manifest")
    if shape == "job":
        job = jobs.filter(pk=request.GET.get("id", "")).first()
        return JsonResponse(job_object(job) if job else {}, status=200 if job else 404)
    if shape == "list":
        page_of = list(jobs.filter(organization__slug=request.GET.get("org", ""))[:100])
        return JsonResponse({"object": "list", "data": [job_object(j) for j in page_of]})
    return JsonResponse({"object": "bench", "ok": True, "time": int(time.time())})
