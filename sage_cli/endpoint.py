"""A small client for any OpenAI-compatible `/v1` server (OpenAI, vLLM, llama.cpp, Ollama, `sage serve`).

Used by every command that talks to a remote model (`sage score mle`, `sage facts extract`, ...)::

    ep = Endpoint.from_config(recipe.endpoint)   # or Endpoint("http://127.0.0.1:8000", model=None)
    ep.check()                                    # one GET /v1/models: reachable, key accepted, model served
    text = ep.chat([{"role": "user", "content": [{"type": "text", "text": "..."}, image_part("a.png")]}],
                   max_tokens=256, temperature=0.0)
    ep.describe()                                 # "model @ http://host:port/v1", for outputs

* URL: `http://host:port` and `http://host:port/v1` are the same endpoint: a URL without a path gets
  `/v1`; a URL with a path is used as given (some providers serve the API under another path).
* Key: read from the environment variable named by `api_key_env` when the Endpoint is made. A missing
  key is fine for local servers (the placeholder "none" is sent). The key is never logged, printed or
  returned; `describe()` and `repr()` show the model and URL only (user:password in a URL is dropped).
* Retries: `chat` retries 429, 408, 5xx, timeouts and connection errors up to `max_retries` times,
  with exponential backoff and jitter (a server's Retry-After is honoured up to `max_backoff`). The
  openai client's own retry is switched off so that every retry is ours: counted in `retries` and
  logged. Other answers fail at once: 401/403/404 with EndpointError (the run cannot go on), 400/413/422
  with RequestRejected (only this request was bad). Both are SageErrors with one-line messages.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import random
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from sage_cli.errors import SageError

log = logging.getLogger(__name__)

NO_KEY = "none"  # sent when the key variable is unset: local servers ignore it, the client needs one
RETRY_STATUS = frozenset({408, 429})  # plus every 5xx
REJECT_STATUS = frozenset({400, 413, 422})


class EndpointError(SageError):
    """The endpoint cannot be used: unreachable, key refused, model not served, or retries used up."""


class RequestRejected(EndpointError):
    """The server refused this one request (HTTP 400/413/422); other requests may still work."""


def normalize_base_url(url: str) -> str:
    """`http://h:p`, `http://h:p/` -> `http://h:p/v1`; a URL with a path keeps it (trailing `/` dropped)."""
    text = (url or "").strip()
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise SageError(f"endpoint URL {text!r} must look like http://host:port/v1")
    path = parts.path.rstrip("/") or "/v1"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def _public_url(url: str) -> str:
    """The URL without user:password, for messages and outputs."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit((parts.scheme, parts.netloc.rsplit("@", 1)[1], parts.path, parts.query, ""))


def _one_line(text: Any, limit: int = 160) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 1] + "…"


class Endpoint:
    """One model on one OpenAI-compatible server. Thread-safe: `chat` may be called from many threads."""

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        *,
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 60.0,
        max_retries: int = 3,
        concurrency: int = 4,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
    ):
        self.base_url = normalize_base_url(base_url)
        self.model = model
        self.api_key_env = api_key_env
        self.timeout = float(timeout)
        self.max_retries = max(0, int(max_retries))
        self.concurrency = max(1, int(concurrency))
        self.backoff = float(backoff)  # first retry waits about this long (s), doubling after
        self.max_backoff = float(max_backoff)
        self.retries = 0  # retries made so far, all threads together
        self._lock = threading.Lock()
        self._client = None
        key = os.environ.get(api_key_env)
        self._has_key = bool(key)
        self._key = key or NO_KEY  # kept out of every message and repr

    @classmethod
    def from_config(cls, cfg, *, base_url: str | None = None, model: str | None = None, **kw) -> "Endpoint":
        """From a recipe's EndpointConfig; `base_url` / `model` (e.g. from --base-url, --model) override it."""
        url = base_url or cfg.base_url
        if not url:
            raise SageError("no endpoint URL: set endpoint.base_url in the recipe or pass --base-url")
        return cls(url, model or cfg.model, api_key_env=cfg.api_key_env, timeout=cfg.timeout,
                   max_retries=cfg.max_retries, concurrency=cfg.concurrency, **kw)

    # ------------------------------------------------------------------------------------------ naming

    def describe(self) -> str:
        """`model @ base_url` (never the key); before check() an unset model reads "(served model)"."""
        return f"{self.model or '(served model)'} @ {_public_url(self.base_url)}"

    def __repr__(self) -> str:
        return f"Endpoint({self.describe()})"

    @property
    def url(self) -> str:
        return _public_url(self.base_url)

    # ------------------------------------------------------------------------------------------ calls

    @property
    def client(self):
        with self._lock:  # one client (one connection pool) for all threads
            if self._client is None:
                import openai

                # max_retries=0: retries are ours (counted, logged, with Retry-After honoured).
                self._client = openai.OpenAI(base_url=self.base_url, api_key=self._key, timeout=self.timeout,
                                             max_retries=0)
            return self._client

    def models(self) -> list[str]:
        """The model ids the server lists (one GET /models, no retry)."""
        import openai

        try:
            return [m.id for m in self.client.models.list()]
        except openai.APIStatusError as e:
            raise self._status_error(e, "/models") from None
        except openai.APIConnectionError as e:
            raise EndpointError(f"cannot reach the endpoint {self.url}: {self._connection_reason(e)}") from None
        except (openai.APIError, ValueError) as e:
            raise EndpointError(f"{self.url}/models did not answer like an OpenAI-compatible server "
                                f"({self._said(e)})") from None

    def check(self) -> str:
        """Check the endpoint before a run; returns the model id (picked when unset and only one is served)."""
        served = self.models()
        if self.model is None:
            if len(served) == 1:
                self.model = served[0]
                return self.model
            listed = ", ".join(served[:10]) or "none"
            raise EndpointError(f"the endpoint {self.url} serves {len(served)} models ({listed}); "
                                f"choose one with --model or endpoint.model")
        if self.model not in served:
            listed = ", ".join(served[:10]) or "none"
            raise EndpointError(f"the endpoint {self.url} does not serve the model {self.model!r} "
                                f"(it serves: {listed})")
        return self.model

    def chat(self, messages: list[dict], max_tokens: int = 256, temperature: float = 0.0,
             response_format: dict | None = None) -> str:
        """The assistant's reply text ("" when the server sent none), after retries on transient errors."""
        import openai

        if self.model is None:
            self.check()
        kwargs: dict[str, Any] = {"model": self.model, "messages": messages, "max_tokens": max_tokens,
                                  "temperature": temperature}
        if response_format is not None:
            kwargs["response_format"] = response_format
        attempts = self.max_retries + 1
        for attempt in range(attempts):
            try:
                reply = self.client.chat.completions.create(**kwargs)
            except openai.APIStatusError as e:
                if not (e.status_code in RETRY_STATUS or e.status_code >= 500):
                    raise self._status_error(e, "/chat/completions") from None
                reason, wait = f"HTTP {e.status_code}", self._retry_after(e)
            except openai.APIConnectionError as e:
                reason, wait = self._connection_reason(e), None
            except (openai.APIError, ValueError) as e:  # a 200 whose body is not a chat completion
                raise RequestRejected(f"{self.url} sent an unreadable reply ({self._said(e)})") from None
            else:
                if not reply.choices:
                    return ""
                return reply.choices[0].message.content or ""
            if attempt + 1 == attempts:
                times = "once" if attempts == 1 else f"{attempts} times in a row"
                raise EndpointError(f"the endpoint {self.url} failed {times} (last: {reason})")
            delay = self._delay(attempt, wait)
            with self._lock:
                self.retries += 1
            log.warning("%s: %s; retry %d of %d in %.2fs", self.url, reason, attempt + 1, self.max_retries, delay)
            time.sleep(delay)
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------------------------------ helpers

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_backoff)
        # Full exponential step with jitter in [50%, 100%]: threads hitting a 429 together spread out.
        return min(self.max_backoff, self.backoff * 2 ** attempt) * random.uniform(0.5, 1.0)

    @staticmethod
    def _retry_after(e) -> float | None:
        try:
            value = float(e.response.headers.get("retry-after"))
        except (TypeError, ValueError, AttributeError):
            return None
        return value if value >= 0 else None

    def _said(self, text) -> str:
        """A server's or client's message as one line, with the key masked should a server echo it."""
        text = str(text)
        return _one_line(text.replace(self._key, "***") if self._key != NO_KEY else text)

    def _connection_reason(self, e) -> str:
        import openai

        if isinstance(e, openai.APITimeoutError):
            return f"no answer within {self.timeout:g} s"
        cause = e.__cause__ or e
        while getattr(cause, "__cause__", None) is not None:  # the socket error under the client's wrappers
            cause = cause.__cause__
        return self._said(cause) or "connection error"

    def _status_error(self, e, route: str) -> EndpointError:
        code = e.status_code
        if code in (401, 403):
            where = f"${self.api_key_env}" if self._has_key else f"${self.api_key_env} (unset)"
            return EndpointError(f"the endpoint {self.url} refused the API key from {where} (HTTP {code})")
        if code == 404 and route == "/models":
            return EndpointError(f"{self.url}{route} was not found (HTTP 404): is {self.url} an "
                                 f"OpenAI-compatible /v1 URL?")
        if code == 404:
            return EndpointError(f"{self.url}{route}: HTTP 404 for model {self.model!r} ({self._said(e.message)})")
        if code in REJECT_STATUS:
            return RequestRejected(f"{self.url}{route} rejected the request (HTTP {code}: {self._said(e.message)})")
        return EndpointError(f"{self.url}{route} answered HTTP {code} ({self._said(e.message)})")


def image_part(image, *, max_side: int | None = None) -> dict:
    """A chat content part holding an image (a path or a PIL image) as a base64 PNG data URL.

    `max_side` shrinks the image so its longer side has at most that many pixels (fewer tokens).
    """
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, (str, Path)):
        try:
            with Image.open(image) as im:
                img = im.convert("RGB")
        except (OSError, UnidentifiedImageError) as e:
            raise SageError(f"{image}: cannot read the image ({_one_line(e)})") from None
    else:
        img = image.convert("RGB")
    if max_side is not None and max(img.size) > max_side:
        img = img.copy()
        img.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}}


# ---------------------------------------------------------------------------------------- secrets

REDACTED = "[redacted]"


def endpoint_secrets(endpoint_cfg) -> tuple[str, ...]:
    """The API key an EndpointConfig reads (the value of $api_key_env), as sent and stripped; () when unset."""
    key = os.environ.get(endpoint_cfg.api_key_env) or ""
    return tuple(k for k in dict.fromkeys((key, key.strip())) if k)


def redact(value, secrets: tuple[str, ...]):
    """`value` (text, or lists and dicts of them) with every secret replaced by REDACTED."""
    if not secrets:
        return value
    if isinstance(value, str):
        for s in sorted(secrets, key=len, reverse=True):
            value = value.replace(s, REDACTED)
        return value
    if isinstance(value, list):
        return [redact(v, secrets) for v in value]
    if isinstance(value, tuple):
        return tuple(redact(v, secrets) for v in value)
    if isinstance(value, dict):
        return {redact(k, secrets): redact(v, secrets) for k, v in value.items()}
    return value
