"""Running ChatRequests on the Engine: requests checked, encoded and embedded together (`prepare`), then
decoded together as one batch (`answer`)."""

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


@dataclass
class Prepared:
    """A request that is known to be answerable: its whole prompt, and what its answer needs besides."""

    prompt: object  # engine.Prompt; the worker sets its on_text
    prefix: object | None  # the encoded image pair (its anomaly map goes into the answer); None: text chat
    messages: list | None  # text chat, for backbones that answer one request at a time
    budget: int

    @property
    def tokens(self) -> int:
        return self.prompt.embeds.shape[0] if self.prompt.embeds is not None else 0


class Runner:
    """The Engine behind one lock (it is not thread-safe). A batch of requests is prepared together
    (their images' pixels through the encoder as one batch) and decoded together: on a CPU as on an
    accelerator, one forward over n rows costs far less than n forwards."""

    def __init__(self, engine, limits: Limits, guided: bool = True):
        self.engine, self.limits = engine, limits
        self.lock = threading.Lock()
        self.context = _context_window(engine)
        from sage_cli.models.calibration import of_checkpoint

        self.calibration = of_checkpoint(engine.checkpoint)  # the checkpoint's verdict line, if it has one
        self.calibration_zero_shot = of_checkpoint(engine.checkpoint, zero_shot=True)  # for a test image alone
        self.guided = guided  # the calibrated detection sets the yes/no it can give (models/guide.py)

    def pixels(self, test, reference=None):
        """A request's PIL images -> the encoder's input (small; the full-size images can then go)."""
        return self.engine.pixels(test, reference)

    def prepare(self, items: list[tuple[ChatRequest, tuple | None]]) -> list[Prepared | ApiError]:
        """Check, encode and embed requests (each with its images' `pixels`, or None for text chat): all
        the work that can fail on a request, the image pairs through the encoder as one batch. An
        ApiError in place of each request the client must change."""
        with self.lock:
            prefixes = self._encode(items)
            out = []
            for i, (req, _) in enumerate(items):
                try:
                    if isinstance(prefixes.get(i), ApiError):
                        raise prefixes[i]
                    out.append(self._with_images(req, prefixes[i]) if i in prefixes else self._chat(req))
                except SageError as e:  # the engine's own checks on its input
                    out.append(ApiError(400, str(e), "messages", "invalid_value"))
                except ApiError as e:
                    out.append(e)
            return out

    def _encode(self, items) -> dict:
        """{index: Prefix} of the requests with images, encoded together; a request the engine refuses
        gets its ApiError (found by encoding each alone)."""
        idx = [i for i, (_, px) in enumerate(items) if px is not None]
        eng = self.engine
        try:
            return dict(zip(idx, eng.encode_pixels([items[i][1] for i in idx], [items[i][0].facts for i in idx])))
        except SageError:
            out = {}
            for i in idx:
                try:
                    out[i] = eng.encode_pixels([items[i][1]], [items[i][0].facts])[0]
                except SageError as e:
                    out[i] = ApiError(400, str(e), "messages", "invalid_value")
            return out

    def answer(self, batch: list[Prepared]) -> list[Result]:
        """Decode prepared requests: as one batch where the engine can, else one after the other. Each
        prompt's `on_text(str)` gets its text as it is decoded (returning False stops that request)."""
        eng = self.engine
        with self.lock:
            if eng.batches_prompts:
                answers = eng.answer_batch([p.prompt for p in batch])
            else:
                answers = [self._alone(p) for p in batch]
            return [self._result(p, a) for p, a in zip(batch, answers)]

    def _with_images(self, req: ChatRequest, prefix) -> Prepared:
        from sage_cli.models.engine import Prompt

        eng = self.engine
        question = req.question.strip() or DEFAULT_QUESTION
        q_tokens = len(eng.model.backbone.tokenizer(question, add_special_tokens=False)["input_ids"])
        prompt = sum(p.shape[0] for i, p in enumerate(prefix.pieces) if i != prefix.at) + q_tokens
        budget = self._budget(prompt, req.max_tokens)
        embeds, shared = (eng.pair_embeds(prefix, question), eng.shared_start(prefix)) if eng.batches_prompts \
            else (None, None)
        return Prepared(Prompt(embeds, question, budget, **self._sampling(req), shared=shared,
                               verdict=self._guide(prefix, question)), prefix, None, budget)

    def _guide(self, prefix, question: str) -> bool | None:
        """The answer's first word from the calibrated detection (models/guide.py); None: the model's."""
        from sage_cli.models import guide
        from sage_cli.models.calibration import detect

        if not self.guided or not guide.guides(question):
            return None  # a question the guide leaves to the model: no detection read
        amap = self.engine.anomaly(prefix)
        cal = self._calibration_for(amap)
        return guide.verdict_for(question, detect(self.engine, cal, prefix, amap), amap) if cal else None

    def _calibration_for(self, amap) -> dict | None:
        """The fit for this request: the one-shot calibration with a map, the zero-shot one without."""
        return self.calibration if amap is not None else self.calibration_zero_shot

    def _chat(self, req: ChatRequest) -> Prepared:
        from sage_cli.models.engine import Prompt

        eng = self.engine
        try:  # the rendering engine.chat does, to count the prompt before decoding
            embeds = eng.chat_embeds(req.messages)
        except SageError:
            raise
        except Exception as e:  # jinja's TemplateError and friends: e.g. a template without system turns
            raise ApiError(400, f"the model's chat template refused these messages ({_one_line(e)})",
                           "messages", "invalid_value") from None
        budget = self._budget(embeds.shape[0], req.max_tokens)
        question = req.messages[-1].get("content", "") if req.messages else ""
        return Prepared(Prompt(embeds, question, budget, **self._sampling(req)), None, req.messages, budget)

    def _alone(self, p: Prepared):
        """One request by the engine's single-row path (backbones whose positions do not batch)."""
        sampling = {"temperature": p.prompt.temperature, "top_p": p.prompt.top_p, "generator": p.prompt.generator}
        if p.prefix is not None:
            return self.engine.answer(p.prefix, p.prompt.question, max_new_tokens=p.budget,
                                      on_text=p.prompt.on_text, verdict=p.prompt.verdict, **sampling)
        return self.engine.chat(p.messages, max_new_tokens=p.budget, on_text=p.prompt.on_text, **sampling)

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

    def _result(self, p: Prepared, a) -> Result:
        from sage_cli.models.guide import contradicted

        # The engine stops at a stop token or after the budget; only the latter is "length".
        finish = "length" if a.new_tokens >= p.budget else "stop"
        sage = None
        if p.prefix is not None:
            amap = self.engine.anomaly(p.prefix)
            # the map itself too ([h][w], 3 decimals: a few hundred numbers), so a client can draw the heatmap
            anomaly = {**amap.summary(), "map": amap.rounded(3)} if amap is not None else None
            sage = {"p_yes": a.p_yes, "anomaly": anomaly, "guided": a.guided,
                    "contradicted": contradicted(a),
                    **self._verdict(p, a, amap)}
        return Result(a.text, finish, a.prompt_tokens, a.new_tokens, sage)


    def _verdict(self, p: Prepared, a, amap) -> dict:
        """The calibrated P(defect) and verdict (`sage calibrate`), when the checkpoint has a calibration
        and this answer's P(yes) is the one it reads (a calibration on the map alone reads none)."""
        from sage_cli.models.calibration import apply

        cal = self._calibration_for(amap)
        if not cal:
            return {}
        if "logit_p_yes" in cal["features"] and p.prompt.question != cal.get("question"):
            return {}
        p_defect, defective = apply(cal, a.p_yes, amap)
        if p_defect is None:
            return {}
        return {"p_defect": p_defect, "verdict": "defect" if defective else "normal",
                "threshold": float(cal.get("threshold", 0.5))}


def _context_window(engine) -> int | None:
    cfg = getattr(engine.model.backbone.language_model, "config", None)
    if cfg is not None and hasattr(cfg, "get_text_config"):
        cfg = cfg.get_text_config()
    n = getattr(cfg, "max_position_embeddings", None)
    return n if isinstance(n, int) and n > 0 else None


def _one_line(e: Exception, limit: int = 200) -> str:
    s = " ".join(str(e).split()) or e.__class__.__name__
    return s if len(s) <= limit else s[: limit - 1] + "…"

