"""The local inference worker's HTTP API: the subset of vLLM's OpenAI-compatible server that
Partage uses, so one client drives both this worker and a production vLLM.

    GET  /health
    GET  /v1/models
    POST /v1/load_lora_adapter    {"lora_name", "lora_path"}
    POST /v1/unload_lora_adapter  {"lora_name"}
    POST /v1/chat/completions     {"model", "messages", "max_tokens" | "max_completion_tokens",
                                   "temperature", "top_p", "seed", "stop", "stream",
                                   "stream_options": {"include_usage": true}}

It listens on loopback only by default: Partage's web process authorizes, meters and bills;
this process only computes.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from workers.inference.engine import AdapterLoadError, LocalEngine, UnknownModelError
from workers.lora.generation import Decoding

log = logging.getLogger("partage.inference")


class BadRequest(Exception):
    pass


def decoding_from(body: dict[str, Any]) -> Decoding:
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens")) or 256
    temperature = body.get("temperature")
    top_p = body.get("top_p")
    stop = body.get("stop") or ()
    if isinstance(stop, str):
        stop = (stop,)
    try:
        return Decoding(
            max_new_tokens=int(max_tokens),
            temperature=1.0 if temperature is None else float(temperature),
            top_p=1.0 if top_p is None else float(top_p),
            seed=None if body.get("seed") is None else int(body["seed"]),
            stop=tuple(str(s) for s in stop),
        )
    except (TypeError, ValueError) as e:
        raise BadRequest(f"bad sampling parameter: {e}") from e


def messages_from(body: dict[str, Any]) -> list[dict[str, str]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list")
    clean = []
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise BadRequest("each message needs a role and a string content")
        clean.append({"role": str(message.get("role")), "content": message["content"]})
    return clean


class Handler(BaseHTTPRequestHandler):
    server: InferenceServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), format % args)

    # ------------------------------------------------------------ plumbing
    def _json(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, type_: str) -> None:
        self._json(
            status, {"error": {"message": message, "type": type_, "param": None, "code": status}}
        )

    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError as e:
            raise BadRequest(f"the body is not JSON: {e}") from e
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object")
        return body

    # ------------------------------------------------------------ routes
    def do_GET(self) -> None:
        if self.path == "/health":
            self._json(200, {"status": "ok", "swaps": self.server.engine.swaps})
        elif self.path == "/v1/models":
            data = [
                {"id": name, "object": "model", "owned_by": "partage"}
                for name in self.server.engine.model_names()
            ]
            self._json(200, {"object": "list", "data": data})
        else:
            self._error(404, f"no route {self.path}", "NotFoundError")

    def do_POST(self) -> None:
        routes = {
            "/v1/load_lora_adapter": self._load,
            "/v1/unload_lora_adapter": self._unload,
            "/v1/chat/completions": self._chat,
        }
        route = routes.get(self.path)
        if route is None:
            self._error(404, f"no route {self.path}", "NotFoundError")
            return
        try:
            route(self._body())
        except BadRequest as e:
            self._error(400, str(e), "BadRequestError")
        except UnknownModelError as e:
            self._error(404, f"The model `{e}` does not exist.", "NotFoundError")
        except AdapterLoadError as e:
            self._error(400, str(e), "BadRequestError")

    def _load(self, body: dict[str, Any]) -> None:
        name, path = body.get("lora_name"), body.get("lora_path")
        if not isinstance(name, str) or not isinstance(path, str):
            raise BadRequest("lora_name and lora_path are required strings")
        self.server.engine.register(name, path)
        self._plain(200, f"Success: LoRA adapter '{name}' added successfully.")

    def _unload(self, body: dict[str, Any]) -> None:
        name = body.get("lora_name")
        if not isinstance(name, str):
            raise BadRequest("lora_name is required")
        self.server.engine.unregister(name)
        self._plain(200, f"Success: LoRA adapter '{name}' removed successfully.")

    def _plain(self, status: int, text: str) -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _chat(self, body: dict[str, Any]) -> None:
        model = body.get("model")
        if not isinstance(model, str):
            raise BadRequest("model is required")
        messages = messages_from(body)
        decoding = decoding_from(body)
        stream = self.server.engine.stream(model, messages, decoding)
        first = next(stream)  # loads the model/adapter: errors still answer in JSON
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        if body.get("stream"):
            self._chat_stream(body, model, completion_id, created, first, stream)
            return
        parts = [first]
        parts.extend(stream)
        last = parts[-1]
        self._json(
            200,
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {
                            "role": "assistant",
                            "content": "".join(p.text for p in parts),
                        },
                        "finish_reason": last.finish_reason,
                    }
                ],
                "usage": _usage(last),
            },
        )

    def _chat_stream(
        self,
        body: dict[str, Any],
        model: str,
        completion_id: str,
        created: int,
        first: Any,
        rest: Any,
    ) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

        def send(payload: Any) -> None:
            text = payload if isinstance(payload, str) else json.dumps(payload)
            self.wfile.write(f"data: {text}\n\n".encode())
            self.wfile.flush()

        def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
            return {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }

        try:
            send(chunk({"role": "assistant", "content": ""}, None))
            last = first
            for piece in _chain(first, rest):
                last = piece
                if piece.text:
                    send(chunk({"content": piece.text}, None))
            send(chunk({}, last.finish_reason))
            if (body.get("stream_options") or {}).get("include_usage"):
                usage_chunk = chunk({}, None)
                usage_chunk["choices"] = []
                usage_chunk["usage"] = _usage(last)
                send(usage_chunk)
            send("[DONE]")
        except (BrokenPipeError, ConnectionResetError):
            rest.close()  # the client left: stop generating, free the engine


def _chain(first: Any, rest: Any) -> Any:
    yield first
    yield from rest


def _usage(last: Any) -> dict[str, int]:
    return {
        "prompt_tokens": last.prompt_tokens,
        "completion_tokens": last.completion_tokens,
        "total_tokens": last.prompt_tokens + last.completion_tokens,
    }


class InferenceServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], engine: LocalEngine) -> None:
        super().__init__(address, Handler)
        self.engine = engine
