"""`GET /metrics`: the server's counters in Prometheus' text format (no client library needed).

Label values come from fixed sets (the routes, HTTP statuses, the error codes of `protocol`), so the
number of series stays bounded whatever clients send.
"""

from __future__ import annotations

import math
import threading
from collections import defaultdict

TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, math.inf)
ROUTES = ("/health", "/metrics", "/v1/models", "/v1/models/{model}", "/v1/chat/completions", "/docs",
          "/openapi.json")


def route_label(path: str) -> str:
    if path.startswith("/v1/models/"):
        return "/v1/models/{model}"
    return path if path in ROUTES else "other"


class Metrics:
    def __init__(self, queue_depth=lambda: 0, running=lambda: 0):
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str, str], int] = defaultdict(int)
        self._errors: dict[str, int] = defaultdict(int)
        self._ttft = [0] * len(TTFT_BUCKETS)
        self._ttft_sum, self._ttft_count = 0.0, 0
        self._queue_depth, self._running = queue_depth, running
        self._batch_sum, self._batch_count = 0, 0

    def request(self, method: str, path: str, status: int | None) -> None:
        key = (method if method in ("GET", "POST") else "other", route_label(path), str(status or 0))
        with self._lock:
            self._requests[key] += 1

    def error(self, code: str | None) -> None:
        with self._lock:
            self._errors[code or "unknown"] += 1

    def first_token(self, seconds: float) -> None:
        with self._lock:
            for i, b in enumerate(TTFT_BUCKETS):
                if seconds <= b:
                    self._ttft[i] += 1
            self._ttft_sum += seconds
            self._ttft_count += 1

    def batch(self, size: int) -> None:
        with self._lock:
            self._batch_sum += size
            self._batch_count += 1

    def render(self) -> str:
        with self._lock:
            requests, errors = dict(self._requests), dict(self._errors)
            ttft, ttft_sum, ttft_count = list(self._ttft), self._ttft_sum, self._ttft_count
            batch_sum, batch_count = self._batch_sum, self._batch_count
        out = ["# HELP sage_requests_total HTTP requests answered, by method, route and status.",
               "# TYPE sage_requests_total counter"]
        for (method, route, status), n in sorted(requests.items()):
            out.append(f'sage_requests_total{{method="{method}",route="{route}",status="{status}"}} {n}')
        out += ["# HELP sage_errors_total Requests answered with an error, by error code.",
                "# TYPE sage_errors_total counter"]
        for code, n in sorted(errors.items()):
            out.append(f'sage_errors_total{{code="{code}"}} {n}')
        out += ["# HELP sage_queue_depth Admitted requests waiting for the model.", "# TYPE sage_queue_depth gauge",
                f"sage_queue_depth {self._queue_depth()}",
                "# HELP sage_requests_running Requests on the model now.", "# TYPE sage_requests_running gauge",
                f"sage_requests_running {self._running()}",
                "# HELP sage_time_to_first_token_seconds From admission to the first decoded text.",
                "# TYPE sage_time_to_first_token_seconds histogram"]
        for b, n in zip(TTFT_BUCKETS, ttft):
            le = "+Inf" if math.isinf(b) else f"{b:g}"
            out.append(f'sage_time_to_first_token_seconds_bucket{{le="{le}"}} {n}')
        out += [f"sage_time_to_first_token_seconds_sum {ttft_sum:.6f}",
                f"sage_time_to_first_token_seconds_count {ttft_count}",
                "# HELP sage_batch_size Requests decoded together in one batch.", "# TYPE sage_batch_size summary",
                f"sage_batch_size_sum {batch_sum}", f"sage_batch_size_count {batch_count}"]
        return "\n".join(out) + "\n"
