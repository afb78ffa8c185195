"""The official `openai` SDK, unchanged, against a live Partage: files, fine-tuning jobs (create,
watch, checkpoints, pause, resume, cancel), models, the adapter download loaded with peft, and
webhooks (create … rotate, test, a real signed delivery verified with `webhooks.unwrap`).

Celery runs eagerly inside the live server; the trainer is a real local process that trains
the tiny catalog model and calls back over HTTP.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx2
import pytest
from django.conf import settings as django_settings
from openai import OpenAI

from tests.conftest import chat_lines, jsonl, wait_for
from tests.finetuning.adapters import assert_adapter_changes_logits, assert_eval_report, extract

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

TERMINAL = {"succeeded", "failed", "cancelled"}


@pytest.fixture
def sdk(live_callbacks: str, key_a: str, eager_celery: None, settings: Any) -> OpenAI:
    settings.PARTAGE_API_RATE_LIMIT = 0
    return OpenAI(base_url=f"{live_callbacks}/v1", api_key=key_a, max_retries=0, timeout=60)


def _wait_status(sdk: OpenAI, job_id: str, wanted: set[str], timeout: float = 240) -> Any:
    def reached() -> Any:
        job = sdk.fine_tuning.jobs.retrieve(job_id)
        return job if job.status in wanted else None

    try:
        return wait_for(reached, timeout=timeout, interval=1, what=f"job {job_id} to be {wanted}")
    except AssertionError as e:
        from marketplace.finetuning.models import FineTuningJob

        job = FineTuningJob.objects.get(pk=job_id)
        story = [f"{ev.seq} {ev.level} {ev.message}" for ev in job.events.order_by("seq")]
        attempts = [
            (a.number, a.status, a.exit_code, a.reason, a.logs[-1500:]) for a in job.attempts.all()
        ]
        raise AssertionError(
            f"{e}; status={job.status}; events={story[-15:]}; attempts={attempts}"
        ) from None


def _sse_events(url: str, key: str, last_event_id: str | None = None) -> list[dict[str, str]]:
    headers = {"Authorization": f"Bearer {key}", "Accept": "text/event-stream"}
    if last_event_id:
        headers["Last-Event-ID"] = last_event_id
    events, current = [], {}
    with httpx2.stream("GET", url, headers=headers, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if not line:
                if current:
                    events.append(current)
                current = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(": ")
                current[name] = value
    return events


def test_openai_sdk_drives_the_whole_flow(
    sdk: OpenAI, key_a: str, live_callbacks: str, webhook_receiver: Any, tmp_path: Path
) -> None:
    # Webhooks, the SDK's own resource (POST /v1/webhook_endpoints …).
    hook = sdk.webhooks.create(
        name="ci",
        url=webhook_receiver.url,
        event_types=[
            "fine_tuning.job.succeeded",
            "fine_tuning.job.cancelled",
            "fine_tuning.job.checkpoint.created",
        ],
    )
    assert hook.signing_secret.startswith("whsec_") and hook.object == "webhook_endpoint"
    assert sdk.webhooks.retrieve(hook.id).name == "ci"
    assert [h.id for h in sdk.webhooks.list()] == [hook.id]
    assert sdk.webhooks.update(hook.id, name="ci-hooks").name == "ci-hooks"
    assert "fine_tuning.job.succeeded" in sdk.webhooks.event_types.list().data
    tested = sdk.webhooks.test(hook.id, event_type="fine_tuning.job.failed")
    assert tested.status_code == 200 and tested.webhook_endpoint_id == hook.id
    secret = sdk.webhooks.rotate_secret(hook.id).signing_secret
    assert secret != hook.signing_secret
    test_delivery = webhook_receiver.wait(1)[0]
    sdk.webhooks.unwrap(test_delivery.body, test_delivery.headers, secret=hook.signing_secret)

    # Files.
    lines = chat_lines(120)
    training = sdk.files.create(file=("colours.jsonl", jsonl(lines)), purpose="fine-tune")
    assert training.status == "processed" and training.bytes == len(jsonl(lines))
    assert sdk.files.retrieve(training.id).filename == "colours.jsonl"
    assert training.id in [f.id for f in sdk.files.list()]
    assert sdk.files.content(training.id).read() == jsonl(lines)

    # A job with Partage's LoRA options as extra body fields; long enough for a checkpoint.
    job = sdk.fine_tuning.jobs.create(
        model="partage/tiny-llama",
        training_file=training.id,
        # max_seq_length is Partage's; short sequences keep packing from merging the examples.
        hyperparameters={
            "n_epochs": 1,
            "batch_size": 1,
            "learning_rate_multiplier": 10,
            "max_seq_length": 48,
        },  # type: ignore[typeddict-unknown-key]
        suffix="colours",
        seed=7,
        metadata={"team": "ml"},
        extra_body={
            "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
        },
    )
    assert job.object == "fine_tuning.job" and job.status in {"queued", "running"}
    assert job.metadata == {"team": "ml"}
    assert job.id in [j.id for j in sdk.fine_tuning.jobs.list()]

    # Watch it: the SSE stream gives every event in order and ends with the final status.
    stream_url = f"{live_callbacks}/v1/fine_tuning/jobs/{job.id}/events/stream"
    streamed = _sse_events(stream_url, key_a)
    assert streamed[-1]["event"] == "end", streamed[-3:]
    finished = sdk.fine_tuning.jobs.retrieve(job.id)
    assert finished.status == "succeeded", (finished.error, finished.model_extra)
    seqs = [int(e["id"]) for e in streamed if e.get("event") == "fine_tuning.job.event"]
    assert seqs == list(range(1, len(seqs) + 1))
    resumed = _sse_events(stream_url, key_a, last_event_id=str(seqs[-3]))
    assert [int(e["id"]) for e in resumed if "id" in e] == seqs[-2:]
    events = list(sdk.fine_tuning.jobs.list_events(job.id, limit=7))  # pages through `after`
    assert len(events) == len(seqs)
    assert any(e.type == "metrics" and e.data and "train_loss" in e.data for e in events)
    assert finished.fine_tuned_model.startswith("ft:partage/tiny-llama:org-a:colours:")
    assert finished.trained_tokens and finished.trained_tokens > 0

    checkpoints = list(sdk.fine_tuning.jobs.checkpoints.list(job.id))
    assert checkpoints and all(c.fine_tuning_job_id == job.id for c in checkpoints)
    assert checkpoints[0].step_number >= 50 and checkpoints[0].metrics.train_loss is not None

    # The adapter: result_files holds the archive's file id; it loads with peft.
    [result_id, eval_id] = finished.result_files
    assert_eval_report(sdk.files.content(eval_id).read(), job_id=job.id)
    archive = sdk.files.content(result_id).read()
    adapter_dir = extract(archive, tmp_path / "adapter")
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8
    assert sorted(config["target_modules"]) == ["q_proj", "v_proj"]
    assert_adapter_changes_logits(
        adapter_dir, "partage/tiny-llama", Path(django_settings.PARTAGE_MODEL_CACHE)
    )
    # Its signed provenance verifies offline with the published key (docs/data-protection.md).
    import subprocess
    import sys

    import requests

    (tmp_path / "adapter.tar.gz").write_bytes(archive)
    key = requests.get(f"{live_callbacks}/.well-known/partage-provenance.pem", timeout=30)
    (tmp_path / "partage.pem").write_bytes(key.content)
    verifier = Path(__file__).resolve().parents[2] / "tools" / "verify_adapter.py"
    verified = subprocess.run(
        [sys.executable, "-I", str(verifier), "adapter.tar.gz", "partage.pem"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert verified.returncode == 0 and job.id in verified.stdout, verified.stderr

    # Models: the base catalog and the fine-tune.
    model_ids = [m.id for m in sdk.models.list()]
    assert "partage/tiny-llama" in model_ids and finished.fine_tuned_model in model_ids
    assert sdk.models.retrieve(finished.fine_tuned_model).id == finished.fine_tuned_model

    # The signed webhook for the success, verified by the SDK with the rotated secret.
    def succeeded_delivery() -> Any:
        for received in webhook_receiver.received:
            if json.loads(received.body)["type"] == "fine_tuning.job.succeeded":
                return received
        return None

    delivery = wait_for(succeeded_delivery, timeout=30, what="the job.succeeded webhook")
    event = sdk.webhooks.unwrap(delivery.body, delivery.headers, secret=secret)
    assert event.type == "fine_tuning.job.succeeded" and event.data.id == job.id

    # Each checkpoint written was announced too (signed with the rotated secret).
    def checkpoint_events() -> list[dict[str, Any]]:
        return [
            body["data"]
            for body in (json.loads(r.body) for r in webhook_receiver.received)
            if body["type"] == "fine_tuning.job.checkpoint.created"
            and body["data"].get("fine_tuning_job_id") == job.id
        ]

    listed = {c.id for c in checkpoints}
    wait_for(
        lambda: listed <= {d["id"] for d in checkpoint_events()},
        timeout=30,
        what=f"the checkpoint.created webhooks of {sorted(listed)}",
    )
    for received in webhook_receiver.received[1:]:  # the first one is the test delivery
        sdk.webhooks.verify_signature(received.body, received.headers, secret=secret)

    # Another job: pause, resume, then cancel it. Each stop comes once the trainer trains (a
    # step reported), when a stop means "checkpoint and exit".
    other = sdk.fine_tuning.jobs.create(
        model="partage/tiny-llama",
        training_file=training.id,
        hyperparameters={"n_epochs": 50, "batch_size": 1},
    )

    def steps() -> list[int]:
        return [
            int(e.data["step"])
            for e in sdk.fine_tuning.jobs.list_events(other.id)
            if e.type == "metrics" and e.data and "train_loss" in e.data
        ]

    def steps_reported() -> int:
        return len(steps())

    def wait_steps_over(count: int) -> int:
        return wait_for(
            lambda: max(steps_reported() - count, 0),
            timeout=240,
            interval=1,
            what=f"job {other.id} to report a training step after the first {count}",
        )

    wait_steps_over(0)
    paused = sdk.fine_tuning.jobs.pause(other.id)
    assert paused.status in {"paused", "running"}
    assert _wait_status(sdk, other.id, {"paused"} | TERMINAL, timeout=120).status == "paused"
    before_resume = steps()
    resumed_job = sdk.fine_tuning.jobs.resume(other.id)
    assert resumed_job.status in {"queued", "running"}
    wait_steps_over(len(before_resume))
    # Events list newest first: the resumed attempt continues from the pause's checkpoint.
    first_after_resume = steps()[: -len(before_resume)][-1]
    assert 1 < first_after_resume <= max(before_resume) + 1, (before_resume, steps())
    cancelled = sdk.fine_tuning.jobs.cancel(other.id)
    assert cancelled.status in {"cancelled", "running"}
    assert _wait_status(sdk, other.id, TERMINAL, timeout=120).status == "cancelled"
    wait_for(
        lambda: any(
            json.loads(r.body)["type"] == "fine_tuning.job.cancelled"
            for r in webhook_receiver.received
        ),
        timeout=30,
        what="the job.cancelled webhook",
    )

    # Files can be deleted once no unfinished job uses them; webhooks too.
    assert sdk.files.delete(training.id).deleted is True
    assert sdk.webhooks.delete(hook.id).deleted is True
