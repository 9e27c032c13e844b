"""Running a ChatRequest on the Engine: one request at a time, the context checked before decoding starts."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from sage_cli.defaults import DEFAULT_QUESTION  # as `sage infer` without -q
from sage_cli.errors import SageError
from sage_cli.serve.protocol import ApiError, ChatRequest, Limits


@dataclass
class Result:
    text: str
    finish_reason: str  # "stop" or "length"
    prompt_tokens: int
    completion_tokens: int
    sage: dict | None  # {"p_yes", "anomaly"} when images were given


class Runner:
    """The Engine behind one lock: it is not thread-safe, and one request at a time is also what a
    single accelerator does best with this decoder (no batching)."""

    def __init__(self, engine, limits: Limits):
        self.engine, self.limits = engine, limits
        self.lock = threading.Lock()
        self.context = _context_window(engine)

    def run(self, req: ChatRequest, test=None, reference=None, on_start=None, on_text=None) -> Result:
        """Answer `req` (with the test/reference PIL images when given).

        `on_start()` is called once the request is known to be answerable (before the first token), so a
        streaming caller sends its headers only then; `on_text(str)` gets the text as it is decoded.
        ApiError for what the client must change; any other exception is an engine failure.
        """
        with self.lock:
            try:
                decode = self._with_images(req, test, reference) if test is not None else self._chat(req)
                if on_start is not None:
                    on_start()
                return decode(on_text)
            except SageError as e:  # the engine's own checks on its input
                raise ApiError(400, str(e), "messages", "invalid_value") from None

    # _with_images and _chat do the work that can fail on the request (encoding, tokenising, the
    # context check) and return the decoding step.

    def _with_images(self, req: ChatRequest, test, reference):
        eng = self.engine
        question = req.question.strip() or DEFAULT_QUESTION
        prefix = eng.encode(test, reference, req.facts)
        q_tokens = len(eng.model.backbone.tokenizer(question, add_special_tokens=False)["input_ids"])
        prompt = sum(p.shape[0] for i, p in enumerate(prefix.pieces) if i != prefix.at) + q_tokens
        budget = self._budget(prompt, req.max_tokens)
        sampling = self._sampling(req)  # before the first byte of a stream: a bad seed is still a 400

        def decode(on_text):
            a = eng.answer(prefix, question, max_new_tokens=budget, on_text=on_text, **sampling)
            amap = eng.anomaly(prefix)
            # the map itself too ([h][w], 3 decimals: a few hundred numbers), so a client can draw the heatmap
            anomaly = {**amap.summary(), "map": amap.rounded(3)} if amap is not None else None
            return self._result(a, budget, {"p_yes": a.p_yes, "anomaly": anomaly})

        return decode

    def _chat(self, req: ChatRequest):
        eng = self.engine
        tok = eng.model.backbone.tokenizer
        try:  # the same rendering engine.chat does, to count the prompt before decoding
            text = tok.apply_chat_template(req.messages, tokenize=False, add_generation_prompt=True)
        except Exception as e:  # jinja's TemplateError and friends: e.g. a template without system turns
            raise ApiError(400, f"the model's chat template refused these messages ({_one_line(e)})",
                           "messages", "invalid_value") from None
        budget = self._budget(len(tok(text, add_special_tokens=False)["input_ids"]), req.max_tokens)
        sampling = self._sampling(req)

        def decode(on_text):
            a = eng.chat(req.messages, max_new_tokens=budget, on_text=on_text, **sampling)
            return self._result(a, budget, None)

        return decode

    def _budget(self, prompt_tokens: int, asked: int | None) -> int:
        """Completion tokens for this request: as asked, else --max-tokens, within the model's context."""
        n = asked if asked is not None else self.limits.max_tokens
        if self.context is None:
            return n
        if asked is None:
            n = min(n, self.context - prompt_tokens)
        if n < 1 or prompt_tokens + n > self.context:
            raise ApiError(400, f"this request needs {prompt_tokens} prompt tokens and {max(n, 1)} completion "
                           f"tokens, more than the model's context of {self.context} tokens", "messages",
                           "context_length_exceeded")
        return n

    @staticmethod
    def _sampling(req: ChatRequest) -> dict:
        import torch

        try:
            gen = torch.Generator().manual_seed(req.seed) if req.seed is not None else None
        except (ValueError, RuntimeError, OverflowError):
            raise ApiError(400, "seed is out of range", "seed", "invalid_value") from None
        return {"temperature": req.temperature, "top_p": req.top_p, "generator": gen}

    @staticmethod
    def _result(a, budget: int, sage: dict | None) -> Result:
        # The engine stops at a stop token or after `budget` tokens; only the latter is "length".
        finish = "length" if a.new_tokens >= budget else "stop"
        return Result(a.text, finish, a.prompt_tokens, a.new_tokens, sage)


def _context_window(engine) -> int | None:
    cfg = getattr(engine.model.backbone.language_model, "config", None)
    if cfg is not None and hasattr(cfg, "get_text_config"):
        cfg = cfg.get_text_config()
    n = getattr(cfg, "max_position_embeddings", None)
    return n if isinstance(n, int) and n > 0 else None


def _one_line(e: Exception, limit: int = 200) -> str:
    s = " ".join(str(e).split()) or e.__class__.__name__
    return s if len(s) <= limit else s[: limit - 1] + "…"

