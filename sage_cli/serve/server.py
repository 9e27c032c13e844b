"""The HTTP side of `sage serve`: routes, bearer auth, body limits, JSON and Server-Sent Events answers.

Requests are read, validated and their images decoded on their own threads; only the model step
runs one at a time (generate.Runner's lock). Every failure is answered in OpenAI's error shape and
the server goes on serving.
"""

from __future__ import annotations

import errno
import hmac
import ipaddress
import json
import socket
import sys
import threading
import time
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from sage_cli.errors import SageError
from sage_cli.serve import protocol as wire
from sage_cli.serve.generate import Runner
from sage_cli.serve.images import open_pair
from sage_cli.serve.protocol import ApiError, Limits

IDLE_TIMEOUT_S = 120  # a silent client (idle keep-alive, stalled upload or stream) frees its thread after this


def make_server(engine, host: str = "127.0.0.1", port: int = 0, model_name: str | None = None,
                api_key: str | None = None, limits: Limits | None = None, llm_only: bool = False,
                quiet: bool = False, log=None) -> "SageServer":
    """A bound server (port 0 = a free one; see `.url`): `serve_forever()`, then `shutdown()` and `server_close()`.

    `log` is a text stream for one line per request and engine failures (default: sys.stderr at the time
    of writing); `quiet` drops the request lines only.
    """
    return SageServer(host, port, Runner(engine, limits or Limits()), model_name or engine.backbone_name,
                      api_key or None, llm_only, quiet, log)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_port_free(host: str, port: int) -> None:
    """Fail early (before minutes of model loading) when the address cannot be bound."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: TIME_WAIT is no obstacle
        try:
            s.bind((host.strip("[]"), port))
        except OSError as e:
            raise _bind_error(host, port, e) from None


def _bind_error(host: str, port: int, e: OSError) -> SageError:
    if e.errno == errno.EADDRINUSE:
        return SageError(f"cannot listen on {host}:{port}: the port is already in use (choose another with --port)")
    reason = e.strerror or str(e)
    return SageError(f"cannot listen on {host}:{port} ({reason})")


class SageServer(ThreadingHTTPServer):
    # Daemon threads never hold the process open, but server_close() still winds them down: a thread
    # still inside torch when the interpreter exits can abort the process ("terminate called ...").
    daemon_threads = True
    block_on_close = False
    close_wait_s = 10.0

    def __init__(self, host, port, runner: Runner, model_name: str, api_key: str | None, llm_only: bool,
                 quiet: bool, log):
        if ":" in host:
            self.address_family = socket.AF_INET6
        self.runner, self.model_name, self.llm_only, self.quiet, self._log = runner, model_name, llm_only, quiet, log
        self._key = api_key.encode("utf-8") if api_key else None  # never logged nor echoed
        self.started = int(time.time())
        self.stopping = threading.Event()  # set by server_close: answers being decoded stop at the next token
        self._open: dict[socket.socket, threading.Thread] = {}  # connection -> the thread serving it
        self._open_lock = threading.Lock()
        try:
            super().__init__((host.strip("[]"), port), Handler)
        except OSError as e:
            raise _bind_error(host, port, e) from None
        self.host = host

    def process_request_thread(self, request, client_address):
        with self._open_lock:
            self._open[request] = threading.current_thread()
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._open_lock:
                self._open.pop(request, None)

    def server_close(self):
        """Stop listening, hang up on every connection (idle keep-alives too) and wait for their threads."""
        self.stopping.set()
        super().server_close()
        with self._open_lock:
            open_now = list(self._open.items())
        for conn, _ in open_now:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        deadline = time.monotonic() + self.close_wait_s
        for _, thread in open_now:
            thread.join(max(0.0, deadline - time.monotonic()))

    @property
    def limits(self) -> Limits:
        return self.runner.limits

    @property
    def port(self) -> int:
        return self.server_address[1]

    @property
    def url(self) -> str:
        host = f"[{self.host.strip('[]')}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    def authorised(self, header: str | None) -> bool:
        if self._key is None:
            return True
        scheme, _, token = (header or "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        # Header values arrive decoded as latin-1: back to the raw bytes the client sent.
        return hmac.compare_digest(token.strip().encode("latin-1", "replace"), self._key)

    def write_log(self, line: str, always: bool = False) -> None:
        if self.quiet and not always:
            return
        stream = self._log or sys.stderr
        try:
            stream.write(line + "\n")
            stream.flush()
        except (OSError, ValueError):  # a closed stderr must not take a request down
            pass


class _ClientGone(Exception):
    """The client closed the connection (mid-upload or while its answer was streaming)."""


class _Stopping(Exception):
    """The server is shutting down: a request still decoding gives up."""


class Handler(BaseHTTPRequestHandler):
    server: SageServer
    protocol_version = "HTTP/1.1"  # keep-alive for the openai client's connection pool
    timeout = IDLE_TIMEOUT_S
    server_version = "sage-serve"

    def version_string(self) -> str:  # the Server header, without Python's version
        return self.server_version

    # ---- framing: one access line per request ----------------------------------------------------

    def handle_one_request(self):
        self._t0 = time.perf_counter()
        self._status, self._note, self._streaming, self._body_read = None, "", False, True
        try:
            super().handle_one_request()
        finally:
            if self._status is not None:
                path = urlsplit(getattr(self, "path", "") or "").path[:200]  # no query string: it may hold secrets
                ms = (time.perf_counter() - self._t0) * 1000
                self.server.write_log(f"{self.command or '-'} {path or '-'} {int(self._status)} {ms:.0f} ms{self._note}")

    def log_request(self, code="-", size="-"):
        self._status = code

    def log_message(self, format, *args):  # the base class's lines (they may quote raw request lines)
        pass

    def send_error(self, code, message=None, explain=None):
        """The base class's own refusals (malformed request line, headers too large...) as JSON too."""
        self._send_json(code, ApiError(code, message or HTTPStatus(code).phrase).body(), close=True)

    # ---- routes ------------------------------------------------------------------------------------

    def do_GET(self):
        self._dispatch()

    def do_POST(self):
        self._dispatch()

    do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_POST

    def _dispatch(self):
        method, path = self.command, urlsplit(self.path).path.rstrip("/") or "/"
        self._body_read = self.headers.get("Content-Length", "0").strip() == "0" \
            and not self.headers.get("Transfer-Encoding")
        try:
            if path == "/health":  # open to probes: it says nothing about the model
                self._only(method, "GET")
                return self._send_json(200, {"status": "ok"})
            if not self.server.authorised(self.headers.get("Authorization")):
                raise ApiError(401, "a valid API key is required: send 'Authorization: Bearer <key>'", None,
                               "invalid_api_key")
            if path == "/v1/models":
                self._only(method, "GET")
                return self._send_json(200, {"object": "list",
                                             "data": [wire.model_card(self.server.model_name, self.server.started)]})
            if path.startswith("/v1/models/"):
                self._only(method, "GET")
                self._check_model(path[len("/v1/models/"):])
                return self._send_json(200, wire.model_card(self.server.model_name, self.server.started))
            if path == "/v1/chat/completions":
                self._only(method, "POST")
                return self._chat()
            raise ApiError(404, f"no such route: {method} {path[:100]}", None, "not_found")
        except _ClientGone:
            self._note = " (client went away)"
            self.close_connection = True
        except _Stopping:
            self._note = " (server stopping)"
            self.close_connection = True
        except ApiError as e:
            self._fail(e)
        except Exception as e:
            # The client gets a generic message; the detail goes to the server's log only.
            self.server.write_log(f"error: {method} {path[:100]} failed: {e.__class__.__name__}: {e}\n"
                                  + traceback.format_exc().rstrip(), always=True)
            self._fail(ApiError(500, "the server failed to answer this request (its log has the details)", None,
                                "internal_error"))

    def _only(self, method: str, allowed: str):
        if method != allowed:
            raise ApiError(405, f"use {allowed} here", None, "method_not_allowed")

    def _check_model(self, model: str | None):
        if model is not None and model != self.server.model_name:
            raise ApiError(404, f"the model {model[:100]!r} does not exist here; this server serves "
                           f"{self.server.model_name!r}", "model", "model_not_found")

    # ---- chat ------------------------------------------------------------------------------------

    def _chat(self):
        server = self.server
        req = wire.parse_chat(wire.parse_json(self._read_body()), server.limits, server.llm_only)
        self._check_model(req.model)
        test, reference = open_pair(req.images, server.limits)
        cid, created, model = wire.new_id(), int(time.time()), server.model_name
        if not req.stream:
            r = server.runner.run(req, test, reference, on_text=self._unless_stopping)
            return self._send_json(200, wire.completion(cid, model, created, r.text, r.finish_reason,
                                                        r.prompt_tokens, r.completion_tokens, r.sage))

        def send(event):
            self._unless_stopping()
            try:
                self.wfile.write(wire.sse(event))
            except OSError:  # broken pipe, reset, timeout: stop decoding for nobody
                raise _ClientGone() from None

        def start():
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")  # no Content-Length: the end of the stream ends the body
            self.end_headers()
            self._streaming, self.close_connection = True, True
            send(wire.chunk(cid, model, created, {"role": "assistant", "content": ""}))

        on_text = _Trimmed(lambda s: send(wire.chunk(cid, model, created, {"content": s})))
        r = server.runner.run(req, test, reference, on_start=start, on_text=on_text)
        send(wire.chunk(cid, model, created, {}, r.finish_reason, r.sage))
        if req.include_usage:
            send(wire.chunk(cid, model, created, None, usage_=wire.usage(r.prompt_tokens, r.completion_tokens)))
        send("[DONE]")

    def _unless_stopping(self, _text: str = ""):
        if self.server.stopping.is_set():
            raise _Stopping()

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise ApiError(411, "send the request body with a Content-Length", None, "length_required")
        try:
            n = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise ApiError(411, "send the request body with a Content-Length", None, "length_required") from None
        if n < 0:
            raise ApiError(400, "Content-Length is negative", None, "invalid_value")
        limit = self.server.limits.max_body_bytes
        if n > limit:
            raise ApiError(413, f"the request body is {n / wire.MB:.1f} MB, more than {limit / wire.MB:g} MB "
                           "(--max-body-mb)", None, "request_too_large")
        try:
            body = self.rfile.read(n) if n > 0 else b""
        except OSError:  # reset or timed out mid-upload
            raise _ClientGone() from None
        if len(body) < n:
            raise _ClientGone()
        self._body_read = True
        return body

    # ---- answers ---------------------------------------------------------------------------------

    def _fail(self, e: ApiError):
        if self._streaming:  # the 200 is out: say it in the stream (the openai client raises on it)
            try:
                self.wfile.write(wire.sse(e.body()))
            except OSError:
                pass
            self._note = f" (failed in the stream: {e.status})"
            return
        headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else {}
        # An unread body would be taken for the next request on this connection: close it instead.
        self._send_json(e.status, e.body(), headers, close=not self._body_read)

    def _send_json(self, status: int, obj: dict, headers: dict | None = None, close: bool = False):
        body = json.dumps(obj).encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            if close:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
        except OSError:
            self.close_connection = True
            self._note = " (client went away)"


class _Trimmed:
    """Passes decoded text on without its leading and trailing whitespace, so that the streamed pieces add
    up to exactly the content a non-streamed request gets (the engine strips the final text)."""

    def __init__(self, emit):
        self.emit, self.started, self.held = emit, False, ""

    def __call__(self, text: str):
        text = self.held + text
        if not self.started:
            text = text.lstrip()
            if not text:
                self.held = ""
                return
            self.started = True
        body = text.rstrip()
        self.held = text[len(body):]  # whitespace waits until more text follows it
        if body:
            self.emit(body)
