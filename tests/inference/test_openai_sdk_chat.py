"""The unchanged `openai` SDK asks a freshly fine-tuned model, streaming and not, against a live
Partage whose local inference worker runs the real adapter the job produced."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai
import pytest
from openai import OpenAI

from tests.conftest import chat_lines, jsonl, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def eager_celery(settings: Any) -> Any:
    from workers.celery import app

    settings.CELERY_TASK_ALWAYS_EAGER = True
    app.conf.task_always_eager = True
    yield app
    app.conf.task_always_eager = False


def test_the_sdk_chats_with_the_fine_tuned_model(
    live_callbacks: str,
    key_a: str,
    key_b: str,
    eager_celery: Any,
    local_inference: str,
    settings: Any,
) -> None:
    settings.PARTAGE_API_RATE_LIMIT = 0
    sdk = OpenAI(base_url=f"{live_callbacks}/v1", api_key=key_a, max_retries=0, timeout=120)
    training = sdk.files.create(file=("colours.jsonl", jsonl(chat_lines(16))), purpose="fine-tune")
    job = sdk.fine_tuning.jobs.create(
        model="partage/tiny-llama",
        training_file=training.id,
        hyperparameters={"n_epochs": 3, "batch_size": 4, "learning_rate_multiplier": 10},
        seed=7,
    )
    finished = wait_for(
        lambda: (
            (j := sdk.fine_tuning.jobs.retrieve(job.id)).status in {"succeeded", "failed"} and j
        ),
        timeout=240,
        interval=1,
        what=f"job {job.id} to finish",
    )
    assert finished.status == "succeeded", finished.error
    report = json.loads(sdk.files.content(finished.result_files[1]).read())
    [sample] = report["samples"]  # 16 examples: one held out of training

    # Not streaming: the same greedy settings as the evaluation give the evaluated answer.
    answer = sdk.chat.completions.create(
        model=finished.fine_tuned_model,
        messages=sample["messages"],
        temperature=0,
        max_completion_tokens=report["decoding"]["max_new_tokens"],
    )
    assert answer.object == "chat.completion" and answer.model == finished.fine_tuned_model
    text = answer.choices[0].message.content
    assert text == sample["adapter_answer"] and text != sample["base_answer"]
    assert answer.usage.completion_tokens > 0 and answer.usage.prompt_tokens > 0

    # Streaming: chunks that add up to the same answer, then usage.
    stream = sdk.chat.completions.create(
        model=finished.fine_tuned_model,
        messages=sample["messages"],
        temperature=0,
        max_completion_tokens=report["decoding"]["max_new_tokens"],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text
    assert (
        chunks[-1].usage is not None and chunks[-1].usage.total_tokens == answer.usage.total_tokens
    )

    # Bob's organization does not see it.
    bob = OpenAI(base_url=f"{live_callbacks}/v1", api_key=key_b, max_retries=0)
    with pytest.raises(openai.NotFoundError) as caught:
        bob.chat.completions.create(model=finished.fine_tuned_model, messages=sample["messages"])
    assert caught.value.code == "model_not_found"
    assert Path(settings.PARTAGE_ADAPTER_DIR, job.id, "adapter_config.json").is_file()
