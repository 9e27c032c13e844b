"""Running `sage serve`: the ASGI app (`app.py`) under uvicorn, behind a socketserver-like object.

`make_server` binds the socket at once (so `.url` is known and a busy port fails before the model is
used), `serve_forever()` runs uvicorn on it until `shutdown()` (another thread) or SIGINT/SIGTERM (the
main thread), and `server_close()` stops the model worker and closes the socket. One model worker
decodes the waiting requests together, from a bounded queue (`worker.py`).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import sys
import threading

from sage_cli.errors import SageError
from sage_cli.serve.app import ServeState, build_app
from sage_cli.serve.generate import Runner
from sage_cli.serve.metrics import Metrics
from sage_cli.serve.protocol import Limits
from sage_cli.serve.worker import DEFAULT_MAX_BATCH, Worker

IDLE_TIMEOUT_S = 120  # an idle keep-alive connection is closed after this
BACKLOG = 2048  # the listen queue: a burst of connections waits instead of being reset
DEFAULT_MAX_QUEUE = 64
DEFAULT_REQUEST_TIMEOUT_S = 600.0


def make_server(engine, host: str = "127.0.0.1", port: int = 0, model_name: str | None = None,
                api_key: str | None = None, limits: Limits | None = None, llm_only: bool = False,
                quiet: bool = False, log=None, max_queue: int = DEFAULT_MAX_QUEUE,
                request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S, max_batch: int = DEFAULT_MAX_BATCH,
                guided: bool = True) -> "SageServer":
    """A bound server (port 0 = a free one; see `.url`): `serve_forever()`, then `shutdown()` and `server_close()`.

    `log` is a text stream for one line per request and engine failures (default: sys.stderr at the time
    of writing); `quiet` drops the request lines only. `max_queue` requests may wait for the model
    (past it: 503 with Retry-After); a request gets `request_timeout_s` seconds, waiting included (504);
    up to `max_batch` waiting requests are decoded together. `guided`: as `sage infer --guided`.
    """
    return SageServer(host, port, Runner(engine, limits or Limits(), guided), model_name or engine.backbone_name,
                      api_key or None, llm_only, quiet, log, max_queue, request_timeout_s, max_batch)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_port_free(host: str, port: int) -> None:
    """Fail early (before minutes of model loading) when the address cannot be bound."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: TIME_WAIT is no obstacle
        try:
            s.bind((host.strip("[]"), port))
        except OSError as e:
            raise _bind_error(host, port, e) from None


def _bind_error(host: str, port: int, e: OSError) -> SageError:
    if e.errno == errno.EADDRINUSE:
        return SageError(f"cannot listen on {host}:{port}: the port is already in use (choose another with --port)")
    reason = e.strerror or str(e)
    return SageError(f"cannot listen on {host}:{port} ({reason})")


class SageServer:
    close_wait_s = 10.0

    def __init__(self, host, port, runner: Runner, model_name: str, api_key: str | None, llm_only: bool,
                 quiet: bool, log, max_queue: int = DEFAULT_MAX_QUEUE,
                 request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S, max_batch: int = DEFAULT_MAX_BATCH):
        import uvicorn

        if max_queue < 1:
            raise SageError("--max-queue must be at least 1")
        if max_batch < 1:
            raise SageError("--max-batch must be at least 1")
        if not request_timeout_s > 0:
            raise SageError("--request-timeout must be above 0")
        self.host, self.quiet, self._log = host, quiet, log
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.socket.bind((host.strip("[]"), port))
            self.socket.listen(BACKLOG)
        except OSError as e:
            self.socket.close()
            raise _bind_error(host, port, e) from None
        self.socket.setblocking(False)
        self.server_address = self.socket.getsockname()
        self.state = ServeState(runner=runner, model_name=model_name,
                                api_key=api_key.encode("utf-8") if api_key else None,  # never logged nor echoed
                                llm_only=llm_only, request_timeout_s=float(request_timeout_s),
                                write_log=self.write_log)
        self.state.worker = Worker(runner, max_queue, log=lambda line: self.write_log(line, always=True),
                                   max_batch=max_batch)
        self.state.metrics = Metrics(queue_depth=lambda: self.state.worker.depth,
                                     running=lambda: len(self.state.worker.running))
        self.state.worker.metrics = self.state.metrics
        config = uvicorn.Config(build_app(self.state), log_config=None, log_level="warning", access_log=False,
                                lifespan="off", backlog=BACKLOG, timeout_keep_alive=IDLE_TIMEOUT_S,
                                timeout_graceful_shutdown=int(self.close_wait_s), server_header=False,
                                date_header=True, headers=[("server", "sage-serve")])
        state = self.state

        class _Server(uvicorn.Server):
            async def shutdown(self, sockets=None):
                # Before uvicorn waits for the requests in flight: the queued ones are answered 503 at once,
                # the running one stops at its next token (the thread is joined in server_close).
                state.stopping.set()
                state.worker.stop(wait_s=0)
                await super().shutdown(sockets)

        self._uvicorn = _Server(config)
        self._done = threading.Event()
        self._done.set()

    # ---- socketserver's interface ---------------------------------------------------------------

    def serve_forever(self) -> None:
        self._done.clear()
        try:
            self._uvicorn.run(sockets=[self.socket])
        finally:
            self._done.set()

    def shutdown(self) -> None:
        """Stop serving (from another thread) and wait until serve_forever has returned."""
        self._uvicorn.should_exit = True
        self._done.wait(self.close_wait_s + 5)

    def server_close(self) -> None:
        """Stop the model worker (answers being decoded stop at their next token) and close the socket."""
        self.state.stopping.set()
        self._uvicorn.should_exit = True
        self.state.worker.stop(self.close_wait_s)
        self._done.wait(self.close_wait_s + 5)
        self.socket.close()

    # ---- what callers read ----------------------------------------------------------------------

    @property
    def runner(self) -> Runner:
        return self.state.runner

    @property
    def limits(self) -> Limits:
        return self.state.runner.limits

    @property
    def model_name(self) -> str:
        return self.state.model_name

    @property
    def port(self) -> int:
        return self.server_address[1]

    @property
    def url(self) -> str:
        host = f"[{self.host.strip('[]')}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    def write_log(self, line: str, always: bool = False) -> None:
        if self.quiet and not always:
            return
        stream = self._log or sys.stderr
        try:
            stream.write(line + "\n")
            stream.flush()
        except (OSError, ValueError):  # a closed stderr must not take a request down
            pass
