"""A fake of vLLM's OpenAI-compatible server with runtime LoRA updating, at its wire protocol
(`vllm serve <base> --enable-lora`, VLLM_ALLOW_RUNTIME_LORA_UPDATING=True):

    POST /v1/load_lora_adapter {"lora_name", "lora_path"}   200 text; 400 if already loaded or
                                                             the path holds no adapter
    POST /v1/unload_lora_adapter {"lora_name"}
    GET  /v1/models                                         the base model and loaded adapters
    POST /v1/chat/completions                               404 {"error"...} for an unknown model

The answer is deterministic: `<model> says: <last user message>`, one "token" per word, cut to
max_tokens, so tests can tell which adapter answered. `requests` records every call; `restart()`
forgets the loaded adapters, as a restarted or rescheduled vLLM pod does.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class FakeVllm:
    def __init__(self, base_model: str, *, max_lora_rank: int = 16) -> None:
        self.base_model = base_model
        self.max_lora_rank = max_lora_rank
        self.adapters: dict[str, str] = {}
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: Any, content_type: str = "application/json") -> None:
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _error(self, status: int, message: str, type_: str) -> None:
                self._send(
                    status,
                    {"error": {"message": message, "type": type_, "param": None, "code": status}},
                )

            def do_GET(self) -> None:
                if self.path != "/v1/models":
                    self._error(404, "Not Found", "NotFoundError")
                    return
                names = [fake.base_model, *fake.adapters]
                self._send(
                    200, {"object": "list", "data": [{"id": n, "object": "model"} for n in names]}
                )

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                with fake.lock:
                    fake.requests.append((self.path, body))
                if self.path == "/v1/load_lora_adapter":
                    self._load(body)
                elif self.path == "/v1/unload_lora_adapter":
                    if fake.adapters.pop(body.get("lora_name"), None) is None:
                        self._error(
                            404,
                            f"The lora adapter '{body.get('lora_name')}' cannot be found.",
                            "NotFoundError",
                        )
                    else:
                        self._send(
                            200,
                            f"Success: LoRA adapter '{body['lora_name']}' removed successfully.",
                            "text/plain",
                        )
                elif self.path == "/v1/chat/completions":
                    self._chat(body)
                else:
                    self._error(404, "Not Found", "NotFoundError")

            def _load(self, body: dict[str, Any]) -> None:
                name, path = body.get("lora_name"), body.get("lora_path")
                if name in fake.adapters:
                    self._error(
                        400,
                        f"The lora adapter '{name}' has already been loaded.",
                        "BadRequestError",
                    )
                    return
                config_path = Path(str(path)) / "adapter_config.json"
                if not config_path.is_file():
                    self._error(
                        400,
                        f"Loading lora {name} failed: No adapter found for {path}",
                        "BadRequestError",
                    )
                    return
                rank = json.loads(config_path.read_text()).get("r", 0)
                if rank > fake.max_lora_rank:
                    self._error(
                        400,
                        f"LoRA rank {rank} is greater than max_lora_rank {fake.max_lora_rank}.",
                        "BadRequestError",
                    )
                    return
                fake.adapters[str(name)] = str(path)
                self._send(200, f"Success: LoRA adapter '{name}' added successfully.", "text/plain")

            def _chat(self, body: dict[str, Any]) -> None:
                model = body.get("model")
                if model != fake.base_model and model not in fake.adapters:
                    self._error(404, f"The model `{model}` does not exist.", "NotFoundError")
                    return
                users = [m["content"] for m in body["messages"] if m["role"] == "user"]
                words = f"{model} says: {users[-1] if users else ''}".split(" ")
                limit = int(body.get("max_completion_tokens") or body.get("max_tokens") or 16)
                answer = words[:limit]
                finish = "stop" if len(words) <= limit else "length"
                prompt_tokens = sum(len(m["content"].split()) for m in body["messages"])
                usage = {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": len(answer),
                    "total_tokens": prompt_tokens + len(answer),
                }
                base = {"id": "chatcmpl-fake", "created": int(time.time()), "model": model}
                if not body.get("stream"):
                    self._send(200, {
                        **base,
                        "object": "chat.completion",
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": " ".join(answer)}, "finish_reason": finish}],
                        "usage": usage,
                    })  # fmt: skip
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True

                def send(payload: Any) -> None:
                    text = payload if isinstance(payload, str) else json.dumps(payload)
                    self.wfile.write(f"data: {text}\n\n".encode())

                chunk = {**base, "object": "chat.completion.chunk"}
                send(
                    {
                        **chunk,
                        "choices": [
                            {
                                "index": 0,
                                "delta": {"role": "assistant", "content": ""},
                                "finish_reason": None,
                            }
                        ],
                    }
                )
                for index, word in enumerate(answer):
                    piece = word if index == 0 else f" {word}"
                    send(
                        {
                            **chunk,
                            "choices": [
                                {"index": 0, "delta": {"content": piece}, "finish_reason": None}
                            ],
                        }
                    )
                send({**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
                if (body.get("stream_options") or {}).get("include_usage"):
                    send({**chunk, "choices": [], "usage": usage})
                send("[DONE]")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeVllm:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def restart(self) -> None:
        """A restarted pod: runtime-loaded adapters are gone."""
        self.adapters.clear()

    def calls(self, path: str) -> list[dict[str, Any]]:
        return [body for p, body in self.requests if p == path]
