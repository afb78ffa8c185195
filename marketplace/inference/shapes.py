"""OpenAI's chat completion shapes (REFERENCE §8), for the /v1 endpoint and the portal's chat
box alike: the whole answer, or Server-Sent Events chunks ending with `data: [DONE]`."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

from marketplace.errors import PartageError
from marketplace.inference.services import Completion

logger = logging.getLogger("partage.inference")


def usage_object(completion: Completion) -> dict[str, int]:
    usage = completion.usage
    prompt = usage.prompt_tokens if usage else 0
    answer = usage.completion_tokens if usage else 0
    return {"prompt_tokens": prompt, "completion_tokens": answer, "total_tokens": prompt + answer}


def completion_object(completion: Completion) -> dict[str, Any]:
    """Runs the completion to its end and shapes the answer."""
    text = "".join(delta.text for delta in completion.deltas)
    return {
        "id": completion.id,
        "object": "chat.completion",
        "created": completion.created,
        "model": completion.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": completion.finish_reason or "stop",
            }
        ],
        "usage": usage_object(completion),
    }


def _chunk(completion: Completion, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
    return {
        "id": completion.id,
        "object": "chat.completion.chunk",
        "created": completion.created,
        "model": completion.model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def _event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def completion_events(completion: Completion, *, include_usage: bool) -> Iterator[str]:
    """SSE: a role chunk, content chunks, the finish chunk, usage (when asked), [DONE]."""
    yield _event(_chunk(completion, {"role": "assistant", "content": ""}, None))
    try:
        for delta in completion.deltas:
            if delta.text:
                yield _event(_chunk(completion, {"content": delta.text}, None))
    except PartageError as e:  # the server failed mid-answer: say so in the stream
        logger.warning("inference stream of %s failed: %s", completion.id, e.message)
        yield _event(
            {"error": {"message": e.message, "type": e.error_type, "param": None, "code": e.code}}
        )
        yield "data: [DONE]\n\n"
        return
    yield _event(_chunk(completion, {}, completion.finish_reason or "stop"))
    if include_usage:
        usage_chunk = _chunk(completion, {}, None)
        usage_chunk["choices"] = []
        usage_chunk["usage"] = usage_object(completion)
        yield _event(usage_chunk)
    yield "data: [DONE]\n\n"
