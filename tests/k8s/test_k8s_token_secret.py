"""The trainer's callback token: in a per-attempt Secret owned by the Job (never a plain value in
the Job spec), deleted with the Job, and valid only until the attempt's deadline."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
import time_machine
from django.utils import timezone

from tests.k8s.test_k8s_executor import (
    CONFIG,
    NS,
    _run_with,
    _wait_phase,
    executor,
    make_spec,
    raw_core,
)
from workers.executors import k8s_constants as K
from workers.executors.base import Phase
from workers.executors.kubernetes import (
    KubernetesPermanentError,
    KubernetesTemporaryError,
    job_manifest,
    token_secret_manifest,
)

TOKEN = "signed-token-for-this-job"


def _secret_token(secret: dict[str, Any]) -> str:
    return base64.b64decode(secret["data"][K.TOKEN_SECRET_KEY]).decode()


def test_the_job_spec_refers_to_the_secret_and_never_holds_the_token() -> None:
    job = job_manifest(make_spec(), CONFIG)
    assert TOKEN not in json.dumps(job)
    (container,) = job["spec"]["template"]["spec"]["containers"]
    (token_env,) = [e for e in container["env"] if e["name"] == "PARTAGE_JOB_TOKEN"]
    assert token_env == {
        "name": "PARTAGE_JOB_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "ft-abc123-a1-token", "key": "token"}},
    }


def test_a_spec_env_cannot_put_the_token_back_in_plain_sight() -> None:
    spec = make_spec()
    leaky = type(spec)(**{**spec.__dict__, "env": {"PARTAGE_JOB_TOKEN": TOKEN}})
    assert TOKEN not in json.dumps(job_manifest(leaky, CONFIG))


def test_the_secret_manifest_validates_strictly() -> None:
    import kubernetes_validate
    from kubernetes_validate.utils import latest_version

    secret = token_secret_manifest(make_spec(), CONFIG, job_uid="0f6b1f3e-uid")
    kubernetes_validate.validate(secret, latest_version(), strict=True)
    assert secret["immutable"] is True and secret["type"] == "Opaque"


def test_launch_creates_the_secret_owned_by_the_job(fake_api: Any) -> None:
    spec = make_spec(fake_api)
    executor().launch(spec)
    (job,) = fake_api.list("jobs", NS)
    (secret,) = fake_api.list("secrets", NS)
    assert secret["metadata"]["name"] == "ft-abc123-a1-token"
    assert _secret_token(secret) == TOKEN
    assert secret["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "name": "ft-abc123-a1",
            "uid": job["metadata"]["uid"],
            "blockOwnerDeletion": False,
        }
    ]
    labels = secret["metadata"]["labels"]
    assert labels[K.LABEL_JOB] == "ftjob-abc123" and labels[K.LABEL_ATTEMPT] == "1"
    assert TOKEN not in json.dumps(job)


def test_a_second_launch_keeps_the_first_secret(fake_api: Any) -> None:
    spec = make_spec(fake_api)
    executor().launch(spec)
    later = type(spec)(**{**spec.__dict__, "token": "a-later-token"})
    executor().launch(later)  # adopts the Job, and with it the Secret and its token
    (secret,) = fake_api.list("secrets", NS)
    assert _secret_token(secret) == TOKEN
    assert fake_api.count_requests("POST", "/secrets") == 2


def test_a_lost_secret_create_response_is_adopted(fake_api: Any) -> None:
    spec = make_spec(fake_api)
    fake_api.fail_next(1, 500, after_apply=True, methods=("POST",), path_contains="/secrets")
    executor().launch(spec)  # written, answered 500, retried: 409, read, and adopted
    statuses = [s for m, p, s in fake_api.requests if m == "POST" and p.endswith("/secrets")]
    assert statuses == [500, 409]
    (secret,) = fake_api.list("secrets", NS)
    assert _secret_token(secret) == TOKEN


def test_a_secret_that_is_not_ours_is_refused(fake_api: Any) -> None:
    spec = make_spec(fake_api)
    foreign = token_secret_manifest(spec, CONFIG, job_uid="someone-else")
    foreign["metadata"]["labels"][K.LABEL_JOB] = "ftjob-someone-else"
    raw_core(fake_api).create_namespaced_secret(NS, foreign)
    with pytest.raises(KubernetesPermanentError) as error:
        executor().launch(spec)
    assert error.value.status == 409


def test_a_secret_left_by_a_deleted_job_of_the_same_name_is_waited_for(fake_api: Any) -> None:
    spec = make_spec(fake_api)
    leftover = token_secret_manifest(spec, CONFIG, job_uid="uid-of-a-deleted-job")
    raw_core(fake_api).create_namespaced_secret(NS, leftover)
    with pytest.raises(KubernetesTemporaryError):
        executor().launch(spec)  # the Celery task retries once the collector removed it


def test_deleting_the_job_deletes_its_secret(kubelet_api: Any) -> None:
    spec = make_spec(kubelet_api)
    _run_with(kubelet_api, spec, "import time; time.sleep(60)")
    kubelet_api.wait_for(lambda: kubelet_api.pods_of_job(NS, spec.name))
    assert len(kubelet_api.list("secrets", NS)) == 1
    executor().cancel(spec)
    assert kubelet_api.list("jobs", NS) == [] and kubelet_api.list("secrets", NS) == []


def test_the_trainer_reads_its_token_from_the_secret(kubelet_api: Any) -> None:
    spec = make_spec(kubelet_api)
    _run_with(
        kubelet_api,
        spec,
        "import os; print('token', os.environ['PARTAGE_JOB_TOKEN'], flush=True)",
    )
    seen = _wait_phase(kubelet_api, spec, {Phase.SUCCEEDED, Phase.FAILED})
    assert seen.phase == Phase.SUCCEEDED
    assert executor().logs(spec) == f"token {TOKEN}\n"


def test_the_token_expires_with_the_attempts_deadline(settings: Any) -> None:
    from marketplace.finetuning.tokens import (
        AFTER_DEADLINE_SECONDS,
        job_token_issue,
        job_token_verify,
    )

    settings.PARTAGE_JOB_TOKEN_TTL_SECONDS = 24 * 3600
    start = timezone.now()
    with time_machine.travel(start, tick=False) as clock:
        token = job_token_issue(job_id="ftjob-abc123", attempt=2, deadline_seconds=3600)
        assert job_token_verify(token) == ("ftjob-abc123", 2)
        clock.shift(3600 + AFTER_DEADLINE_SECONDS - 1)
        assert job_token_verify(token) == ("ftjob-abc123", 2)  # reporting after the deadline
        clock.shift(2)
        assert job_token_verify(token) is None  # long before the 24 h cap
    assert CONFIG.termination_grace_seconds <= AFTER_DEADLINE_SECONDS


@pytest.mark.django_db
def test_the_launch_spec_binds_the_token_to_its_deadline(org_a: Any) -> None:
    """dispatch.launch_spec issues the token for the deadline the Job runs under."""
    from marketplace.finetuning.models import File, FineTuningJob, JobAttempt
    from marketplace.finetuning.tokens import AFTER_DEADLINE_SECONDS, job_token_verify
    from workers import dispatch

    training = File.objects.create(
        id="file-tok",
        organization=org_a,
        filename="t.jsonl",
        purpose="fine-tune",
        bytes=1,
        sha256="0" * 64,
        content="files/none.jsonl",
    )
    job = FineTuningJob.objects.create(
        id="ftjob-tok",
        organization=org_a,
        model="partage/tiny-llama",
        training_file=training,
        seed=1,
    )
    attempt = JobAttempt.objects.create(job=job, number=2, executor="kubernetes", name="ft-tok-a2")
    with time_machine.travel(timezone.now(), tick=False) as clock:
        spec = dispatch.launch_spec(attempt)
        assert spec.active_deadline_seconds > 0
        assert job_token_verify(spec.token) == ("ftjob-tok", 2)
        clock.shift(spec.active_deadline_seconds + AFTER_DEADLINE_SECONDS - 1)
        assert job_token_verify(spec.token) == ("ftjob-tok", 2)
        clock.shift(2)
        assert job_token_verify(spec.token) is None
