"""The local inference worker: vLLM's dynamic-LoRA routes and OpenAI chat shapes, over HTTP,
from a process of its own; and the engine's LRU adapter swaps."""

from __future__ import annotations

import json

import requests

from workers.inference.engine import LocalEngine
from workers.lora.generation import Decoding

HI = [{"role": "user", "content": "What is the capital of France?"}]


def _chat(url: str, **body) -> requests.Response:
    return requests.post(f"{url}/v1/chat/completions", json=body, timeout=120)


def test_an_adapter_is_loaded_by_name_and_answers_in_the_openai_shape(inference_worker, adapters):
    url = inference_worker
    missing = _chat(url, model="ft-a0", messages=HI)
    assert missing.status_code == 404 and "does not exist" in missing.json()["error"]["message"]
    loaded = requests.post(
        f"{url}/v1/load_lora_adapter",
        json={"lora_name": "ft-a0", "lora_path": str(adapters[0])},
        timeout=30,
    )
    assert loaded.status_code == 200, loaded.text
    again = requests.post(
        f"{url}/v1/load_lora_adapter",
        json={"lora_name": "ft-a0", "lora_path": str(adapters[0])},
        timeout=30,
    )
    assert again.status_code == 400 and "already been loaded" in again.text
    answer = _chat(url, model="ft-a0", messages=HI, max_tokens=6, temperature=0).json()
    assert answer["object"] == "chat.completion" and answer["id"].startswith("chatcmpl-")
    [choice] = answer["choices"]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] in {
        "stop",
        "length",
    }
    usage = answer["usage"]
    assert usage["completion_tokens"] <= 6 and usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    base = _chat(url, model="partage/tiny-llama", messages=HI, max_tokens=6, temperature=0).json()
    assert base["choices"][0]["message"]["content"] != choice["message"]["content"]


def test_streaming_sends_chunks_then_usage_then_done(inference_worker, adapters):
    url = inference_worker
    requests.post(
        f"{url}/v1/load_lora_adapter",
        json={"lora_name": "ft-a1", "lora_path": str(adapters[1])},
        timeout=30,
    )
    whole = _chat(url, model="ft-a1", messages=HI, max_tokens=8, temperature=0).json()
    response = _chat(
        url,
        model="ft-a1",
        messages=HI,
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    assert response.headers["Content-Type"] == "text/event-stream"
    lines = [line for line in response.text.split("\n\n") if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == whole["choices"][0]["message"]["content"]
    assert chunks[-1]["usage"] == whole["usage"]


def test_the_same_seed_samples_the_same_answer(inference_worker):
    body = {"model": "partage/tiny-llama", "messages": HI, "max_tokens": 8, "temperature": 1.0}
    first = _chat(inference_worker, seed=3, **body).json()["choices"][0]["message"]["content"]
    again = _chat(inference_worker, seed=3, **body).json()["choices"][0]["message"]["content"]
    assert first == again


def test_the_engine_keeps_at_most_max_adapters_and_reloads_an_evicted_one(
    tiny_llama_dir, adapters, model_cache
):
    engine = LocalEngine(max_adapters=2)
    for index, path in enumerate(adapters):
        engine.register(f"a{index}", path)
    decoding = Decoding(max_new_tokens=4)

    def answer(name: str) -> str:
        return "".join(d.text for d in engine.stream(name, HI, decoding))

    first = answer("a0")
    answer("a1")
    answer("a2")  # evicts a0, the least recently used
    assert list(engine.resident) == ["a1", "a2"] and engine.swaps == 3
    model = engine.bases["partage/tiny-llama"].model
    assert set(model.peft_config) == {"a1", "a2"}
    assert answer("a0") == first  # reloaded from its path, same weights, same answer
    assert list(engine.resident) == ["a2", "a0"] and engine.swaps == 4
