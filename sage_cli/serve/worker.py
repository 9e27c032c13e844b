"""One model worker thread in front of the Engine, with a bounded queue of admitted requests.

A request is admitted (or refused with 503) before its images are decoded. The worker takes what is
waiting (up to --max-batch requests), prepares them one by one (images decoded, encoded and dropped, so
at most one request's pixels are in memory at a time) and decodes them together as one batch; requests
that arrive meanwhile wait for the next batch. Prompts of very different lengths go in separate
batches, shortest first, so a long prompt neither pads nor delays the short ones. A job that is
cancelled (its client left, its deadline passed, the server is stopping) leaves the queue at once,
or its row stops at its next decoded token when it is already running.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections import deque

from sage_cli.serve.generate import Prepared, Runner
from sage_cli.serve.images import open_pair
from sage_cli.serve.protocol import ApiError, ChatRequest

DEFAULT_MAX_BATCH = 16
LENGTH_RATIO = 2.0  # prompts within this factor of each other's length share a batch


class Job:
    """One admitted request. Its events ("start",), ("text", str), ("done", Result), ("error", ApiError),
    ("cancelled",) go to `emit` (called on the worker thread)."""

    def __init__(self, req: ChatRequest, emit, stream: bool):
        self.req, self.emit, self.stream = req, emit, stream
        self.cancelled = threading.Event()
        self.admitted = time.monotonic()
        self.first_text: float | None = None  # seconds from admission to the first decoded text


class Worker:
    def __init__(self, runner: Runner, max_queue: int, metrics=None, log=None, max_batch: int = DEFAULT_MAX_BATCH):
        self.runner, self.max_queue, self.metrics, self.max_batch = runner, max_queue, metrics, max_batch
        self._log = log or (lambda line: None)
        self._pending: deque[Job] = deque()
        self._reserved = 0  # places held by requests whose bodies are being read
        self._cv = threading.Condition()
        self._stopping = threading.Event()
        self.running: list[Job] = []  # the batch on the model now
        self._service_s = 1.0  # a running mean of how long one request takes (batch time / size), for Retry-After
        self._thread = threading.Thread(target=self._loop, name="sage-model-worker", daemon=True)
        self._thread.start()

    # ---- the request side ------------------------------------------------------------------------

    @property
    def depth(self) -> int:
        return len(self._pending)

    def reserve(self) -> None:
        """Hold a place in the queue while the request's body is read and checked (503 when none is left),
        so that bodies in memory are bounded by --max-queue too. `submit` takes it over; `unreserve` gives
        it back when the request fails before."""
        with self._cv:
            if self._stopping.is_set():
                raise ApiError(503, "the server is stopping", None, "server_stopping")
            if len(self._pending) + self._reserved >= self.max_queue:
                raise self.overloaded()
            self._reserved += 1

    def unreserve(self) -> None:
        with self._cv:
            self._reserved -= 1

    def submit(self, job: Job) -> None:
        """Queue a job in the place `reserve` held."""
        with self._cv:
            self._reserved -= 1
            if self._stopping.is_set():
                raise ApiError(503, "the server is stopping", None, "server_stopping")
            self._pending.append(job)
            self._cv.notify()

    def overloaded(self) -> ApiError:
        wait = max(1, min(60, round((len(self._pending) + self._reserved + 1) * self._service_s)))
        return ApiError(503, f"the server is busy ({len(self._pending)} requests waiting, --max-queue "
                        f"{self.max_queue}); retry in {wait} s", None, "server_overloaded",
                        headers={"Retry-After": str(wait)})

    def cancel(self, job: Job) -> None:
        job.cancelled.set()
        with self._cv:
            try:
                self._pending.remove(job)
            except ValueError:  # running (it stops at its next token) or done
                return
        _emit(job, ("cancelled",))  # it never reaches the worker: end its wait now

    def stop(self, wait_s: float = 10.0) -> None:
        self._stopping.set()
        with self._cv:
            pending = list(self._pending)
            self._pending.clear()
            self._cv.notify_all()
        for job in pending:
            job.cancelled.set()
            _emit(job, ("cancelled",))
        if self._thread is not threading.current_thread():
            self._thread.join(wait_s)

    # ---- the worker thread -----------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._pending and not self._stopping.is_set():
                    self._cv.wait()
                if self._stopping.is_set():
                    return
                jobs = [self._pending.popleft() for _ in range(min(self.max_batch, len(self._pending)))]
                self.running = jobs
            try:
                t0 = time.monotonic()
                ready = self._prepare(jobs)
                for group in by_length(ready):
                    self._answer(group)
                if ready:
                    self._service_s = 0.8 * self._service_s + 0.2 * (time.monotonic() - t0) / len(ready)
            finally:
                self.running = []

    def _prepare(self, jobs: list[Job]) -> list[tuple[Job, Prepared]]:
        """The jobs that can be answered, prepared together; the others get their end emitted. Each job's
        images are decoded and cut down to the encoder's pixels one job at a time, so that at most one
        request's full-size images are in memory."""
        items = []
        for job in jobs:
            if job.cancelled.is_set():
                continue
            try:
                pixels = self.runner.pixels(*open_pair(job.req.images, self.runner.limits)) if job.req.images else None
            except ApiError as e:
                _emit(job, ("error", e))
                continue
            except Exception as e:
                self._failed(job, e)
                continue
            job.req.images = []  # the encoded bytes are no longer needed
            items.append((job, pixels))
        try:
            prepared = self.runner.prepare([(job.req, pixels) for job, pixels in items])
        except Exception as e:
            for job, _ in items:
                self._failed(job, e)
            return []
        ready = []
        for (job, _), p in zip(items, prepared):
            if isinstance(p, ApiError):
                _emit(job, ("error", p))
                continue
            p.prompt.on_text = self._on_text(job)
            _emit(job, ("start",))
            ready.append((job, p))
        return ready

    def _on_text(self, job: Job):
        trimmed = Trimmed(lambda s: _emit(job, ("text", s))) if job.stream else None

        def on_text(text: str) -> bool:
            if job.cancelled.is_set() or self._stopping.is_set():
                return False  # this row stops; the rest of the batch goes on
            if job.first_text is None and text.strip():
                job.first_text = time.monotonic() - job.admitted
                if self.metrics is not None:
                    self.metrics.first_token(job.first_text)
            if trimmed is not None:
                trimmed(text)
            return True

        return on_text

    def _answer(self, group: list[tuple[Job, Prepared]]) -> None:
        if self.metrics is not None:
            self.metrics.batch(len(group))
        try:
            results = self.runner.answer([p for _, p in group])
        except Exception as e:
            for job, _ in group:
                self._failed(job, e)
            return
        for (job, _), result in zip(group, results):
            cancelled = job.cancelled.is_set() or self._stopping.is_set()
            _emit(job, ("cancelled",) if cancelled else ("done", result))

    def _failed(self, job: Job, e: Exception) -> None:
        # The client gets a generic message; the detail goes to the server's log only.
        self._log(f"error: the model failed on a request: {e.__class__.__name__}: {e}\n"
                  + traceback.format_exc().rstrip())
        _emit(job, ("error", ApiError(500, "the server failed to answer this request (its log has the "
                                      "details)", None, "internal_error")))


def by_length(ready: list[tuple[Job, Prepared]], ratio: float = LENGTH_RATIO) -> list[list[tuple[Job, Prepared]]]:
    """Batches of prompts whose lengths are within `ratio` of each other, shortest first: left padding
    costs the longest row's length for every row."""
    groups: list[list[tuple[Job, Prepared]]] = []
    for item in sorted(ready, key=lambda jp: jp[1].tokens):
        if groups and item[1].tokens <= ratio * max(groups[-1][0][1].tokens, 1):
            groups[-1].append(item)
        else:
            groups.append([item])
    return groups


def _emit(job: Job, event: tuple) -> None:
    try:
        job.emit(event)
    except RuntimeError:  # the event loop is closed: the server is gone
        pass


class Trimmed:
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
