"""POST /v1/chat/completions on fine-tuned models, against a fake vLLM: shapes, streaming,
adapter loading, tenancy and the errors of a model that cannot answer."""

from __future__ import annotations

import json
from typing import Any

from marketplace.finetuning.models import File
from tests.inference.conftest import fine_tuned, model_name

HELLO = [{"role": "user", "content": "hello there"}]


def ask(client: Any, model: str, **extra: Any) -> Any:
    return client.post(
        "/v1/chat/completions", {"model": model, "messages": HELLO, **extra}, format="json"
    )


def sse(response: Any) -> list[str]:
    body = b"".join(response.streaming_content).decode()
    return [event.removeprefix("data: ") for event in body.split("\n\n") if event]


def test_alice_asks_her_model_and_vllm_loads_the_adapter_once(client_a, org_a, vllm, settings):
    job = fine_tuned(org_a)
    response = ask(client_a, job.fine_tuned_model, max_completion_tokens=10)
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == job.fine_tuned_model
    [choice] = body["choices"]
    assert choice == {
        "index": 0,
        "message": {"role": "assistant", "content": f"{job.id} says: hello there"},
        "finish_reason": "stop",
    }
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6}
    [load] = vllm.calls("/v1/load_lora_adapter")
    assert load == {
        "lora_name": job.id,
        "lora_path": str(settings.PARTAGE_VLLM_ADAPTER_DIR / job.id),
    }
    assert (settings.PARTAGE_ADAPTER_DIR / job.id / "adapter_config.json").is_file()
    assert ask(client_a, job.fine_tuned_model).status_code == 200
    assert len(vllm.calls("/v1/load_lora_adapter")) == 1  # still loaded: not again
    vllm.restart()  # the pod restarted: the adapter is reloaded on demand
    assert ask(client_a, job.fine_tuned_model).status_code == 200
    assert len(vllm.calls("/v1/load_lora_adapter")) == 2


def test_streaming_sends_openai_chunks_then_done(client_a, org_a, vllm):
    job = fine_tuned(org_a)
    response = ask(
        client_a,
        job.fine_tuned_model,
        stream=True,
        stream_options={"include_usage": True},
        max_tokens=3,
    )
    assert response.status_code == 200 and response["Content-Type"] == "text/event-stream"
    events = sse(response)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(
        c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks
    )
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == f"{job.id} says: hello"
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3


def test_bob_cannot_use_alices_model(client_b, org_a, vllm):
    job = fine_tuned(org_a)
    response = ask(client_b, job.fine_tuned_model)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"
    assert response.json()["error"]["param"] == "model"
    assert vllm.requests == []


def test_a_model_still_training_is_a_409_that_says_so(client_a, org_a, vllm):
    job = fine_tuned(org_a, status="running")
    response = ask(client_a, model_name(job))
    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "model_not_ready" and "running" in error["message"]


def test_a_failed_job_has_no_model(client_a, org_a, vllm):
    job = fine_tuned(org_a, status="failed")
    response = ask(client_a, model_name(job))
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "model_not_found" and "failed" in error["message"]


def test_a_model_whose_adapter_was_deleted_is_gone(client_a, org_a, vllm):
    job = fine_tuned(org_a)
    assert client_a.delete(f"/v1/files/{job.result_file_id}").status_code == 200
    assert File.objects.get(pk=job.result_file_id).deleted_at is not None
    response = ask(client_a, job.fine_tuned_model)
    assert response.status_code == 404
    assert "deleted" in response.json()["error"]["message"]


def test_unknown_and_base_models_are_model_not_found(client_a, org_a, vllm):
    for name in ("ft:partage/tiny-llama:org-a:deadbeef", "partage/tiny-llama", "gpt-4o"):
        response = ask(client_a, name)
        assert response.status_code == 404, name
        assert response.json()["error"]["code"] == "model_not_found"


def test_bad_requests_name_the_field(client_a, org_a, vllm):
    job = fine_tuned(org_a)
    empty = client_a.post(
        "/v1/chat/completions", {"model": job.fine_tuned_model, "messages": []}, format="json"
    )
    assert empty.status_code == 400 and empty.json()["error"]["param"] == "messages"
    hot = ask(client_a, job.fine_tuned_model, temperature=5)
    assert hot.status_code == 400 and hot.json()["error"]["param"] == "temperature"
    assert vllm.requests == []


def test_no_key_is_401_and_the_rate_limit_applies(client_a, org_a, vllm, settings):
    from django.core.cache import cache
    from rest_framework.test import APIClient

    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "chat"}
    }
    cache.clear()
    job = fine_tuned(org_a)
    assert APIClient().post("/v1/chat/completions", {}, format="json").status_code == 401
    settings.PARTAGE_API_RATE_LIMIT = 2
    codes = [ask(client_a, job.fine_tuned_model).status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    assert len(vllm.calls("/v1/chat/completions")) == 3  # the refused one never reached it


def test_an_unreachable_server_is_a_503_in_the_error_shape(client_a, org_a, vllm, settings):
    job = fine_tuned(org_a)
    vllm.stop()
    response = ask(client_a, job.fine_tuned_model)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "inference_unavailable"


def test_an_adapter_over_the_servers_rank_cap_is_refused_clearly(client_a, org_a, vllm):
    from tests.inference.conftest import adapter_archive

    job = fine_tuned(org_a, archive=adapter_archive(rank=64))
    response = ask(client_a, job.fine_tuned_model)
    assert response.status_code == 503
    assert "max_lora_rank" in response.json()["error"]["message"]
