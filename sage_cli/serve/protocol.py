"""The OpenAI chat.completions wire format: request validation into a ChatRequest, response shapes, errors.

Pure standard library (no torch, no PIL): everything here runs on the request threads, before the
engine lock is taken, so a bad request costs no model time.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import time
import uuid
from dataclasses import dataclass, field

MB = 1024 * 1024
MAX_IMAGES = 2  # test, then reference
MAX_FACTS = 64  # the model reads its first num_facts; more is surely a client bug
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1  # what torch.Generator.manual_seed takes
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


@dataclass(frozen=True)
class Limits:
    max_tokens: int = 512  # completion tokens per request
    max_body_bytes: int = 20 * MB
    max_image_bytes: int = 10 * MB  # decoded (not base64) bytes of one image
    max_image_pixels: int = 40_000_000  # width x height, read from the header before decoding


class ApiError(Exception):
    """An HTTP error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = dict(headers or {})  # extra response headers (Retry-After, WWW-Authenticate)

    @property
    def type(self) -> str:
        if self.status == 401:
            return "authentication_error"
        return "server_error" if self.status >= 500 else "invalid_request_error"

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class ChatRequest:
    model: str | None
    messages: list[dict]  # every message as {"role", "content": text}, for the LLM's chat template
    images: list[bytes]  # the last user message's images, decoded from base64: test, then reference
    question: str  # the last user message's text
    facts: list[str] = field(default_factory=list)
    max_tokens: int | None = None  # None: as many as --max-tokens and the context allow
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage: a last chunk with the usage


# ---------------------------------------------------------------------------------------------- requests


def parse_json(body: bytes) -> dict:
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError) as e:
        raise ApiError(400, f"the request body is not valid JSON ({_clip(str(e))})", code="invalid_json") from None
    except RecursionError:  # e.g. [[[[...]]]] nested 100,000 deep
        raise ApiError(400, "the request body is nested too deeply", code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
    return data


def parse_chat(data: dict, limits: Limits, llm_only: bool = False) -> ChatRequest:
    """A chat.completions body -> ChatRequest; ApiError (400/413) on anything the server cannot honour.

    Unknown fields are ignored, as OpenAI-compatible servers do.
    """
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise _bad("model must be a string", "model")
    n = data.get("n")
    if n is not None and (not _is_int(n) or n != 1):
        raise _bad("this server returns one choice per request: n must be 1", "n", "unsupported_value")
    max_tokens = _max_tokens(data, limits)
    temperature = _number(data, "temperature", 0.0, 0.0, 2.0)
    top_p = _number(data, "top_p", 1.0, 0.0, 1.0)
    if top_p <= 0:
        raise _bad("top_p must be above 0", "top_p")
    seed = data.get("seed")
    if seed is not None and (not _is_int(seed) or not SEED_MIN <= seed <= SEED_MAX):
        raise _bad(f"seed must be an integer from {SEED_MIN} to {SEED_MAX}", "seed")
    stream = data.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _bad("stream must be true or false", "stream")
    options = data.get("stream_options") or {}
    if not isinstance(options, dict):
        raise _bad("stream_options must be an object", "stream_options")

    messages, images, question = _messages(data.get("messages"), limits, llm_only)
    return ChatRequest(model=model, messages=messages, images=images, question=question,
                       facts=_facts(data.get("sage")), max_tokens=max_tokens, temperature=temperature,
                       top_p=top_p, seed=seed, stream=bool(stream), include_usage=bool(options.get("include_usage")))


def _messages(raw, limits: Limits, llm_only: bool) -> tuple[list[dict], list[bytes], str]:
    if not isinstance(raw, list) or not raw:
        raise _bad("messages must be a non-empty list", "messages")
    users = [i for i, m in enumerate(raw) if isinstance(m, dict) and m.get("role") == "user"]
    if not users:
        raise _bad("messages has no user message", "messages")
    last_user = users[-1]
    messages, images, question = [], [], ""
    for i, m in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise _bad(f"{where} must be an object", where)
        role = m.get("role")
        if role not in ROLES:
            raise _bad(f"{where}.role {role!r} is not supported (use system, developer, user or assistant)",
                       f"{where}.role")
        texts, urls = _content(m.get("content"), f"{where}.content", role == "assistant")
        if urls and llm_only:
            raise _bad("this server runs --llm-only: images are not accepted", f"{where}.content")
        if urls and role != "user":
            raise _bad(f"{where}: only user messages may carry images", f"{where}.content")
        text = "\n".join(texts)
        if i == last_user:
            if len(urls) > MAX_IMAGES:
                raise _bad(f"{where} has {len(urls)} images; send at most {MAX_IMAGES}: the test image, then a "
                           "normal reference", f"{where}.content")
            images = [decode_data_url(u, limits, f"{where}.content[{j}]") for j, u in urls]
            question = text
        # Images of earlier turns are not read (see the package docstring); their text is.
        messages.append({"role": ROLES[role], "content": text})
    return messages, images, question


def _content(content, where: str, may_be_null: bool) -> tuple[list[str], list[tuple[int, str]]]:
    """Text pieces and (part index, image URL) pairs of one message's content."""
    if isinstance(content, str):
        return [content], []
    if content is None and may_be_null:  # an assistant turn that only called tools
        return [], []
    if not isinstance(content, list):
        raise _bad(f"{where} must be a string or a list of content parts", where)
    texts, urls = [], []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url":
            img = part.get("image_url")
            url = img.get("url") if isinstance(img, dict) else img
            if not isinstance(url, str):
                raise _bad(f"{where}[{j}].image_url.url must be a string", f"{where}[{j}]")
            urls.append((j, url))
        else:
            raise _bad(f"{where}[{j}] is not a text or image_url content part (type {kind!r})", f"{where}[{j}]")
    return texts, urls


def decode_data_url(url: str, limits: Limits, where: str) -> bytes:
    """`data:image/...;base64,...` -> the image file's bytes (size-checked before decoding)."""
    if not url.startswith("data:"):
        scheme = url.split(":", 1)[0][:16] if ":" in url else "no scheme"
        raise _bad(f"{where}: only data: URLs are accepted ({scheme} given): the server never fetches images; "
                   "send data:image/png;base64,...", where, "invalid_image_url")
    header, comma, payload = url[5:].partition(",")
    media, *params = header.split(";")
    if not comma or "base64" not in params:
        raise _bad(f"{where}: a data URL must look like data:image/png;base64,<data>", where, "invalid_image_url")
    if media and not media.lower().startswith("image/"):
        raise _bad(f"{where}: the data URL holds {media!r}, not an image", where, "invalid_image")
    payload = "".join(payload.split())  # tolerate line-wrapped base64
    if len(payload) // 4 * 3 > limits.max_image_bytes + 2:
        raise _too_big(f"{where}: the image is larger than {_mb(limits.max_image_bytes)} (--max-image-mb)", where)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise _bad(f"{where}: the data URL is not valid base64", where, "invalid_base64") from None
    if not data:
        raise _bad(f"{where}: the image is empty", where, "invalid_image")
    if len(data) > limits.max_image_bytes:
        raise _too_big(f"{where}: the image is larger than {_mb(limits.max_image_bytes)} (--max-image-mb)", where)
    return data


def _facts(ext) -> list[str]:
    if ext is None:
        return []
    facts = ext.get("facts", []) if isinstance(ext, dict) else None
    if not isinstance(facts, list) or not all(isinstance(f, str) for f in facts):
        raise _bad('the extension field must look like "sage": {"facts": ["sentence", ...]}', "sage.facts")
    if len(facts) > MAX_FACTS:
        raise _bad(f"sage.facts has {len(facts)} sentences; send at most {MAX_FACTS}", "sage.facts")
    return [f.strip() for f in facts if f.strip()]


def _max_tokens(data: dict, limits: Limits) -> int | None:
    # max_completion_tokens is the current name; max_tokens the older one, still what most clients send.
    name = "max_completion_tokens" if data.get("max_completion_tokens") is not None else "max_tokens"
    value = data.get(name)
    if value is None:
        return None
    if not _is_int(value) or value < 1:
        raise _bad(f"{name} must be a positive integer", name)
    if value > limits.max_tokens:
        raise _bad(f"{name} is {value} but this server allows at most {limits.max_tokens} (--max-tokens)", name,
                   "too_many_tokens")
    return value


def _number(data: dict, name: str, default: float, lo: float, hi: float) -> float:
    value = data.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not lo <= value <= hi:
        raise _bad(f"{name} must be a number from {lo:g} to {hi:g}", name)
    return float(value)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _bad(message: str, param: str | None = None, code: str | None = "invalid_value") -> ApiError:
    return ApiError(400, message, param, code)


def _too_big(message: str, param: str | None = None) -> ApiError:
    return ApiError(413, message, param, "request_too_large")


def _clip(s: str, limit: int = 200) -> str:
    return s if len(s) <= limit else s[: limit - 1] + "…"


def _mb(n: int) -> str:
    return f"{n / MB:g} MB"


# ---------------------------------------------------------------------------------------------- responses


def new_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion(cid: str, model: str, created: int, text: str, finish_reason: str, prompt_tokens: int,
               completion_tokens: int, sage: dict | None = None) -> dict:
    out = {"id": cid, "object": "chat.completion", "created": created, "model": model,
           "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                        "finish_reason": finish_reason}],
           "usage": usage(prompt_tokens, completion_tokens)}
    if sage is not None:
        out["sage"] = sage
    return out


def chunk(cid: str, model: str, created: int, delta: dict | None = None, finish_reason: str | None = None,
          sage: dict | None = None, usage_: dict | None = None) -> dict:
    """One streamed event; `delta=None` makes the usage-only chunk (no choices) that include_usage asks for."""
    choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None,
                                         "finish_reason": finish_reason}]
    out = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices}
    if usage_ is not None:
        out["usage"] = usage_
    if sage is not None:
        out["sage"] = sage
    return out


def sse(event: dict | str) -> bytes:
    """A Server-Sent Events frame: `data: <json>` (or `data: [DONE]`) and a blank line."""
    text = event if isinstance(event, str) else json.dumps(event, separators=(",", ":"))
    return f"data: {text}\n\n".encode("utf-8")


def model_card(name: str, created: int | None = None) -> dict:
    return {"id": name, "object": "model", "created": int(created or time.time()), "owned_by": "sage"}
