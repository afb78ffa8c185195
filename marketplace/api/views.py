"""The /v1 partner API, first version: files, fine-tuning jobs, events, checkpoints, models."""

from __future__ import annotations

from typing import Any

from django.http import FileResponse
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from marketplace.api.pagination import page
from marketplace.api.representations import (
    checkpoint_object,
    event_object,
    file_object,
    job_object,
    model_object,
    unix,
)
from marketplace.errors import InvalidInput, NotFound
from marketplace.finetuning import selectors, services


def org_of(request: Request) -> Any:
    return request.user.organization


class FileUploadSerializer(serializers.Serializer):
    file = serializers.FileField()
    purpose = serializers.CharField()


class FileListView(APIView):
    def get(self, request: Request) -> Response:
        files = selectors.files_for_org(org_of(request))
        purpose = request.query_params.get("purpose")
        if purpose:
            files = files.filter(purpose=purpose)
        return Response(page(request, files, file_object))

    def post(self, request: Request) -> Response:
        if "file" not in request.FILES:
            raise InvalidInput("Send the training file as multipart field 'file'.", param="file")
        upload = request.FILES["file"]
        file = services.file_create(
            organization=org_of(request),
            stream=upload,
            filename=upload.name or "training.jsonl",
            purpose=request.data.get("purpose", ""),
            size=upload.size,
        )
        return Response(file_object(file), status=200)


class FileDetailView(APIView):
    def _file(self, request: Request, file_id: str) -> Any:
        file = selectors.files_for_org(org_of(request)).filter(pk=file_id).first()
        if file is None:
            raise NotFound(f"No file with id {file_id!r}.", param="file_id")
        return file

    def get(self, request: Request, file_id: str) -> Response:
        return Response(file_object(self._file(request, file_id)))

    def delete(self, request: Request, file_id: str) -> Response:
        file = services.file_delete(organization=org_of(request), file_id=file_id)
        return Response({"id": file.id, "object": "file", "deleted": True})


class FileContentView(FileDetailView):
    def get(self, request: Request, file_id: str) -> FileResponse:  # type: ignore[override]
        file = self._file(request, file_id)
        content_type = "application/gzip" if file.purpose == "fine-tune-results" else "application/jsonl"
        return FileResponse(file.content.open("rb"), content_type=content_type,
                            as_attachment=True, filename=file.filename)


class JobCreateSerializer(serializers.Serializer):
    model = serializers.CharField()
    training_file = serializers.CharField()
    validation_file = serializers.CharField(required=False, allow_null=True)
    hyperparameters = serializers.DictField(required=False, allow_null=True)
    method = serializers.DictField(required=False, allow_null=True)
    suffix = serializers.CharField(required=False, allow_null=True, allow_blank=True)
    seed = serializers.IntegerField(required=False, allow_null=True, min_value=0, max_value=2**31 - 1)
    metadata = serializers.DictField(child=serializers.CharField(max_length=512), required=False, allow_null=True)
    integrations = serializers.ListField(required=False, allow_null=True)
    # Partage's own options (extra_body in the OpenAI SDK).
    lora = serializers.DictField(required=False, allow_null=True)
    gpu_flavor = serializers.CharField(required=False, allow_blank=True, default="")
    gpu_count = serializers.IntegerField(required=False, min_value=1, max_value=64, default=1)
    max_cost = serializers.DecimalField(required=False, allow_null=True, max_digits=12, decimal_places=2)
    residency = serializers.DictField(required=False, allow_null=True)
    priority = serializers.IntegerField(required=False, default=0, min_value=-100, max_value=100)


def _hyperparameters(data: dict[str, Any]) -> dict[str, Any] | None:
    method = data.get("method") or {}
    if method:
        kind = method.get("type", "supervised")
        if kind != "supervised":
            raise InvalidInput(f"method.type {kind!r} is not supported; use 'supervised'.", param="method.type")
        nested = (method.get("supervised") or {}).get("hyperparameters")
        if nested:
            return nested
    return data.get("hyperparameters")


class JobListView(APIView):
    def get(self, request: Request) -> Response:
        jobs = selectors.jobs_for_org(org_of(request))
        return Response(page(request, jobs, job_object))

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
            gpu_flavor=data.get("gpu_flavor", ""),
            gpu_count=data.get("gpu_count", 1),
            max_cost=data.get("max_cost"),
            residency=data.get("residency"),
            priority=data.get("priority", 0),
            created_by_key=request.auth,
        )
        return Response(job_object(job), status=200)


class JobDetailView(APIView):
    def get(self, request: Request, job_id: str) -> Response:
        job = selectors.job_for_org(org_of(request), job_id)
        if job is None:
            raise NotFound(f"No fine-tuning job with id {job_id!r}.", param="job_id")
        return Response(job_object(job))


class JobActionView(APIView):
    action_name = ""

    def post(self, request: Request, job_id: str) -> Response:
        action = {
            "cancel": services.job_cancel,
            "pause": services.job_pause,
            "resume": services.job_resume,
        }[self.action_name]
        job = action(organization=org_of(request), job_id=job_id)
        refreshed = selectors.job_for_org(org_of(request), job.id)
        return Response(job_object(refreshed or job))


def _job_or_404(request: Request, job_id: str) -> Any:
    job = selectors.job_for_org(org_of(request), job_id)
    if job is None:
        raise NotFound(f"No fine-tuning job with id {job_id!r}.", param="job_id")
    return job


class JobEventsView(APIView):
    def get(self, request: Request, job_id: str) -> Response:
        job = _job_or_404(request, job_id)
        events = selectors.events_for_job(job).order_by("-seq")

        def cursor(queryset: Any, after: str) -> Any:
            seq = after.rsplit("-", 1)[-1]
            return queryset.filter(seq__lt=int(seq)) if seq.isdigit() else None

        return Response(page(request, events, event_object, id_of=lambda e: e.public_id, cursor=cursor))


class JobCheckpointsView(APIView):
    def get(self, request: Request, job_id: str) -> Response:
        job = _job_or_404(request, job_id)
        checkpoints = selectors.checkpoints_for_job(job).order_by("-step")

        def cursor(queryset: Any, after: str) -> Any:
            step = after.rsplit("-", 1)[-1]
            return queryset.filter(step__lt=int(step)) if step.isdigit() else None

        return Response(
            page(request, checkpoints, checkpoint_object, id_of=lambda c: c.public_id, cursor=cursor,
                 default_limit=10)
        )


class ModelListView(APIView):
    def get(self, request: Request) -> Response:
        data = [model_object(entry) for entry in selectors.base_models()]
        for job in selectors.fine_tuned_models_for_org(org_of(request)).order_by("-finished_at")[:100]:
            data.append({"id": job.fine_tuned_model, "object": "model", "created": unix(job.finished_at),
                         "owned_by": job.organization.public_id})
        return Response({"object": "list", "data": data, "has_more": False})


class ModelDetailView(APIView):
    def get(self, request: Request, model_id: str) -> Response:
        entry = selectors.base_model_get(model_id)
        if entry is not None:
            return Response(model_object(entry))
        job = selectors.fine_tuned_models_for_org(org_of(request)).filter(fine_tuned_model=model_id).first()
        if job is None:
            raise NotFound(f"No model {model_id!r}.", param="model")
        return Response({"id": job.fine_tuned_model, "object": "model", "created": unix(job.finished_at),
                         "owned_by": job.organization.public_id})
