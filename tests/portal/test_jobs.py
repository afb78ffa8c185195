"""Data and jobs in the portal: the validation report, launch with review, the live endpoint."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from marketplace.finetuning.models import File, FineTuningJob, JobEvent
from marketplace.finetuning.services import job_event_add
from tests.conftest import chat_lines, jsonl
from tests.portal.conftest import make_file, make_job

pytestmark = pytest.mark.django_db


def test_upload_reports_every_bad_line_and_stores_nothing(alice_web: Client) -> None:
    lines = [json.dumps(r) for r in chat_lines(6)]
    lines[0] = "[1, 2]"
    lines[3] = '{"prompt": "a", "completion": "b"}'
    lines[5] = "{broken"
    content = ("\n".join(lines) + "\n").encode()
    response = alice_web.post("/data/", {"file": SimpleUploadedFile("t.jsonl", content)})
    assert response.status_code == 400
    report = response.context["rejected"]["report"]
    found = [(e["line"], e["code"]) for e in report["errors"]]
    assert (1, "not_an_object") in found and (6, "invalid_json") in found
    assert (4, "mixed_formats") in found
    body = response.content.decode()
    for line, _code in found:  # every reported line is on the page
        assert f'data-line="{line}"' in body
    assert "{broken" in body
    assert not File.objects.exists()


def test_a_good_upload_shows_its_report(alice_web: Client) -> None:
    response = alice_web.post(
        "/data/", {"file": SimpleUploadedFile("t.jsonl", jsonl(chat_lines(5)))}, follow=True
    )
    assert response.status_code == 200
    assert "All 5 lines are valid training examples" in response.content.decode()
    assert File.objects.get().line_count == 5


LAUNCH = {
    "model": "partage/tiny-llama",
    "n_epochs": 2,
    "batch_size": 4,
    "learning_rate_multiplier": 1.0,
    "max_seq_length": 256,
    "lora_r": 8,
    "lora_alpha": 16,
    "lora_dropout": 0.05,
    "target_modules": "q_proj, v_proj",
    "gpu_count": 1,
    "suffix": "demo",
}


def test_launch_reviews_before_creating_the_job(
    alice_web: Client, org_a: Any, django_capture_on_commit_callbacks: Any
) -> None:
    file = make_file(org_a)
    form = {**LAUNCH, "training_file": file.id}
    review = alice_web.post("/jobs/new/", {**form, "action": "review"})
    assert review.status_code == 200
    body = review.content.decode()
    assert "Review and confirm" in body and 'id="estimate-cost"' in body
    assert review.context["estimate"].cost is not None
    assert not FineTuningJob.objects.exists()
    back = alice_web.post("/jobs/new/", {**form, "action": "edit"})
    assert "Launch a fine-tuning job" in back.content.decode()
    assert back.context["form"]["suffix"].value() == "demo"
    with django_capture_on_commit_callbacks(execute=False):
        confirmed = alice_web.post("/jobs/new/", {**form, "action": "confirm"})
    job = FineTuningJob.objects.get()
    assert confirmed["Location"] == f"/jobs/{job.id}/"
    assert job.lora["target_modules"] == ["q_proj", "v_proj"]
    assert job.hyperparameters["n_epochs"] == 2 and job.suffix == "demo"
    assert job.created_by.username == "alice"


def test_launch_shows_the_service_s_own_errors(alice_web: Client, org_a: Any) -> None:
    file = make_file(org_a)
    response = alice_web.post(
        "/jobs/new/", {**LAUNCH, "training_file": file.id, "lora_r": 200, "action": "review"}
    )
    assert response.status_code == 400
    assert "lora.r must be an integer from 1 to 64" in response.content.decode()


def test_launch_refuses_another_org_s_file(alice_web: Client, org_b: Any) -> None:
    file = make_file(org_b)
    response = alice_web.post(
        "/jobs/new/", {**LAUNCH, "training_file": file.id, "action": "confirm"}
    )
    assert response.status_code == 400
    assert not FineTuningJob.objects.exists()


def test_live_endpoint_gives_progress_and_new_loss_points(
    alice_web: Client, org_a: Any, django_capture_on_commit_callbacks: Any
) -> None:
    job = make_job(org_a, django_capture_on_commit_callbacks)
    for step, loss in [(1, 3.0), (2, 2.5), (3, 2.0)]:
        job_event_add(
            job_id=job.id,
            message=f"step {step}",
            type=JobEvent.Type.METRICS,
            data={"step": step, "total_steps": 8, "train_loss": loss},
        )
    job_event_add(
        job_id=job.id,
        message="valid",
        type=JobEvent.Type.METRICS,
        data={"step": 3, "valid_loss": 2.2},
    )
    FineTuningJob.objects.filter(pk=job.pk).update(
        progress={"step": 3, "total_steps": 8, "train_loss": 2.0, "eta_s": 50}
    )
    data = alice_web.get(f"/jobs/{job.id}/live/").json()
    assert data["progress"]["percent"] == 37.5 and data["progress"]["eta_s"] == 50
    assert data["train"] == [[1, 3.0], [2, 2.5], [3, 2.0]]
    assert data["valid"] == [[3, 2.2]]
    assert data["public_status"] == "queued" and data["finished"] is False
    # Only new points after the last one seen.
    again = alice_web.get(f"/jobs/{job.id}/live/?after={data['after']}").json()
    assert again["train"] == [] and again["valid"] == []
    job_event_add(
        job_id=job.id,
        message="step 4",
        type=JobEvent.Type.METRICS,
        data={"step": 4, "total_steps": 8, "train_loss": 1.5},
    )
    newer = alice_web.get(f"/jobs/{job.id}/live/?after={data['after']}").json()
    assert newer["train"] == [[4, 1.5]]


def test_cancel_a_queued_job(
    alice_web: Client, org_a: Any, django_capture_on_commit_callbacks: Any
) -> None:
    job = make_job(org_a, django_capture_on_commit_callbacks)
    with django_capture_on_commit_callbacks(execute=False):
        response = alice_web.post(f"/jobs/{job.id}/cancel/", follow=True)
    assert "Cancelling" in response.content.decode()
    job.refresh_from_db()
    assert job.status == "cancelled"
    # Cancelling twice explains itself instead of failing.
    response = alice_web.post(f"/jobs/{job.id}/cancel/", follow=True)
    assert "nothing to cancel" in response.content.decode()


def test_review_prices_the_job_on_the_cheapest_pool_that_fits(
    alice_web: Client, org_a: Any
) -> None:
    from decimal import Decimal

    from marketplace.billing.selectors import cost_estimate
    from marketplace.quotas.quota_book import default_max_job_hours
    from tests.capacity import factories

    factories.pool(gpus=8, price="2.50", name="Paris H100")
    factories.pool(gpus=1, price="1.00", name="Tiny H100")  # too small for 2 GPUs
    file = make_file(org_a)
    form = {**LAUNCH, "training_file": file.id, "gpu_flavor": "h100-80g", "gpu_count": 2}
    estimate = alice_web.post("/jobs/new/", {**form, "action": "review"}).context["estimate"]
    hours = default_max_job_hours()
    expected = cost_estimate(
        org_a, gpu_flavor="h100-80g", gpu_count=2, duration_seconds=int(hours * 3600)
    )
    assert expected.price_per_gpu_hour == Decimal("2.5000")
    assert estimate.cost == expected.amount + expected.vat
    assert expected.amount == Decimal("2.50") * 2 * hours
    assert estimate.start_now and "Paris H100" in estimate.start_detail
    capped = alice_web.post("/jobs/new/", {**form, "max_cost": "30", "action": "review"})
    assert capped.context["estimate"].cost == Decimal("30")
    assert "spending cap" in capped.context["estimate"].cost_detail


def test_review_refuses_a_job_that_could_never_run_next_to_the_field(
    alice_web: Client, org_a: Any
) -> None:
    from tests.capacity import factories

    factories.pool(gpus=8, name="Paris H100")
    file = make_file(org_a)
    form = {**LAUNCH, "training_file": file.id, "gpu_flavor": "h100-80g", "gpu_count": 16}
    response = alice_web.post("/jobs/new/", {**form, "action": "review"})
    assert response.status_code == 400
    errors = response.context["form"].errors
    assert errors["gpu_count"] == [
        "No H100 pool in eu-west-paris has 16 GPUs (the largest has 8); ask for 8 or fewer."
    ], errors
    assert "ask for 8 or fewer" in response.content.decode()
    assert not FineTuningJob.objects.exists()
    review = alice_web.post("/jobs/new/", {**form, "gpu_count": 8, "action": "review"})
    assert review.status_code == 200 and review.context["estimate"].start_now


def test_live_endpoint_announces_what_the_outbox_holds_after_the_page_s_cursor(
    alice_web: Client, org_a: Any, django_capture_on_commit_callbacks: Any
) -> None:
    """The page renders its cursor in the outbox; the live endpoint then announces the job's
    new events (a checkpoint, on which the page reloads to list it), and nothing of others."""
    import re

    from marketplace.events.services import event_record

    job = make_job(org_a, django_capture_on_commit_callbacks)
    other = make_job(org_a, django_capture_on_commit_callbacks)
    body = alice_web.get(f"/jobs/{job.id}/").content.decode()
    cursor = int(re.search(r'data-announced-after="(\d+)"', body).group(1))
    assert cursor > 0  # the job was announced as queued when it was created

    event_record(
        event_type="fine_tuning.job.checkpoint.created",
        organization_id=org_a.pk,
        subject_id="ftckpt-1",
        data={"fine_tuning_job_id": job.id},
    )
    event_record(
        event_type="fine_tuning.job.checkpoint.created",
        organization_id=org_a.pk,
        subject_id="ftckpt-2",
        data={"fine_tuning_job_id": other.id},
    )
    data = alice_web.get(f"/jobs/{job.id}/live/?announced_after={cursor}").json()
    assert [(a["type"], a["id"]) for a in data["announcements"]] == [
        ("fine_tuning.job.checkpoint.created", "ftckpt-1")
    ]
    assert data["announced_after"] > cursor
    again = alice_web.get(f"/jobs/{job.id}/live/?announced_after={data['announced_after']}")
    assert again.json()["announcements"] == []


def test_job_page_shows_state_pending_reason_events_checkpoints_and_logs(
    alice_web: Client, org_a: Any, django_capture_on_commit_callbacks: Any
) -> None:
    from datetime import timedelta

    from django.utils import timezone

    from marketplace.finetuning.models import Checkpoint, JobAttempt

    job = make_job(org_a, django_capture_on_commit_callbacks)
    start = (timezone.now() + timedelta(hours=2)).replace(second=0, microsecond=0)
    FineTuningJob.objects.filter(pk=job.pk).update(
        pending_reason="waiting for 1 x h100-80g: all 8 GPUs of Paris H100 are busy",
        estimated_start=start,
    )
    body = alice_web.get(f"/jobs/{job.id}/").content.decode()
    assert "waiting for 1 x h100-80g: all 8 GPUs of Paris H100 are busy" in body
    assert f'datetime="{start.isoformat()}"' in body  # estimated start, machine-readable
    assert "Cancel job" in body and "Download adapter" not in body
    assert "Validated training file; job queued" in body  # the event log

    attempt = JobAttempt.objects.create(
        job=job, number=1, executor="local", name="a1", logs="step 10 loss 1.234\nsaved adapter"
    )
    Checkpoint.objects.create(
        job=job,
        attempt=attempt,
        step=10,
        metrics={"train_loss": 1.234, "valid_loss": 1.5},
        archive="checkpoints/x.tar.gz",
        sha256="0" * 64,
        bytes=10,
    )
    adapter = make_file(org_a, name="adapter.tar.gz")
    FineTuningJob.objects.filter(pk=job.pk).update(
        status="succeeded", result_file=adapter, manifest={"base_model": {"id": job.model}}
    )
    body = alice_web.get(f"/jobs/{job.id}/").content.decode()
    assert '<td class="num">10</td><td class="num">1.2340</td><td class="num">1.5000</td>' in body
    assert "step 10 loss 1.234" in body  # the attempt's logs
    assert f'href="/jobs/{job.id}/adapter/"' in body and f'href="/jobs/{job.id}/manifest/"' in body
    assert "PeftModel.from_pretrained(base, &quot;adapter&quot;)" in body
    assert "Cancel job" not in body
    manifest = alice_web.get(f"/jobs/{job.id}/manifest/")
    assert manifest.json() == {"base_model": {"id": job.model}}


def test_a_running_job_says_one_thing_in_one_place(
    alice_web: Client, org_a: Any, django_capture_on_commit_callbacks: Any
) -> None:
    """Seconds after a job starts: no 'waiting' bar, no 'Pending reason: —', no 'No attempt yet',
    and the launch flash does not claim it is still queued."""
    job = make_job(org_a, django_capture_on_commit_callbacks)
    FineTuningJob.objects.filter(pk=job.pk).update(status="running", progress={})
    body = alice_web.get(f"/jobs/{job.id}/").content.decode()
    assert "Training has started; the first progress report arrives within a minute." in body
    assert "waiting" not in body.lower() and "Pending reason" not in body
    assert "No attempt yet" not in body and "is queued" not in body
    assert '<span id="progress-percent">starting</span>' in body
    live = alice_web.get(f"/jobs/{job.id}/live/").json()
    assert live["status_message"].startswith("Training has started")
    assert live["progress_label"] == "starting"
    FineTuningJob.objects.filter(pk=job.pk).update(
        progress={"step": 6, "total_steps": 24, "eta_s": 10800}
    )
    live = alice_web.get(f"/jobs/{job.id}/live/").json()
    assert live["status_message"] == "Training: step 6 of 24, about 3 h left."


def test_a_queued_job_s_status_line_is_its_pending_reason(
    alice_web: Client, org_a: Any, django_capture_on_commit_callbacks: Any
) -> None:
    job = make_job(org_a, django_capture_on_commit_callbacks)
    FineTuningJob.objects.filter(pk=job.pk).update(
        pending_reason="waiting: no free H100 in EU pools; next free in about 40 min"
    )
    body = alice_web.get(f"/jobs/{job.id}/").content.decode()
    assert "Queued: no free H100 in EU pools; next free in about 40 min." in body
    assert '<span id="progress-percent">waiting</span>' in body


def test_the_loss_chart_and_a_refresh_work_without_javascript(
    alice_web: Client, org_a: Any, django_capture_on_commit_callbacks: Any
) -> None:
    import re

    job = make_job(org_a, django_capture_on_commit_callbacks)
    FineTuningJob.objects.filter(pk=job.pk).update(status="running")
    body = alice_web.get(f"/jobs/{job.id}/").content.decode()
    assert "The loss curve appears when training starts." in body
    assert '<noscript><meta http-equiv="refresh" content="15"></noscript>' in body
    for step, loss in [(1, 3.0), (2, 2.5), (3, 2.0), (4, 1.8)]:
        job_event_add(
            job_id=job.id,
            message=f"step {step}",
            type=JobEvent.Type.METRICS,
            data={"step": step, "total_steps": 8, "train_loss": loss},
        )
    job_event_add(
        job_id=job.id, message="v", type=JobEvent.Type.METRICS, data={"step": 4, "valid_loss": 2.1}
    )
    body = alice_web.get(f"/jobs/{job.id}/").content.decode()
    train = re.search(r'<polyline points="([^"]+)" class="series-train"/>', body)
    assert train is not None
    points = [tuple(map(float, p.split(","))) for p in train.group(1).split()]
    assert len(points) == 4
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    assert xs == sorted(xs) and ys == sorted(ys)  # later steps to the right, lower loss lower
    assert 'class="series-valid"' in body and body.count('class="dot-valid"') == 1
    assert ">step 1<" in body and ">step 4<" in body
    FineTuningJob.objects.filter(pk=job.pk).update(status="succeeded")
    assert 'http-equiv="refresh"' not in alice_web.get(f"/jobs/{job.id}/").content.decode()
