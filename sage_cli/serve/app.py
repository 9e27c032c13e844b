"""The ASGI app of `sage serve` (FastAPI): routes, bearer auth, body limits, request ids, metrics, errors.

Every request passes through `Gate` (a plain ASGI middleware, so streams are not buffered): it gives
the response an `X-Request-Id`, checks the bearer key, writes the access line, counts the request and
turns anything unexpected into a generic OpenAI-shaped 500 (the traceback goes to the server's log
only). Chat requests are admitted to the model worker's bounded queue (`worker.Worker`) and their
events come back through an asyncio queue.
"""

from __future__ import annotations

import asyncio
import hmac
import re
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from sage_cli.serve import protocol as wire
from sage_cli.serve import schemas
from sage_cli.serve.generate import Runner
from sage_cli.serve.metrics import Metrics
from sage_cli.serve.protocol import ApiError
from sage_cli.serve.worker import Job, Worker

BODY_TIMEOUT_S = 120.0  # the most a client may take to upload its body
# no key needed ("/" is the page; it asks for the key itself and sends it to /v1 only)
OPEN_PATHS = ("/", "/health", "/metrics", "/docs", "/docs/oauth2-redirect", "/openapi.json")
PAGE = Path(__file__).with_name("page.html")  # the web page at "/": one file, inline JS and CSS
# The page may talk to this server only, run its own inline script and show the images it was given.
PAGE_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
                "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                                           "img-src 'self' blob: data:; connect-src 'self'; base-uri 'none'; "
                                           "form-action 'none'; frame-ancestors 'none'"}
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class ClientGone(Exception):
    """The client closed the connection before its answer was complete."""


@dataclass
class ServeState:
    runner: Runner
    model_name: str
    api_key: bytes | None
    llm_only: bool
    request_timeout_s: float
    write_log: object  # (line, always=False) -> None
    metrics: Metrics = None
    worker: Worker = None
    started: int = field(default_factory=lambda: int(time.time()))
    stopping: threading.Event = field(default_factory=threading.Event)

    @property
    def limits(self):
        return self.runner.limits

    def authorised(self, header: str | None) -> bool:
        if self.api_key is None:
            return True
        scheme, _, token = (header or "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        # ASGI header values are bytes; the server decodes them as latin-1: back to the raw bytes.
        return hmac.compare_digest(token.strip().encode("latin-1", "replace"), self.api_key)


def build_app(state: ServeState):
    """The FastAPI app wrapped in the Gate (the object uvicorn serves)."""
    app = FastAPI(title="sage serve", version="1", description=_DESCRIPTION, redoc_url=None)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError):
        return _error_response(state, e)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        message = {404: f"no such route: {request.method} {request.url.path[:100]}",
                   405: "this route does not take " + request.method}.get(e.status_code, str(e.detail))
        return _error_response(state, ApiError(e.status_code, message, None, code))

    @app.exception_handler(ClientGone)
    async def client_gone(request: Request, e: ClientGone):
        request.state.note = " (client went away)"
        return Response(status_code=499)  # nobody reads it; the log and the metrics do

    @app.exception_handler(Exception)
    async def unexpected(request: Request, e: Exception):  # Starlette re-raises it: the Gate logs it
        return _error_response(state, _internal())

    err = {"model": schemas.ErrorResponse}

    @app.get("/", include_in_schema=False)
    async def page():
        """The web page: pick a test (and reference) image, ask, watch the answer stream in."""
        return HTMLResponse(PAGE.read_text(encoding="utf-8"), headers=PAGE_HEADERS)

    @app.get("/health", tags=["probes"])
    async def health():
        """Open to probes (no key): it says nothing about the model."""
        return {"status": "ok"}

    @app.get("/metrics", tags=["probes"], response_class=PlainTextResponse)
    async def metrics():
        """Prometheus text format: requests by status, queue depth, time to first token, errors."""
        return PlainTextResponse(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models", response_model=schemas.ModelList, responses={401: err})
    async def models():
        return {"object": "list", "data": [wire.model_card(state.model_name, state.started)]}

    @app.get("/v1/models/{model:path}", response_model=schemas.ModelCard, responses={401: err, 404: err})
    async def model(model: str):
        _check_model(state, model)
        return wire.model_card(state.model_name, state.started)

    chat_schema = schemas.ChatCompletionRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    extra_schemas = chat_schema.pop("$defs", {})

    @app.post("/v1/chat/completions", response_model=schemas.ChatCompletion,
              responses={200: {"content": {"text/event-stream": {}}, "description": "chat.completion, or its "
                                           "chunks as Server-Sent Events with stream: true"},
                         400: err, 401: err, 404: err, 413: err, 503: err, 504: err},
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                  "schema": {"$ref": "#/components/schemas/ChatCompletionRequest"}}}}})
    async def chat(request: Request):
        return await _chat(state, request)

    def openapi():
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            comps = spec.setdefault("components", {}).setdefault("schemas", {})
            comps.update(extra_schemas)
            comps["ChatCompletionRequest"] = chat_schema
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi
    return Gate(app, state)


_DESCRIPTION = ("OpenAI-compatible chat over a SAGE model. Images go inline as data URLs in the last user "
                "message (TEST, then the optional REFERENCE); facts in the extension field "
                '"sage": {"facts": [...]}. Send "Authorization: Bearer KEY" when the server has a key.')


# ---------------------------------------------------------------------------------------------- chat


async def _chat(state: ServeState, request: Request):
    worker, limits = state.worker, state.limits
    if state.stopping.is_set():
        raise ApiError(503, "the server is stopping", None, "server_stopping")
    worker.reserve()  # 503 when the queue is full, before the body is read
    try:
        body = await _read_body(request, limits.max_body_bytes, min(state.request_timeout_s, BODY_TIMEOUT_S))
        req = await run_in_threadpool(_parse, body, limits, state.llm_only)  # off the event loop
        del body  # its images live on, decoded from base64, in req until the worker has run it
        _check_model(state, req.model)
    except BaseException:
        worker.unreserve()
        raise
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()
    job = Job(req, lambda ev: loop.call_soon_threadsafe(events.put_nowait, ev), req.stream)
    worker.submit(job)  # the images are decoded on the worker, just before the model runs
    deadline = loop.time() + state.request_timeout_s
    gone = asyncio.Event()
    watcher = asyncio.create_task(_watch_disconnect(request, job, worker, gone))
    streaming = False
    try:
        while True:
            ev = await _next(events, deadline, job, state)
            if ev[0] == "start":
                if req.stream:
                    break
                continue
            if ev[0] == "done":
                r = ev[1]
                return JSONResponse(wire.completion(wire.new_id(), state.model_name, int(time.time()), r.text,
                                                    r.finish_reason, r.prompt_tokens, r.completion_tokens, r.sage))
            if ev[0] == "error":
                raise ev[1]
            if ev[0] == "cancelled":
                if gone.is_set():
                    raise ClientGone()
                raise ApiError(503, "the server is stopping", None, "server_stopping")
        watcher.cancel()  # from here Starlette's StreamingResponse listens for the disconnect
        streaming = True
        return StreamingResponse(_stream(state, request, job, events, deadline),
                                 headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    finally:
        watcher.cancel()
        if not streaming:
            worker.cancel(job)  # a no-op when it is done; frees the slot when we stop waiting early


async def _stream(state: ServeState, request: Request, job: Job, events: asyncio.Queue, deadline: float):
    cid, created, model = wire.new_id(), int(time.time()), state.model_name
    try:
        yield wire.sse(wire.chunk(cid, model, created, {"role": "assistant", "content": ""}))
        while True:
            try:
                ev = await _next(events, deadline, job, state)
            except ApiError as e:
                ev = ("error", e)
            kind = ev[0]
            if kind == "text":
                yield wire.sse(wire.chunk(cid, model, created, {"content": ev[1]}))
            elif kind == "done":
                r = ev[1]
                yield wire.sse(wire.chunk(cid, model, created, {}, r.finish_reason, r.sage))
                if job.req.include_usage:
                    yield wire.sse(wire.chunk(cid, model, created, None,
                                              usage_=wire.usage(r.prompt_tokens, r.completion_tokens)))
                yield wire.sse("[DONE]")
                return
            elif kind == "error":  # the 200 is out: say it in the stream (the openai client raises on it)
                e = ev[1]
                state.metrics.error(e.code)
                request.state.note = f" (failed in the stream: {e.status})"
                yield wire.sse(e.body())
                return
            elif kind == "cancelled":
                request.state.note = " (server stopping)"
                return
    finally:
        state.worker.cancel(job)  # the client left (Starlette cancelled us) or we are done


async def _next(events: asyncio.Queue, deadline: float, job: Job, state: ServeState):
    left = deadline - asyncio.get_running_loop().time()
    try:
        return await asyncio.wait_for(events.get(), timeout=max(left, 0.001))
    except asyncio.TimeoutError:
        state.worker.cancel(job)
        raise ApiError(504, f"the request took longer than {state.request_timeout_s:g} s (--request-timeout)",
                       None, "timeout") from None


async def _watch_disconnect(request: Request, job: Job, worker: Worker, gone: asyncio.Event):
    """The body is read: the next message the server gives is the client's disconnect."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            gone.set()
            worker.cancel(job)
            return


async def _read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The whole body within `timeout_s` (a stalled upload must not hold its place in the queue)."""
    try:
        return await asyncio.wait_for(_read_all(request, limit), timeout=timeout_s)
    except asyncio.TimeoutError:
        raise ApiError(408, f"the request body did not arrive within {timeout_s:g} s", None,
                       "request_timeout") from None


async def _read_all(request: Request, limit: int) -> bytes:
    def too_big(n: float):
        return ApiError(413, f"the request body is {n / wire.MB:.1f} MB, more than {limit / wire.MB:g} MB "
                        "(--max-body-mb)", None, "request_too_large")

    length = request.headers.get("content-length")
    if length is not None:
        try:
            n = int(length)
        except ValueError:
            raise ApiError(400, "Content-Length is not a number", None, "invalid_value") from None
        if n > limit:
            raise too_big(n)
    chunks, total = [], 0
    try:
        async for piece in request.stream():
            total += len(piece)
            if total > limit:  # a chunked upload with no Content-Length: counted as it comes
                raise too_big(total)
            chunks.append(piece)
    except ClientDisconnect:
        raise ClientGone() from None
    return b"".join(chunks)


def _parse(body: bytes, limits, llm_only: bool) -> wire.ChatRequest:
    return wire.parse_chat(wire.parse_json(body), limits, llm_only)


def _check_model(state: ServeState, model: str | None):
    if model is not None and model != state.model_name:
        raise ApiError(404, f"the model {model[:100]!r} does not exist here; this server serves "
                       f"{state.model_name!r}", "model", "model_not_found")


def _internal() -> ApiError:
    return ApiError(500, "the server failed to answer this request (its log has the details)", None,
                    "internal_error")


def _error_response(state: ServeState, e: ApiError) -> JSONResponse:
    state.metrics.error(e.code)
    headers = dict(e.headers)
    if e.status == 401:
        headers.setdefault("WWW-Authenticate", "Bearer")
    return JSONResponse(e.body(), status_code=e.status, headers=headers)


# ---------------------------------------------------------------------------------------------- the gate


class Gate:
    """Plain ASGI middleware around the app: request id, bearer key, access line, metrics, last-resort 500."""

    def __init__(self, app, state: ServeState):
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        state, t0 = self.state, time.perf_counter()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        asked = headers.get("x-request-id", "")
        rid = asked if _REQUEST_ID.fullmatch(asked) else "req-" + uuid.uuid4().hex
        scope.setdefault("state", {})["note"] = ""
        status = None

        async def send_with_id(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", rid.encode())]}
            await send(message)

        if len(scope.get("path", "")) > 1 and scope["path"].endswith("/"):  # /v1/models/ is /v1/models
            scope["path"] = scope["path"].rstrip("/") or "/"
        method, path = scope.get("method", "-"), scope.get("path", "") or "-"
        try:
            if path not in OPEN_PATHS and not state.authorised(headers.get("authorization")):
                e = ApiError(401, "a valid API key is required: send 'Authorization: Bearer <key>'", None,
                             "invalid_api_key")
                await _error_response(state, e)(scope, receive, send_with_id)
            else:
                await self.app(scope, receive, send_with_id)
        except Exception as e:
            # The client gets a generic message; the detail goes to the server's log only.
            state.write_log(f"error: {method} {path[:100]} failed: {e.__class__.__name__}: {e}\n"
                            + traceback.format_exc().rstrip(), always=True)
            if status is None:
                try:
                    await _error_response(state, _internal())(scope, receive, send_with_id)
                except Exception:
                    pass
        finally:
            ms = (time.perf_counter() - t0) * 1000
            note = scope["state"].get("note", "")
            # The path only: a query string may hold secrets.
            state.write_log(f"{method} {path[:200]} {status if status is not None else '-'} {ms:.0f} ms{note}")
            state.metrics.request(method, path, status)
