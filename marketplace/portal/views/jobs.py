"""Fine-tuning jobs: launch (with a review step showing cost and start), watch, cancel, download."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import messages
from django.http import (
    FileResponse,
    Http404,
    HttpRequest,
    HttpResponse,
    JsonResponse,
    StreamingHttpResponse,
)
from django.shortcuts import redirect
from django.views.decorators.http import require_POST

from marketplace.errors import InvalidInput, PartageError
from marketplace.finetuning import selectors as ft
from marketplace.finetuning import services as ft_services
from marketplace.finetuning.models import FineTuningJob, JobEvent
from marketplace.finetuning.states import TERMINAL, public_status
from marketplace.inference import services as inference
from marketplace.inference.backends import ChatRequest
from marketplace.inference.shapes import completion_events, completion_object
from marketplace.portal import estimates
from marketplace.portal.charts import loss_chart
from marketplace.portal.context import error_message, org_required, page
from marketplace.portal.forms import LaunchForm
from marketplace.portal.job_status import job_progress_label, job_status_message
from marketplace.portal.logs import log_for_user

METRIC_POINTS_PER_POLL = 2000
ANNOUNCEMENTS_PER_POLL = 20


def _job_or_404(request: HttpRequest, job_id: str) -> FineTuningJob:
    job = ft.job_for_org(request.org, job_id)  # type: ignore[attr-defined]
    if job is None:
        raise Http404("No such job in your organization.")
    return job


def _launch_form(request: HttpRequest, data: Any = None) -> LaunchForm:
    org = request.org  # type: ignore[attr-defined]
    files = ft.files_for_org(org).filter(purpose="fine-tune", status="processed")
    initial = {"training_file": request.GET.get("file", "")}
    return LaunchForm(
        data,
        initial=initial,
        models=[(m["id"], m["id"]) for m in ft.base_models()],
        files=[(f.id, f"{f.filename} · {f.line_count} examples · {f.id}") for f in files],
        flavors=estimates.flavor_choices(),
    )


def _checked(form: LaunchForm) -> bool:
    """Form shape first, then the finetuning service's own rules for hyperparameters and LoRA."""
    if not form.is_valid():
        return False
    try:
        ft_services.normalize_hyperparameters(form.hyperparameters())
        ft_services.normalize_lora(form.lora())
    except InvalidInput as e:
        _error_shown(form, e)
    return form.is_valid()


def _fits(form: LaunchForm, org: Any) -> bool:
    """Whether the job could ever run as asked (flavor, GPUs), said before the review; on
    confirm, job_create checks it again itself."""
    try:
        ft_services.job_fit_check(
            organization=org,
            gpu_flavor=form.cleaned_data["gpu_flavor"],
            gpu_count=form.cleaned_data["gpu_count"],
        )
    except InvalidInput as e:
        _error_shown(form, e)
        return False
    return True


def _error_shown(form: LaunchForm, error: PartageError) -> None:
    """A service's error on the form: next to its field when it names one."""
    form.add_error(error.param if error.param in form.fields else None, error.message)


@org_required
def job_list(request: HttpRequest) -> HttpResponse:
    jobs = ft.jobs_for_org(request.org)  # type: ignore[attr-defined]
    return page(request, "portal/jobs/list.html", {"jobs": jobs[:100]})


@org_required
def job_launch(request: HttpRequest) -> HttpResponse:
    org = request.org  # type: ignore[attr-defined]
    form = _launch_form(request, request.POST or None)
    action = request.POST.get("action", "")
    if action == "edit":  # back from the review, with the settings as they were
        return page(request, "portal/jobs/launch.html", {"form": form})
    if request.method == "POST" and _checked(form):
        if action == "confirm":
            data = form.cleaned_data
            try:
                job = ft_services.job_create(
                    organization=org,
                    model=data["model"],
                    training_file=data["training_file"],
                    validation_file=data["validation_file"] or None,
                    hyperparameters=form.hyperparameters(),
                    lora=form.lora(),
                    suffix=data["suffix"] or None,
                    gpu_flavor=data["gpu_flavor"],
                    gpu_count=data["gpu_count"],
                    max_cost=data["max_cost"],
                    created_by=request.user,  # type: ignore[arg-type]
                )
            except PartageError as e:
                _error_shown(form, e)
            else:
                messages.success(request, f"Job {job.id} launched.")
                return redirect("portal:job", job_id=job.id)
        elif _fits(form, org):
            estimate = estimates.launch_estimate(org=org, form=form)
            return page(request, "portal/jobs/review.html", {"form": form, "estimate": estimate})
    status = 400 if request.method == "POST" else 200
    return page(request, "portal/jobs/launch.html", {"form": form}, status=status)


PEFT_SNIPPET = """\
import tarfile
from peft import PeftModel
from transformers import AutoModelForCausalLM

tarfile.open("{archive}").extractall("adapter")
base = AutoModelForCausalLM.from_pretrained("{base}")
model = PeftModel.from_pretrained(base, "adapter")
"""


@org_required
def job_detail(request: HttpRequest, job_id: str) -> HttpResponse:
    job = _job_or_404(request, job_id)
    return page(request, "portal/jobs/detail.html", _detail_context(job))


def _detail_context(job: FineTuningJob, **extra: Any) -> dict[str, Any]:
    events = ft.events_for_job(job).exclude(type=JobEvent.Type.METRICS)[:60]
    train, valid, _last = _loss_points(job, after=0)
    context = {
        "job": job,
        "public_status": public_status(job.status),
        "status_message": job_status_message(job),
        "progress_label": job_progress_label(job),
        "loss_chart": loss_chart(train, valid),
        "finished": job.status in TERMINAL,
        "events": events,
        "attempts": [(a, log_for_user(a.logs)) for a in ft.attempts_for_job(job)],
        "checkpoints": ft.checkpoints_for_job(job),
        "manifest_json": json.dumps(job.manifest, indent=2) if job.manifest else "",
        "peft_snippet": PEFT_SNIPPET.format(
            archive=job.result_file.filename if job.result_file else "adapter.tar.gz",
            base=job.model,
        ),
        "cost": estimates.job_cost(job=job),
        # The page's cursor in the outbox: what the live endpoint announces after it is new.
        "announced_after": _last_announcement(job),
        "evaluation": ft.job_eval_report(job),
        "chat_max_tokens": CHAT_MAX_TOKENS,
    }
    return {**context, **extra}


CHAT_MAX_TOKENS = 128


@require_POST
@org_required
def job_chat(request: HttpRequest, job_id: str) -> HttpResponse | StreamingHttpResponse:
    """The job page's chat box: the same service and OpenAI shapes as POST /v1/chat/completions.
    With JavaScript the answer streams (Accept: text/event-stream); without, the form posts and
    the page comes back with the answer."""
    job = _job_or_404(request, job_id)
    question = (request.POST.get("message") or "").strip()
    streaming = "text/event-stream" in request.headers.get("Accept", "")
    try:
        if not question:
            raise InvalidInput("Type a message for the model first.", param="message")
        completion = inference.chat_completion_start(
            organization=request.org,  # type: ignore[attr-defined]
            # before success the name is not stored: the would-be name gets "not ready"
            model=job.fine_tuned_model
            or f"ft:{job.model}:{job.organization.slug}:{job.id.removeprefix('ftjob-')[:8]}",
            request=ChatRequest(
                messages=[{"role": "user", "content": question[:4000]}],
                max_tokens=CHAT_MAX_TOKENS,
                temperature=0.0,
            ),
        )
    except PartageError as e:
        if streaming:
            return JsonResponse(
                {
                    "error": {
                        "message": e.message,
                        "type": e.error_type,
                        "param": e.param,
                        "code": e.code,
                    }
                },
                status=e.http_status,
            )
        error_message(request, e)
        return page(
            request,
            "portal/jobs/detail.html",
            _detail_context(job, chat_question=question),
            status=e.http_status,
        )
    if streaming:
        response = StreamingHttpResponse(
            completion_events(completion, include_usage=True), content_type="text/event-stream"
        )
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"
        return response
    answer = completion_object(completion)
    return page(
        request,
        "portal/jobs/detail.html",
        _detail_context(
            job,
            chat_question=question,
            chat_answer=answer["choices"][0]["message"]["content"],
            chat_usage=answer["usage"],
        ),
    )


def _last_announcement(job: FineTuningJob) -> int:
    last = ft.job_announcements(job).order_by("-pk").values_list("pk", flat=True).first()
    return last or 0


def _int_param(request: HttpRequest, name: str) -> int:
    try:
        return max(0, int(request.GET.get(name, "0")))
    except ValueError:
        return 0


def _progress(job: FineTuningJob) -> dict[str, Any]:
    progress = job.progress or {}
    step, total = progress.get("step"), progress.get("total_steps")
    percent = None
    if isinstance(step, int) and isinstance(total, int) and total > 0:
        percent = round(100 * step / total, 1)
    if job.status == "succeeded":
        percent = 100.0
    return {
        "step": step,
        "total_steps": total,
        "percent": percent,
        "eta_s": progress.get("eta_s"),
        "train_loss": progress.get("train_loss"),
        "tokens_per_s": progress.get("tokens_per_s"),
        "trained_tokens": progress.get("trained_tokens"),
    }


def _loss_points(
    job: FineTuningJob, *, after: int
) -> tuple[list[tuple[float, float]], list[tuple[float, float]], int]:
    """Training and validation loss by step, from the metrics events after sequence `after`."""
    metrics = (
        ft.events_for_job(job)
        .filter(type=JobEvent.Type.METRICS, seq__gt=after)
        .order_by("seq")
        .values_list("seq", "data")[:METRIC_POINTS_PER_POLL]
    )
    train: list[tuple[float, float]] = []
    valid: list[tuple[float, float]] = []
    last_seq = after
    for seq, data in metrics:
        last_seq = seq
        data = data or {}
        step = data.get("step")
        if not isinstance(step, int | float):
            continue
        if isinstance(data.get("train_loss"), int | float):
            train.append((step, data["train_loss"]))
        if isinstance(data.get("valid_loss"), int | float):
            valid.append((step, data["valid_loss"]))
    return train, valid, last_seq


@org_required
def job_live(request: HttpRequest, job_id: str) -> JsonResponse:
    """What the job page polls: state, progress, new loss points after `after`, recent events."""
    job = _job_or_404(request, job_id)
    after = _int_param(request, "after")
    train, valid, last_seq = _loss_points(job, after=after)
    events = [
        {"seq": e.seq, "at": e.created_at.isoformat(), "level": e.level, "message": e.message}
        for e in ft.events_for_job(job).exclude(type=JobEvent.Type.METRICS)[:15]
    ]
    # The outbox after the page's cursor: state changes and new checkpoints (the page reloads
    # on a checkpoint, to list it).
    announced_after = _int_param(request, "announced_after")
    announcements = []
    for event in ft.job_announcements(job, after=announced_after)[:ANNOUNCEMENTS_PER_POLL]:
        announced_after = event.pk
        announcements.append(
            {"type": event.event_type, "at": event.occurred_at.isoformat(), "id": event.subject_id}
        )
    return JsonResponse(
        {
            "id": job.id,
            "status": job.status,
            "public_status": public_status(job.status),
            "status_message": job_status_message(job),
            "progress_label": job_progress_label(job),
            "finished": job.status in TERMINAL,
            "pending_reason": job.pending_reason,
            "estimated_start": job.estimated_start.isoformat() if job.estimated_start else None,
            "progress": _progress(job),
            "train": train,
            "valid": valid,
            "after": last_seq,
            "events": events,
            "log": _live_log(job),
            "announcements": announcements,
            "announced_after": announced_after,
        }
    )


LIVE_LOG_CHARS = 20_000


def _live_log(job: FineTuningJob) -> str:
    """The latest attempt's log as the page shows it (cleaned), its last LIVE_LOG_CHARS."""
    attempt = ft.attempts_for_job(job).order_by("-number").first()
    return log_for_user(attempt.logs)[-LIVE_LOG_CHARS:] if attempt is not None else ""


@require_POST
@org_required
def job_cancel(request: HttpRequest, job_id: str) -> HttpResponse:
    job = _job_or_404(request, job_id)
    try:
        ft_services.job_cancel(organization=request.org, job_id=job.id)  # type: ignore[attr-defined]
    except PartageError as e:
        error_message(request, e)
    else:
        messages.success(request, "Cancelling: the trainer is being stopped.")
    return redirect("portal:job", job_id=job.id)


@org_required
def job_attempt_log(request: HttpRequest, job_id: str, number: int) -> HttpResponse:
    """The attempt's log exactly as the trainer wrote it (the page shows a cleaned copy)."""
    job = _job_or_404(request, job_id)
    attempt = ft.attempts_for_job(job).filter(number=number).first()
    if attempt is None:
        raise Http404("This job has no such attempt.")
    response = HttpResponse(attempt.logs, content_type="text/plain; charset=utf-8")
    response["Content-Disposition"] = f'inline; filename="{job.id}-attempt-{number}.log"'
    return response


@org_required
def job_adapter(request: HttpRequest, job_id: str) -> FileResponse:
    job = _job_or_404(request, job_id)
    if job.result_file is None:
        raise Http404("This job has no adapter yet.")
    return FileResponse(
        job.result_file.content.open("rb"),
        content_type="application/gzip",
        as_attachment=True,
        filename=job.result_file.filename,
    )


@org_required
def job_manifest(request: HttpRequest, job_id: str) -> HttpResponse:
    job = _job_or_404(request, job_id)
    if not job.manifest:
        raise Http404("This job has no manifest yet.")
    response = JsonResponse(job.manifest, json_dumps_params={"indent": 2})
    response["Content-Disposition"] = f'attachment; filename="{job.id}-manifest.json"'
    return response
