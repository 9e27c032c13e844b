"""`sage serve` on the ASGI stack: client mistakes are 4xx (never a 500), the bounded queue (503 with
Retry-After), the per-request timeout, a disconnected client's slot, request ids, /metrics and /docs.

Over real loopback HTTP, on the tiny random SAGE model; a slow model is a monkeypatched `engine.chat`
that waits on an event.
"""

import http.client
import json
import os
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from sage_cli.models.engine import Answer
from test_serve import LIMITS, Running, _ask, _body, _good, engine, srv  # noqa: F401  (fixtures: one per module)
from tiny_models import noise_image as _img

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _raw(srv, method, path, body=None, headers=None):
    """(status, headers dict in lower case, body bytes)."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.server.port, timeout=60)
    if isinstance(body, dict):
        body = json.dumps(body).encode()
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data


class SlowModel:
    """The engine's batch waits until `release` is set; `started` tells that a request is on the model."""

    def __init__(self, engine, monkeypatch):
        self.started, self.release, real = threading.Event(), threading.Event(), engine.answer_batch

        def slow(*a, **kw):
            self.started.set()
            self.release.wait(30)
            return real(*a, **kw)

        monkeypatch.setattr(engine, "answer_batch", slow)


def _wait_for(cond, timeout=10.0):
    t = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < t, "timed out waiting"
        time.sleep(0.02)


# ---------------------------------------------------------------------------------------------- client mistakes


@pytest.mark.parametrize("stream", [False, True])
def test_a_seed_out_of_range_is_a_400_not_a_500(srv, stream):
    status, err = srv.raw("POST", "/v1/chat/completions", _body(seed=2**64, stream=stream))
    assert status == 400 and err["error"]["param"] == "seed" and err["error"]["code"] == "invalid_value"
    status, err = srv.raw("POST", "/v1/chat/completions", _body(seed=-(2**63) - 1, stream=stream))
    assert status == 400
    for ok in (2**64 - 1, -(2**63)):
        assert srv.raw("POST", "/v1/chat/completions", _body(seed=ok, temperature=1.0, stream=stream))[0] == 200
    assert "Traceback" not in srv.log.getvalue() and " 500 " not in srv.log.getvalue()


def test_json_nested_100000_deep_is_a_400(engine):
    s = Running(engine)
    s.server.state.runner.limits = LIMITS.__class__(**{**LIMITS.__dict__, "max_body_bytes": 1_000_000})
    try:
        for body in (b"[" * 100_000 + b"]" * 100_000,
                     b'{"model": "tiny", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"):
            status, err = s.raw("POST", "/v1/chat/completions", body)
            assert status == 400 and err["error"]["code"] == "invalid_json", err
            assert "nested too deeply" in err["error"]["message"]
        assert _good(s)
        assert "Traceback" not in s.log.getvalue()
    finally:
        s.close()


def test_a_get_with_a_body_on_keep_alive_is_not_taken_for_the_next_request(srv):
    conn = http.client.HTTPConnection("127.0.0.1", srv.server.port, timeout=30)
    conn.request("GET", "/v1/models", body=b"GET /v1/nothing HTTP/1.1\r\nHost: x\r\n\r\n")
    first = conn.getresponse()
    assert first.status == 200 and json.loads(first.read())["data"][0]["id"] == "tiny"
    conn.request("GET", "/health")  # the same connection
    second = conn.getresponse()
    assert (second.status, json.loads(second.read())) == (200, {"status": "ok"})
    conn.close()
    assert "/v1/nothing" not in srv.log.getvalue()


def test_a_chunked_body_is_counted_against_the_limit(srv):
    def chunks():
        for _ in range(30):
            yield b"x" * 10_000  # 300 kB, no Content-Length

    conn = http.client.HTTPConnection("127.0.0.1", srv.server.port, timeout=30)
    conn.request("POST", "/v1/chat/completions", body=chunks(), encode_chunked=True,
                 headers={"Transfer-Encoding": "chunked", "Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 413 and json.loads(resp.read())["error"]["code"] == "request_too_large"
    conn.close()
    assert _good(srv)


# ---------------------------------------------------------------------------------------------- the queue


def test_past_max_queue_a_request_gets_503_with_retry_after(engine, monkeypatch):
    s = Running(engine, max_queue=1)
    slow = SlowModel(engine, monkeypatch)
    try:
        with ThreadPoolExecutor(2) as pool:
            running = pool.submit(s.raw, "POST", "/v1/chat/completions", _body())
            assert slow.started.wait(10)
            waiting = pool.submit(s.raw, "POST", "/v1/chat/completions", _body())
            _wait_for(lambda: s.server.state.worker.depth == 1)
            status, headers, data = _raw(s, "POST", "/v1/chat/completions", _body())
            err = json.loads(data)["error"]
            assert status == 503 and err["code"] == "server_overloaded" and err["type"] == "server_error"
            assert int(headers["retry-after"]) >= 1
            metrics = _raw(s, "GET", "/metrics")[2].decode()
            assert "sage_queue_depth 1\n" in metrics and "sage_requests_running 1\n" in metrics
            slow.release.set()
            assert running.result()[0] == 200 and waiting.result()[0] == 200
    finally:
        slow.release.set()
        s.close()


def test_a_request_past_its_timeout_gets_504_and_the_server_goes_on(engine, monkeypatch):
    s = Running(engine, request_timeout_s=0.5)
    slow = SlowModel(engine, monkeypatch)
    try:
        t0 = time.monotonic()
        status, err = s.raw("POST", "/v1/chat/completions", _body())
        assert status == 504 and err["error"]["code"] == "timeout" and time.monotonic() - t0 < 5
        slow.release.set()
        monkeypatch.undo()
        assert _good(s)
    finally:
        slow.release.set()
        s.close()


def test_a_client_that_leaves_the_queue_frees_its_slot(engine, monkeypatch):
    s = Running(engine, max_queue=1)
    slow = SlowModel(engine, monkeypatch)
    try:
        with ThreadPoolExecutor(2) as pool:
            running = pool.submit(s.raw, "POST", "/v1/chat/completions", _body())
            assert slow.started.wait(10)
            body = json.dumps(_body()).encode()
            with socket.create_connection(("127.0.0.1", s.server.port), timeout=10) as sock:
                sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                _wait_for(lambda: s.server.state.worker.depth == 1)
            _wait_for(lambda: s.server.state.worker.depth == 0)  # hung up: out of the queue
            third = pool.submit(s.raw, "POST", "/v1/chat/completions", _body())
            _wait_for(lambda: s.server.state.worker.depth == 1)
            slow.release.set()
            assert running.result()[0] == 200 and third.result()[0] == 200
        assert "(client went away)" in s.log.getvalue()
    finally:
        slow.release.set()
        s.close()


def test_a_burst_of_connections_is_served_not_reset(srv):
    """48 chat requests and 48 model lists at once (the old server's listen queue was 5)."""
    def one(i):
        if i % 2:
            return srv.raw("GET", "/v1/models")[0]
        return srv.raw("POST", "/v1/chat/completions", _body(max_tokens=1))[0]

    with ThreadPoolExecutor(96) as pool:
        assert list(pool.map(one, range(96))) == [200] * 96


# ---------------------------------------------------------------------------------------------- ids, metrics, docs


def test_every_response_has_a_request_id(engine):
    s = Running(engine, api_key="sk-k")
    try:
        auth = {"Authorization": "Bearer sk-k"}
        seen = []
        for method, path, body, headers, status in [
                ("GET", "/health", None, {}, 200), ("GET", "/v1/models", None, {}, 401),
                ("GET", "/v1/nothing", None, auth, 404), ("GET", "/v1/chat/completions", None, auth, 405),
                ("POST", "/v1/chat/completions", b"{", auth, 400),
                ("POST", "/v1/chat/completions", _body(stream=True), auth, 200)]:
            got, h, _ = _raw(s, method, path, body, headers)
            assert got == status and re.fullmatch(r"req-[0-9a-f]{32}", h["x-request-id"]), (path, h)
            seen.append(h["x-request-id"])
        assert len(set(seen)) == len(seen)
        assert _raw(s, "GET", "/health", headers={"X-Request-Id": "trace-42.a"})[1]["x-request-id"] == "trace-42.a"
        assert _raw(s, "GET", "/health", headers={"X-Request-Id": "bad id\x7f"})[1]["x-request-id"].startswith("req-")
    finally:
        s.close()


def test_metrics_count_requests_errors_and_first_tokens(srv):
    _good(srv)
    srv.raw("POST", "/v1/chat/completions", b"not json")
    status, headers, data = _raw(srv, "GET", "/metrics")
    text = data.decode()
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert re.search(r'^sage_requests_total\{method="POST",route="/v1/chat/completions",status="200"\} [1-9]', text, re.M)
    assert re.search(r'^sage_requests_total\{method="POST",route="/v1/chat/completions",status="400"\} [1-9]', text, re.M)
    assert re.search(r'^sage_errors_total\{code="invalid_json"\} [1-9]', text, re.M)
    assert "sage_queue_depth 0\n" in text
    count = int(re.search(r"^sage_time_to_first_token_seconds_count (\d+)$", text, re.M).group(1))
    inf = int(re.search(r'^sage_time_to_first_token_seconds_bucket\{le="\+Inf"\} (\d+)$', text, re.M).group(1))
    assert count >= 1 and inf == count


def test_docs_describe_the_bodies(srv):
    status, _, data = _raw(srv, "GET", "/openapi.json")
    spec = json.loads(data)
    assert status == 200 and "/v1/chat/completions" in spec["paths"] and "/metrics" in spec["paths"]
    schemas = spec["components"]["schemas"]
    assert {"ChatCompletionRequest", "ChatCompletion", "ModelList", "ErrorResponse", "Message"} <= set(schemas)

    def refs(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "$ref":
                    yield v
                else:
                    yield from refs(v)
        elif isinstance(node, list):
            for v in node:
                yield from refs(v)

    for ref in refs(spec):
        assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in schemas, ref
    assert _raw(srv, "GET", "/docs")[0] == 200


def test_images_still_answer_through_the_worker(srv, engine):
    r = srv.client().chat.completions.create(model="tiny", messages=_ask("Is it broken?", _img(3)), max_tokens=4)
    assert r.choices[0].message.content == engine.answer(engine.encode(_img(3), None, []), "Is it broken?",
                                                         max_new_tokens=4).text


def test_a_body_being_uploaded_holds_a_place_in_the_queue(engine):
    """Bodies in memory are bounded by --max-queue: a slow upload counts, and gives its place back when it
    is abandoned."""
    s = Running(engine, max_queue=1)
    try:
        with socket.create_connection(("127.0.0.1", s.server.port), timeout=10) as sock:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 5000\r\n\r\n{\"model\": ")
            _wait_for(lambda: s.server.state.worker._reserved == 1)
            status, headers, _ = _raw(s, "POST", "/v1/chat/completions", _body())
            assert status == 503 and "retry-after" in headers
        _wait_for(lambda: s.server.state.worker._reserved == 0)
        assert _good(s)
    finally:
        s.close()


def test_a_trailing_slash_is_the_same_route(srv):
    status, body = srv.raw("GET", "/v1/models/")
    assert status == 200 and body["data"][0]["id"] == "tiny"


def test_shutdown_ends_a_stream_in_flight_promptly(engine, monkeypatch):
    s = Running(engine)
    on_model = threading.Event()

    def endless(prompts):  # a model that stops only when its text callback says so (the client left)
        on_model.set()
        while prompts[0].on_text(" word") is not False:
            time.sleep(0.01)
        return [Answer(p.question, "", None, 0, 0, 0.0, 0.0) for p in prompts]

    monkeypatch.setattr(engine, "answer_batch", endless)
    closed = False
    try:
        with ThreadPoolExecutor(1) as pool:
            streamed = pool.submit(_raw, s, "POST", "/v1/chat/completions", _body(stream=True))
            assert on_model.wait(10)
            t0 = time.monotonic()
            s.close()
            closed = True
            assert time.monotonic() - t0 < 5
            status, _, data = streamed.result(timeout=10)
        assert status == 200 and data.startswith(b"data: ") and b"[DONE]" not in data
        assert "Traceback" not in s.log.getvalue() and not s.server.state.worker._thread.is_alive()
    finally:
        if not closed:
            s.close()


def test_a_stalled_upload_times_out_and_gives_its_place_back(engine):
    s = Running(engine, max_queue=1, request_timeout_s=0.5)
    try:
        with socket.create_connection(("127.0.0.1", s.server.port), timeout=10) as sock:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 5000\r\n\r\n{\"model\": ")
            got = b""
            while b"\r\n\r\n" not in got:
                got += sock.recv(4096)
            assert got.startswith(b"HTTP/1.1 408 ")
        _wait_for(lambda: s.server.state.worker._reserved == 0)
        assert _good(s)
    finally:
        s.close()


def test_a_half_sent_request_held_open_does_not_hold_the_others(srv):
    with socket.create_connection(("127.0.0.1", srv.server.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 5000\r\n\r\n{\"model\": ")  # and nothing more while the others ask
        t0 = time.monotonic()
        with ThreadPoolExecutor(3) as pool:
            assert all(pool.map(lambda _: _good(srv), range(3)))
        assert time.monotonic() - t0 < 30
