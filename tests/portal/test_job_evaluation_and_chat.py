"""The job page shows the evaluation side by side and has a chat box that works with and
without JavaScript, on the same service as POST /v1/chat/completions (a fake vLLM serves)."""

from __future__ import annotations

import io
import json

import pytest
from django.test import Client

from marketplace.finetuning.services import result_file_create
from marketplace.inference.models import InferenceUsage
from tests.inference.conftest import fine_tuned, vllm  # noqa: F401 - fixture

pytestmark = pytest.mark.django_db

REPORT = {
    "format": "partage-eval/1",
    "source": "training_holdout",
    "held_out": True,
    "decoding": {"greedy": True, "temperature": 0.0, "max_new_tokens": 64, "seed": 7},
    "validation_loss": None,
    "mean_loss": {"base": 5.5, "adapter": 1.25},
    "samples": [
        {
            "line": 3,
            "prompt": "What colour is item 3?",
            "messages": [{"role": "user", "content": "What colour is item 3?"}],
            "reference": "Item 3 is <green>.",
            "base_answer": "banana banana",
            "adapter_answer": "Item 3 is green.",
            "base_loss": 5.5,
            "adapter_loss": 1.25,
        }
    ],
}


def _with_eval(job, report=REPORT):
    job.eval_file = result_file_create(
        job=job, stream=io.BytesIO(json.dumps(report).encode()), filename=f"{job.id}-eval.json"
    )
    job.save(update_fields=["eval_file"])
    return job


def test_the_job_page_shows_prompt_base_adapter_and_reference_side_by_side(
    alice_web: Client, org_a
):
    job = _with_eval(fine_tuned(org_a))
    page = alice_web.get(f"/jobs/{job.id}/")
    assert page.status_code == 200
    body = page.content.decode()
    assert 'id="evaluation"' in body
    for text in (
        "What colour is item 3?",
        "banana banana",
        "Item 3 is green.",
        "Item 3 is &lt;green&gt;.",
    ):
        assert text in body
    assert "a slice held out of training" in body and "5.500 → 1.250" in body
    row = body.split('class="eval-prompt"', 1)[1]
    assert row.index("banana") < row.index("Item 3 is green.") < row.index("&lt;green&gt;")


def test_without_javascript_the_chat_form_posts_and_the_page_shows_the_answer(
    alice_web: Client,
    org_a,
    vllm,  # noqa: F811
):
    job = fine_tuned(org_a)
    response = alice_web.post(f"/jobs/{job.id}/chat/", {"message": "how are you"})
    assert response.status_code == 200
    assert response.context["chat_answer"] == f"{job.id} says: how are you"
    body = response.content.decode()
    assert f"{job.id} says: how are you</pre>" in body and "how are you</textarea>" in body
    assert "3 prompt + 5 completion tokens" in body
    assert InferenceUsage.objects.filter(job=job).count() == 1  # metered like the API


def test_with_javascript_the_answer_streams_as_openai_chunks(alice_web: Client, org_a, vllm):  # noqa: F811
    job = fine_tuned(org_a)
    response = alice_web.post(
        f"/jobs/{job.id}/chat/", {"message": "stream please"}, HTTP_ACCEPT="text/event-stream"
    )
    assert response.status_code == 200 and response["Content-Type"] == "text/event-stream"
    events = [
        e.removeprefix("data: ")
        for e in b"".join(response.streaming_content).decode().split("\n\n")
        if e
    ]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == f"{job.id} says: stream please"
    assert chunks[-1]["usage"]["completion_tokens"] == 4


def test_bob_cannot_chat_with_alices_job(bob_web: Client, org_a, vllm):  # noqa: F811
    job = fine_tuned(org_a)
    assert bob_web.post(f"/jobs/{job.id}/chat/", {"message": "hi"}).status_code == 404
    assert vllm.requests == []


def test_a_job_still_training_says_so_in_the_chat(alice_web: Client, org_a, vllm):  # noqa: F811
    job = fine_tuned(org_a, status="running")
    page = alice_web.get(f"/jobs/{job.id}/").content.decode()
    assert 'id="chat-form"' not in page  # no chat box before there is a model
    response = alice_web.post(f"/jobs/{job.id}/chat/", {"message": "hi"})
    assert response.status_code == 409
    assert "not ready" in response.content.decode()
    streamed = alice_web.post(
        f"/jobs/{job.id}/chat/", {"message": "hi"}, HTTP_ACCEPT="text/event-stream"
    )
    assert streamed.status_code == 409 and streamed.json()["error"]["code"] == "model_not_ready"


def test_an_empty_message_is_explained(alice_web: Client, org_a, vllm):  # noqa: F811
    job = fine_tuned(org_a)
    response = alice_web.post(f"/jobs/{job.id}/chat/", {"message": "  "})
    assert response.status_code == 400 and "Type a message" in response.content.decode()
    assert vllm.requests == []
