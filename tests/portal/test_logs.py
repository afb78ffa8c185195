"""The log a customer reads is cleaned; the raw one stays downloadable."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from marketplace.finetuning.models import JobAttempt
from marketplace.portal.logs import log_for_user
from tests.portal.conftest import make_job

RAW = (
    "Loading weights:   0%|          | 0/21 [00:00<?, ?it/s]\r"
    "Loading weights: 100%|\u2588\u2588\u2588\u2588| 21/21 [00:00<00:00, 12826.62it/s]\n"
    "/work/main/.venv/lib/python3.11/site-packages/peft/mapping_func.py:154: UserWarning: "
    "The PEFT config's `base_model_name_or_path` was renamed\n"
    "  warnings.warn(\n"
    "\x1b[32mepoch 1/2\x1b[0m step 4/8 loss 2.3100\n"
    'Traceback (most recent call last):\n  File "/work/wt/h18/workers/agent.py", line 279, '
    "in main\n"
    "requests.exceptions.HTTPError: 404 Client Error: Not Found for url: "
    "http://localhost:59073/internal/v1/jobs/ftjob-1/events\n"
    "saved adapter to /var/lib/partage/runs/ft-1-a1/adapter\n"
)


def test_a_log_is_cleaned_for_a_user() -> None:
    clean = log_for_user(RAW)
    assert clean.splitlines() == [
        "epoch 1/2 step 4/8 loss 2.3100",
        "Traceback (most recent call last):",
        '  File "…/agent.py", line 279, in main',
        "requests.exceptions.HTTPError: 404 Client Error: Not Found for url: "
        "http://localhost:59073/internal/v1/jobs/ftjob-1/events",
        "saved adapter to …/adapter",
    ]


@pytest.mark.django_db
def test_the_job_page_shows_the_clean_log_and_links_the_raw_one(
    alice_web: Client, bob_web: Client, org_a: Any, django_capture_on_commit_callbacks: Any
) -> None:
    job = make_job(org_a, django_capture_on_commit_callbacks)
    JobAttempt.objects.create(job=job, number=1, executor="local", name="a1", logs=RAW)
    body = alice_web.get(f"/jobs/{job.id}/").content.decode()
    assert "epoch 1/2 step 4/8 loss 2.3100" in body
    assert "site-packages" not in body and "UserWarning" not in body and "it/s" not in body
    assert f'href="/jobs/{job.id}/attempts/1/log/"' in body
    raw = alice_web.get(f"/jobs/{job.id}/attempts/1/log/")
    assert raw.status_code == 200 and raw["Content-Type"].startswith("text/plain")
    assert raw.content.decode() == RAW
    assert bob_web.get(f"/jobs/{job.id}/attempts/1/log/").status_code == 404
    assert alice_web.get(f"/jobs/{job.id}/attempts/2/log/").status_code == 404
