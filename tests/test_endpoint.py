"""The OpenAI-compatible endpoint client against a real HTTP server on loopback."""

import base64
import io
import json
import logging
import socket

import pytest

from openai_server import FakeOpenAI, Reply
from sage_cli.config import EndpointConfig
from sage_cli.endpoint import Endpoint, EndpointError, RequestRejected, image_part, normalize_base_url
from sage_cli.errors import SageError

MSG = [{"role": "user", "content": "hello"}]
SECRET = "sk-test-do-not-leak-4711"


def fast(url, **kw) -> Endpoint:
    """An Endpoint with short waits, for tests."""
    kw.setdefault("backoff", 0.01)
    kw.setdefault("timeout", 5)
    return Endpoint(url, **kw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("given, expected", [
    ("http://127.0.0.1:8000", "http://127.0.0.1:8000/v1"),
    ("http://127.0.0.1:8000/", "http://127.0.0.1:8000/v1"),
    ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1"),
    ("http://127.0.0.1:8000/v1/", "http://127.0.0.1:8000/v1"),
    ("https://example.org/api/openai", "https://example.org/api/openai"),
])
def test_base_url_with_or_without_v1(given, expected):
    assert normalize_base_url(given) == expected


@pytest.mark.parametrize("bad", ["", "localhost:8000", "ftp://h/v1", "http://", "http://h:notaport/v1"])
def test_bad_base_url(bad):
    with pytest.raises(SageError, match="must look like http://host:port/v1"):
        Endpoint(bad)


def test_check_picks_the_only_model_and_chat_works():
    with FakeOpenAI(lambda body, n: Reply(f"echo {body['messages'][-1]['content']}")) as srv:
        port_only = srv.url[: -len("/v1")]
        ep = fast(port_only)  # no /v1: added
        assert ep.check() == "judge-1" and ep.model == "judge-1"
        assert ep.chat(MSG, max_tokens=5) == "echo hello"
        body = srv.chat_requests()[0]["body"]
        assert body["model"] == "judge-1" and body["max_tokens"] == 5 and body["temperature"] == 0.0
        assert "response_format" not in body
        ep.chat(MSG, response_format={"type": "json_object"})
        assert srv.chat_requests()[1]["body"]["response_format"] == {"type": "json_object"}
        assert ep.describe() == f"judge-1 @ {srv.url}"


def test_check_model_not_served_and_ambiguous():
    with FakeOpenAI(models=("a", "b")) as srv:
        with pytest.raises(EndpointError) as e:
            fast(srv.url, model="c").check()
        assert str(e.value) == f"the endpoint {srv.url} does not serve the model 'c' (it serves: a, b)"
        with pytest.raises(EndpointError, match="serves 2 models .*choose one with --model"):
            fast(srv.url).check()
        assert fast(srv.url, model="b").check() == "b"
        assert [r["method"] for r in srv.requests] == ["GET", "GET", "GET"]  # one GET per check


def test_unreachable_names_the_url():
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(EndpointError) as e:
        fast(url, max_retries=0).check()
    msg = str(e.value)
    assert msg.startswith(f"cannot reach the endpoint {url}") and "\n" not in msg


def test_wrong_route_says_it_is_not_a_v1_url():
    with FakeOpenAI() as srv:
        with pytest.raises(EndpointError, match="was not found .HTTP 404.: is .* an OpenAI-compatible /v1 URL"):
            fast(srv.url + "/api").check()


def test_bearer_key_from_the_env_var_and_never_shown(monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.delenv("JUDGE_KEY", raising=False)
    script = lambda body, n: Reply(status=429) if n == 0 else Reply("fine")  # noqa: E731
    with FakeOpenAI(script, token=SECRET) as srv:
        with pytest.raises(EndpointError) as e:
            fast(srv.url, api_key_env="JUDGE_KEY").check()
        assert "$JUDGE_KEY (unset)" in str(e.value) and "HTTP 401" in str(e.value)
        assert srv.requests[-1]["headers"]["authorization"] == "Bearer none"  # the placeholder

        monkeypatch.setenv("JUDGE_KEY", "wrong")
        with pytest.raises(EndpointError, match=r"refused the API key from \$JUDGE_KEY \(HTTP 401\)"):
            fast(srv.url, api_key_env="JUDGE_KEY").check()

        monkeypatch.setenv("JUDGE_KEY", SECRET)
        ep = fast(srv.url, api_key_env="JUDGE_KEY")
        assert ep.check() == "judge-1" and ep.chat(MSG) == "fine" and ep.retries == 1
        assert srv.requests[-1]["headers"]["authorization"] == f"Bearer {SECRET}"
        for shown in (ep.describe(), repr(ep), caplog.text, str(vars(ep).get("url", ""))):
            assert SECRET not in shown


def test_429_then_success_is_retried_with_retry_after():
    script = lambda body, n: Reply(status=429, headers={"Retry-After": "0"}) if n < 2 else Reply("ok")  # noqa: E731
    with FakeOpenAI(script) as srv:
        ep = fast(srv.url, model="judge-1", max_retries=3, backoff=30)  # Retry-After 0 wins over the backoff
        assert ep.chat(MSG) == "ok"
        assert ep.retries == 2 and len(srv.chat_requests()) == 3


def test_5xx_retried_then_given_up():
    with FakeOpenAI(lambda body, n: Reply(status=503)) as srv:
        ep = fast(srv.url, model="judge-1", max_retries=2)
        with pytest.raises(EndpointError) as e:
            ep.chat(MSG)
        assert str(e.value) == f"the endpoint {srv.url} failed 3 times in a row (last: HTTP 503)"
        assert len(srv.chat_requests()) == 3 and ep.retries == 2


def test_500_once_then_success():
    with FakeOpenAI(lambda body, n: Reply(status=500) if n == 0 else Reply("ok")) as srv:
        ep = fast(srv.url, model="judge-1")
        assert ep.chat(MSG) == "ok" and ep.retries == 1


def test_slow_reply_times_out_and_is_retried():
    # The first reply comes after 3 s, past the 0.5 s timeout; the retry is answered at once.
    with FakeOpenAI(lambda body, n: Reply("late", delay=3) if n == 0 else Reply("quick")) as srv:
        ep = fast(srv.url, model="judge-1", timeout=0.5, max_retries=1)
        assert ep.chat(MSG) == "quick" and ep.retries == 1
    with FakeOpenAI(lambda body, n: Reply("late", delay=3)) as srv:
        ep = fast(srv.url, model="judge-1", timeout=0.3, max_retries=1)
        with pytest.raises(EndpointError, match=r"failed 2 times in a row \(last: no answer within 0.3 s\)"):
            ep.chat(MSG)


def test_400_is_not_retried():
    with FakeOpenAI(lambda body, n: Reply(status=400)) as srv:
        ep = fast(srv.url, model="judge-1")
        with pytest.raises(RequestRejected, match="rejected the request .HTTP 400"):
            ep.chat(MSG)
        assert len(srv.chat_requests()) == 1 and ep.retries == 0


def test_a_server_echoing_the_key_gets_it_masked(monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", SECRET)
    body = json.dumps({"error": {"message": f"bad request for key {SECRET}"}}).encode()
    with FakeOpenAI(lambda b, n: Reply(status=400, raw=body)) as srv:
        with pytest.raises(RequestRejected) as e:
            fast(srv.url, model="judge-1", api_key_env="JUDGE_KEY").chat(MSG)
    assert SECRET not in str(e.value) and "for key ***" in str(e.value)


def test_reply_that_is_not_json_is_rejected():
    with FakeOpenAI(lambda body, n: Reply(raw=b"<html>oops</html>")) as srv:
        with pytest.raises(RequestRejected, match="unreadable reply"):
            fast(srv.url, model="judge-1").chat(MSG)


def test_from_config_and_overrides(monkeypatch):
    cfg = EndpointConfig(base_url="http://h:1", model="m", api_key_env="K", timeout=7, max_retries=1, concurrency=2)
    ep = Endpoint.from_config(cfg)
    assert (ep.base_url, ep.model, ep.api_key_env, ep.timeout, ep.max_retries, ep.concurrency) == \
        ("http://h:1/v1", "m", "K", 7.0, 1, 2)
    with pytest.raises(SageError, match="set endpoint.base_url in the recipe or pass --base-url"):
        Endpoint.from_config(EndpointConfig())


def test_describe_drops_credentials_in_the_url():
    ep = Endpoint("http://user:pw@h:9/v1", model="m")
    assert ep.describe() == "m @ http://h:9/v1" and "pw" not in repr(ep)
    assert Endpoint("http://h:9").describe() == "(served model) @ http://h:9/v1"


def test_image_part(tmp_path):
    from PIL import Image

    img = Image.new("RGB", (40, 20), (10, 200, 30))
    img.save(tmp_path / "a.jpg")
    for source in (img, tmp_path / "a.jpg", str(tmp_path / "a.jpg")):
        part = image_part(source)
        assert part["type"] == "image_url"
        url = part["image_url"]["url"]
        assert url.startswith("data:image/png;base64,")
        back = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
        assert back.format == "PNG" and back.size == (40, 20)
    small = image_part(img, max_side=10)["image_url"]["url"]
    assert Image.open(io.BytesIO(base64.b64decode(small.split(",", 1)[1]))).size == (10, 5)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(SageError, match="bad.png: cannot read the image"):
        image_part(tmp_path / "bad.png")


def test_images_reach_the_server(tmp_path):
    from PIL import Image

    with FakeOpenAI(lambda body, n: Reply("seen")) as srv:
        ep = fast(srv.url, model="judge-1")
        msg = [{"role": "user", "content": [{"type": "text", "text": "what?"}, image_part(Image.new("L", (4, 4)))]}]
        assert ep.chat(msg) == "seen"
        sent = srv.chat_requests()[0]["body"]["messages"][0]["content"][1]
        assert sent["image_url"]["url"].startswith("data:image/png;base64,")
