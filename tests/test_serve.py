"""`sage serve`: the OpenAI-compatible server, driven over real loopback HTTP by the `openai` client.

An in-process server (tiny random SAGE model, tight limits so the size guards are cheap to reach)
answers SAGE, zero-shot, text and streamed requests exactly like the Engine called directly; bad
requests get OpenAI-shaped 4xx errors and the server keeps serving; the real `sage serve` command
runs once as a subprocess.
"""

import base64
import http.client
import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import torch
from PIL import Image

from sage_cli.cli import run
from sage_cli.models.engine import Engine
from sage_cli.models.sage import SageModel
from sage_cli.serve.protocol import Limits
from sage_cli.serve.server import is_loopback, make_server
from tiny_models import save_tiny_internvl, tiny_composed, noise_image as _img

os.environ.setdefault("HF_HUB_OFFLINE", "1")
FACTS = ["Widgets often show scratches on the rim.", "A normal widget is uniformly grey."]
KEY = "sk-test-9f8e7d6c5b4a"
# Small enough to reach with tiny images; the 56x56 test images pass (noise PNG ~9.5 kB, 3,136 px).
LIMITS = Limits(max_tokens=16, max_body_bytes=200_000, max_image_bytes=20_000, max_image_pixels=100 * 100)


def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _part(img_or_bytes, media="image/png") -> dict:
    data = img_or_bytes if isinstance(img_or_bytes, bytes) else _png(img_or_bytes)
    return {"type": "image_url", "image_url": {"url": f"data:{media};base64,{base64.b64encode(data).decode()}"}}


def _ask(question, *images) -> list[dict]:
    return [{"role": "user", "content": [*(_part(i) for i in images), {"type": "text", "text": question}]}]


class Running:
    """A server from make_server on a free loopback port, in a background thread."""

    def __init__(self, engine, **kw):
        self.log = io.StringIO()
        self.server = make_server(engine, model_name="tiny", limits=LIMITS, log=self.log, **kw)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = self.server.url

    def client(self, key="none") -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url, api_key=key, max_retries=0, timeout=60)

    def raw(self, method, path, body=None, headers=None) -> tuple[int, dict | None]:
        """One plain HTTP request; (status, parsed JSON body or None)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=60)
        if isinstance(body, dict):
            body = json.dumps(body).encode()
        conn.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        try:
            return resp.status, json.loads(data)
        except ValueError:
            return resp.status, None

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def engine():
    torch.manual_seed(0)
    return Engine(SageModel(tiny_composed(), k_patches=2), "tiny")


@pytest.fixture(scope="module")
def srv(engine):
    s = Running(engine)
    yield s
    s.close()


def _good(srv) -> str:
    """A small request that must succeed: the server is still serving."""
    r = srv.client().chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
    assert r.choices[0].finish_reason in ("stop", "length")
    return r.choices[0].message.content


# ---------------------------------------------------------------------------------------------- answers


def test_models_list_and_health(srv):
    assert [m.id for m in srv.client().models.list()] == ["tiny"]
    assert srv.client().models.retrieve("tiny").id == "tiny"
    assert srv.raw("GET", "/health") == (200, {"status": "ok"})


def test_one_shot_answers_like_the_engine(srv, engine):
    """Two images = test then reference; facts come in the "sage" extension field."""
    test, ref = _img(1), _img(2)
    r = srv.client().chat.completions.create(model="tiny", messages=_ask("Is there a defect?", test, ref),
                                             max_tokens=8, extra_body={"sage": {"facts": FACTS}})
    want = engine.answer(engine.encode(test, ref, FACTS), "Is there a defect?", max_new_tokens=8)
    msg = r.choices[0].message
    assert msg.role == "assistant" and msg.content == want.text and r.model == "tiny"
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    assert r.usage.prompt_tokens == want.prompt_tokens and r.usage.completion_tokens == want.new_tokens
    assert r.usage.total_tokens == want.prompt_tokens + want.new_tokens
    assert r.choices[0].finish_reason == ("length" if want.new_tokens == 8 else "stop")
    sage = r.model_extra["sage"]
    assert 0.0 <= sage["p_yes"] <= 1.0 and sage["p_yes"] == pytest.approx(want.p_yes, abs=1e-5)
    a = sage["anomaly"]
    assert a["grid"] == list(engine.model.backbone.patch_grid) and 0 <= a["mean"] <= a["max"]
    assert len(a["peak"]) == 2 and len(a["selected"]) == 2


def test_zero_shot_has_p_yes_but_no_map(srv, engine):
    r = srv.client().chat.completions.create(model="tiny", messages=_ask("Is it broken?", _img(3)), max_tokens=4)
    want = engine.answer(engine.encode(_img(3), None, []), "Is it broken?", max_new_tokens=4)
    assert r.choices[0].message.content == want.text
    assert r.model_extra["sage"]["anomaly"] is None and 0.0 <= r.model_extra["sage"]["p_yes"] <= 1.0


def test_text_chat_passes_the_whole_conversation(srv, engine):
    msgs = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a defect."},
            {"role": "assistant", "content": "A crack."}, {"role": "user", "content": [{"type": "text", "text": "Another?"}]}]
    r = srv.client().chat.completions.create(model="tiny", messages=msgs, max_tokens=6)
    want = engine.chat([{**m, "content": "Another?"} if i == 3 else m for i, m in enumerate(msgs)], max_new_tokens=6)
    assert r.choices[0].message.content == want.text and r.usage.prompt_tokens == want.prompt_tokens
    assert "sage" not in (r.model_extra or {})


def test_seeded_sampling_repeats(srv):
    def once():
        return srv.client().chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Go"}],
                                                    max_tokens=8, temperature=1.0, seed=7).choices[0].message.content
    assert once() == once()


def test_stream_adds_up_to_the_plain_answer(srv):
    msgs = _ask("Describe the defect.", _img(5), _img(6))
    plain = srv.client().chat.completions.create(model="tiny", messages=msgs, max_tokens=12)
    chunks = list(srv.client().chat.completions.create(model="tiny", messages=msgs, max_tokens=12, stream=True,
                                                       stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content and len(chunks) > 3
    final = [c for c in chunks if c.choices and c.choices[0].finish_reason][-1]
    assert final.choices[0].finish_reason == plain.choices[0].finish_reason
    assert final.model_extra["sage"]["p_yes"] == pytest.approx(plain.model_extra["sage"]["p_yes"], abs=1e-6)
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens and not chunks[-1].choices
    # on the wire: SSE frames, the last one [DONE]
    conn = http.client.HTTPConnection("127.0.0.1", srv.server.port, timeout=60)
    conn.request("POST", "/v1/chat/completions", body=json.dumps({"model": "tiny", "messages": msgs, "max_tokens": 4,
                                                                  "stream": True}))
    resp = conn.getresponse()
    frames = resp.read().decode().split("\n\n")
    assert resp.getheader("Content-Type") == "text/event-stream"
    assert frames[-1] == "" and frames[-2] == "data: [DONE]"
    assert all(f.startswith("data: ") for f in frames[:-1])
    assert json.loads(frames[0][6:])["object"] == "chat.completion.chunk"


def test_concurrent_requests_each_get_their_own_answer(srv):
    """8 requests at once (half streamed) answer exactly as each does alone: the engine is serialised."""
    questions = [f"Question {i}: is there a {w}?" for i, w in
                 enumerate(["crack", "scratch", "stain", "hole", "cut", "dent", "burr", "chip"])]
    test, ref = _img(11), _img(12)

    def ask(i):
        kw = dict(model="tiny", messages=_ask(questions[i], test, ref), max_tokens=6)
        if i % 2:
            return "".join(c.choices[0].delta.content or "" for c in srv.client().chat.completions.create(
                stream=True, **kw) if c.choices)
        return srv.client().chat.completions.create(**kw).choices[0].message.content

    alone = [ask(i) for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(ask, range(8)))
    assert together == alone
    assert len(set(alone)) > 1  # different questions, different answers: the replies were not mixed up


# ---------------------------------------------------------------------------------------------- refusals


def _body(**kw) -> dict:
    return {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, **kw}


BAD = {
    "invalid json": (b'{"model": "tiny", "messages": [', 400, "invalid_json"),
    "not an object": (b"[1, 2]", 400, "invalid_json"),
    "no messages": (_body(messages=[]), 400, "invalid_value"),
    "bad role": (_body(messages=[{"role": "robot", "content": "x"}]), 400, "invalid_value"),
    "bad part": (_body(messages=[{"role": "user", "content": [{"type": "input_audio"}]}]), 400, "invalid_value"),
    "bad base64": (_body(messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@not base64@@"}}]}]), 400, "invalid_base64"),
    "http url": (_body(messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://example.com/a.png"}}]}]), 400, "invalid_image_url"),
    "not an image": (_body(messages=[{"role": "user", "content": [_part(b"hello, not a picture")]}]), 400,
                     "invalid_image"),
    "text media type": (_body(messages=[{"role": "user", "content": [_part(b"hi", "text/plain")]}]), 400,
                        "invalid_image"),
    "three images": (_body(messages=_ask("q", _img(1), _img(2), _img(3))), 400, "invalid_value"),
    "reference size": (_body(messages=_ask("q", _img(1), _img(2, (42, 42)))), 400, "invalid_image"),
    "oversized image": (_body(messages=_ask("q", _img(1, (90, 90)))), 413, "request_too_large"),
    # 6.6 kB of PNG that would decode to 2.25 M pixels: refused from its header
    "pixel bomb": (_body(messages=[{"role": "user", "content": [_part(_png(Image.new("RGB", (1500, 1500))))]}]),
                   413, "request_too_large"),
    "body too large": (_body(pad="x" * 250_000), 413, "request_too_large"),
    "too many tokens": (_body(max_tokens=17), 400, "too_many_tokens"),
    "context": (_body(messages=[{"role": "user", "content": "word " * 120}], max_tokens=16), 400,
                "context_length_exceeded"),
    "context, streamed": (_body(messages=[{"role": "user", "content": "word " * 120}], max_tokens=16, stream=True),
                          400, "context_length_exceeded"),
    "n=2": (_body(n=2), 400, "unsupported_value"),
    "temperature": (_body(temperature=5), 400, "invalid_value"),
    "wrong model": (_body(model="gpt-4o"), 404, "model_not_found"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_request_is_refused_and_the_server_goes_on(srv, case):
    body, status, code = BAD[case]
    got, err = srv.raw("POST", "/v1/chat/completions", body)
    assert got == status, err
    assert err["error"]["code"] == code and err["error"]["message"]
    if case == "pixel bomb":
        assert "1500x1500 pixels" in err["error"]["message"]
    assert err["error"]["type"] == "invalid_request_error" and "param" in err["error"]
    assert _good(srv) is not None


def test_routes_and_methods(srv):
    assert srv.raw("GET", "/v1/nothing")[0] == 404
    assert srv.raw("GET", "/v1/chat/completions")[0] == 405
    assert srv.raw("GET", "/v1/models/other")[1]["error"]["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        srv.client().chat.completions.create(model="other", messages=[{"role": "user", "content": "Hi"}])
    with pytest.raises(openai.BadRequestError, match="at most 16"):
        srv.client().chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=99)
    assert re.search(r"^POST /v1/chat/completions 400 \d+ ms$", srv.log.getvalue(), re.M)
    _good(srv)


def test_engine_failure_is_a_generic_500(engine, monkeypatch):
    s = Running(engine)
    try:
        def boom(*a, **k):
            raise RuntimeError("CUDA exploded at /secret/path")
        monkeypatch.setattr(engine, "answer_batch", boom)
        status, err = s.raw("POST", "/v1/chat/completions", _body())
        assert status == 500 and err["error"]["type"] == "server_error"
        assert "secret" not in err["error"]["message"] and "Traceback" not in json.dumps(err)
        assert "CUDA exploded" in s.log.getvalue()  # the detail is in the server's log
        monkeypatch.undo()
        assert _good(s)
    finally:
        s.close()


def test_engine_failure_in_a_stream_is_an_error_event(engine, monkeypatch):
    s = Running(engine)
    try:
        def half(prompts):
            prompts[0].on_text("Part of an answer")
            raise RuntimeError("decoder fell over")
        monkeypatch.setattr(engine, "answer_batch", half)
        with pytest.raises(openai.APIError, match="failed to answer"):
            for _ in s.client().chat.completions.create(model="tiny", messages=_ask("q", _img(1)), stream=True):
                pass
        assert "decoder fell over" in s.log.getvalue()
        monkeypatch.undo()
        assert _good(s)
    finally:
        s.close()


def test_a_client_leaving_mid_stream_does_not_stall_the_server(srv):
    body = json.dumps(_body(messages=_ask("Describe it.", _img(1), _img(2)), max_tokens=16, stream=True)).encode()
    with socket.create_connection(("127.0.0.1", srv.server.port), timeout=30) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        got = b""
        while b"data: " not in got:  # the stream started; now hang up
            got += sock.recv(4096)
    assert _good(srv)


def test_llm_only_refuses_images_and_quiet_logs_nothing(engine):
    s = Running(engine, llm_only=True, quiet=True)
    try:
        status, err = s.raw("POST", "/v1/chat/completions", _body(messages=_ask("q", _img(1))))
        assert status == 400 and "--llm-only" in err["error"]["message"]
        assert _good(s)
        assert s.log.getvalue() == ""
    finally:
        s.close()


def test_bearer_key_is_required_and_never_logged(engine):
    s = Running(engine, api_key=KEY)
    try:
        assert s.raw("GET", "/v1/models")[0] == 401
        status, err = s.raw("GET", "/v1/models", headers={"Authorization": "Bearer wrong-key"})
        assert status == 401 and err["error"]["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            s.client("also-wrong").models.list()
        assert s.raw("GET", "/health")[0] == 200  # probes need no key
        assert _good_with(s.client(KEY))
        assert s.raw("GET", "/v1/models?key=" + KEY, headers={"Authorization": f"Bearer {KEY}"})[0] == 200
        log = s.log.getvalue()
        assert "GET /v1/models 401" in log and KEY not in log and "wrong-key" not in log
    finally:
        s.close()


def _good_with(client) -> bool:
    return client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}],
                                          max_tokens=2).choices[0].message.content is not None


def test_loopback_hosts():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.10")


# ---------------------------------------------------------------------------------------------- the command


def test_command_refuses_a_busy_port_before_loading(capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert run(["serve", "--backbone", "never-loaded", "--port", str(port)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "already in use" in err and err.count("\n") == 1


def test_command_needs_the_key_it_was_told_to_read(capsys, monkeypatch):
    monkeypatch.delenv("SAGE_NO_SUCH_KEY", raising=False)
    assert run(["serve", "--api-key-env", "SAGE_NO_SUCH_KEY", "--port", "0"]) == 1
    assert "SAGE_NO_SUCH_KEY" in capsys.readouterr().err


def test_sage_serve_command_end_to_end(tmp_path):
    """`python -m sage_cli serve` on a tiny InternVL: prints its URL, answers, stops cleanly on SIGTERM."""
    vlm = save_tiny_internvl(tmp_path / "tiny-internvl")
    env = {**os.environ, "SAGE_TEST_KEY": KEY, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "sage_cli", "serve", "--backbone", str(vlm), "--port", "0",
                             "--api-key-env", "SAGE_TEST_KEY", "--max-tokens", "8"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = _read_line(proc, timeout=90)
        m = re.fullmatch(r"serving tiny-internvl at (http://127\.0\.0\.1:\d+/v1)\n", line)
        assert m, line
        client = openai.OpenAI(base_url=m.group(1), api_key=KEY, max_retries=0, timeout=60)
        r = client.chat.completions.create(model="tiny-internvl", messages=_ask("Is there a defect?", _img(1)),
                                           max_tokens=4)
        assert r.usage.completion_tokens <= 4 and 0.0 <= r.model_extra["sage"]["p_yes"] <= 1.0
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=m.group(1), api_key="nope", max_retries=0).models.list()
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "POST /v1/chat/completions 200" in err and "GET /v1/models 401" in err and "stopped" in err
    assert KEY not in err and KEY not in out and "Traceback" not in err


def _read_line(proc, timeout: float) -> str:
    """The first stdout line, or fail with the server's stderr if it does not come."""
    got: list[str] = []
    t = threading.Thread(target=lambda: got.append(proc.stdout.readline()), daemon=True)
    t.start()
    t.join(timeout)
    if not got or not got[0]:
        proc.kill()
        pytest.fail(f"sage serve printed no URL within {timeout} s: {proc.stderr.read()[-2000:]}")
    return got[0]
