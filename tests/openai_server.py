"""A scripted OpenAI-compatible server on a free loopback port, for tests of real HTTP clients.

It serves GET /v1/models and POST /v1/chat/completions. What a chat request gets is decided by a
script: ``script(body, n)`` with the parsed request body and the 0-based index of this chat request
returns a ``Reply``. Every request is recorded (method, path, headers, body) so tests can count calls
and check what was sent.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Reply:
    content: str | None = None  # the assistant message (status 200)
    status: int = 200
    delay: float = 0.0  # seconds to wait before answering (a slow server)
    headers: dict = field(default_factory=dict)
    raw: bytes | None = None  # a body sent as is (e.g. not JSON)


def chat_completion(content: str, model: str) -> dict:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def error_body(status: int) -> dict:
    return {"error": {"message": f"scripted error {status}", "type": "server_error", "code": status}}


class FakeOpenAI:
    """``with FakeOpenAI(script) as srv: srv.url`` is ``http://127.0.0.1:PORT/v1``."""

    def __init__(self, script=None, models=("judge-1",), token: str | None = None):
        self.script = script or (lambda body, n: Reply("ok"))
        self.models = list(models)
        self.token = token  # when set, every request needs "Authorization: Bearer <token>"
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        self._chat_n = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def chat_requests(self) -> list[dict]:
        with self._lock:
            return [r for r in self.requests if r["path"].endswith("/chat/completions")]

    def start(self) -> "FakeOpenAI":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "FakeOpenAI":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output quiet
                pass

            def _send(self, status: int, payload, headers=None, raw: bytes | None = None):
                data = raw if raw is not None else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                    pass

            def _record(self, body) -> None:
                with fake._lock:
                    fake.requests.append({"method": self.command, "path": self.path,
                                          "headers": dict(self.headers), "body": body})

            def _authorised(self) -> bool:
                if fake.token is None or self.headers.get("Authorization") == f"Bearer {fake.token}":
                    return True
                self._send(401, {"error": {"message": "invalid api key", "type": "invalid_request_error"}})
                return False

            def do_GET(self):
                self._record(None)
                if not self._authorised():
                    return
                if self.path.rstrip("/") == "/v1/models":
                    data = [{"id": m, "object": "model", "created": 0, "owned_by": "test"} for m in fake.models]
                    self._send(200, {"object": "list", "data": data})
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n) or b"{}")
                self._record(body)
                if not self._authorised():
                    return
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(404, {"error": {"message": "not found"}})
                    return
                with fake._lock:
                    i = fake._chat_n
                    fake._chat_n += 1
                reply = fake.script(body, i)
                if reply.delay:
                    time.sleep(reply.delay)
                if reply.raw is not None:
                    self._send(reply.status, None, reply.headers, raw=reply.raw)
                elif reply.status != 200:
                    self._send(reply.status, error_body(reply.status), reply.headers)
                else:
                    self._send(200, chat_completion(reply.content, body.get("model", "")), reply.headers)

        return Handler
