"""`sage serve`: an OpenAI-compatible HTTP server over a sage checkpoint or a packaged LLM."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer

from sage_cli.commands.options import Backbone, Checkpoint, Device, Dtype, Seed


def serve(
    checkpoint: Checkpoint = None,
    backbone: Backbone = None,
    llm_only: bool = typer.Option(False, "--llm-only", help="Text chat with the backbone's LLM only (a local judge or fact writer); images are refused."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on. Anything but loopback is reachable from other machines: use --api-key-env."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="Port to listen on (0: a free one; the URL is printed)."),
    served_name: Optional[str] = typer.Option(None, "--served-name", help="The model id clients send and /v1/models lists (default: the backbone's name)."),
    api_key_env: Optional[str] = typer.Option(None, "--api-key-env", help="Require 'Authorization: Bearer KEY' with the key read from this environment variable (default: no key)."),
    max_tokens: int = typer.Option(512, "--max-tokens", min=1, help="Most completion tokens a request may ask for (also the default)."),
    max_body_mb: float = typer.Option(20.0, "--max-body-mb", min=0.001, help="Largest request body, in MB."),
    max_image_mb: float = typer.Option(10.0, "--max-image-mb", min=0.001, help="Largest image (decoded file), in MB."),
    max_image_pixels: int = typer.Option(40_000_000, "--max-image-pixels", min=1, help="Most pixels (width x height) of an image; guards against decompression bombs."),
    max_queue: int = typer.Option(64, "--max-queue", min=1, help="Most requests waiting for the model; past it a request gets 503 with Retry-After."),
    max_batch: int = typer.Option(16, "--max-batch", min=1, help="Most waiting requests decoded together in one batch (1: one at a time)."),
    request_timeout: float = typer.Option(600.0, "--request-timeout", min=0.001, help="Seconds a request may take, waiting in the queue included (then 504, or an error event in a stream)."),
    device: Device = "auto",
    dtype: Dtype = "auto",
    seed: Seed = 0,
    quiet: bool = typer.Option(False, "--quiet", help="No line per request on stderr (failures are still logged)."),
    guided: bool = typer.Option(True, "--guided/--no-guided", help="With a calibrated checkpoint: the answer's first word (yes/no) to a question on whether the part is defective or normal, or where the defect is, comes from the calibrated detection and the anomaly map, as in `sage infer` (a request without a reference uses the zero-shot calibration, if the checkpoint has one)."),
) -> None:
    """Serve a sage model over an OpenAI-compatible HTTP API (/v1/models, /v1/chat/completions).

    Send images inline as image_url data URLs in the last user message: the first is the TEST image,
    the second (optional) the normal REFERENCE, as in `sage infer TEST REF`; the message's text is the
    question. Fact sentences go in the body's extension field "sage": {"facts": [...]}. Answers with
    images carry "sage": {"p_yes", "anomaly", "guided", "contradicted"} (and p_defect, verdict, threshold with
    a calibrated checkpoint; --guided: the first word of a yes/no answer it can give comes from that verdict,
    and "contradicted" says the model's words after it say the opposite). Without
    images (or with --llm-only) the conversation is plain text chat with the backbone's LLM. Streaming, bearer auth and size limits are supported;
    temperature defaults to 0 (greedy). One model worker answers from a bounded queue (--max-queue),
    decoding what is waiting together (--max-batch);
    /metrics is Prometheus text, /docs the OpenAPI page, every response carries X-Request-Id.
    """
    from sage_cli.errors import SageError
    from sage_cli.models.checkpoint import resolve as resolve_checkpoint
    from sage_cli.serve.protocol import MB, Limits
    from sage_cli.serve.server import check_port_free, is_loopback, make_server

    checkpoint = resolve_checkpoint(checkpoint, backbone)
    api_key = None
    if api_key_env:
        api_key = os.environ.get(api_key_env)
        if not api_key:
            raise SageError(f"--api-key-env {api_key_env}: the environment variable is not set (or empty)")
    if served_name is not None and not served_name.strip():
        raise SageError("--served-name is empty")
    limits = Limits(max_tokens=max_tokens, max_body_bytes=int(max_body_mb * MB), max_image_bytes=int(max_image_mb * MB),
                    max_image_pixels=max_image_pixels)
    check_port_free(host, port)  # before the model loads, which may take minutes

    from sage_cli.models.engine import Engine

    engine = Engine.load(backbone, str(checkpoint) if checkpoint else None, dtype=dtype, device=device, seed=seed)
    name = served_name or _default_name(engine.backbone_name)
    server = make_server(engine, host, port, model_name=name, api_key=api_key, limits=limits, llm_only=llm_only,
                         quiet=quiet, max_queue=max_queue, request_timeout_s=request_timeout,
                         max_batch=max_batch, guided=guided)
    err = sys.stderr
    if not is_loopback(host):
        auth = "a key is required" if api_key else "and NO key is required (set --api-key-env)"
        err.write(f"warning: listening on {host}: reachable from other machines, {auth}\n")
    if engine.checkpoint is None and not llm_only:
        err.write(f"note: {engine.backbone_name} with untrained SAGE layers (no --checkpoint); image answers are not "
                  "those of a trained inspector\n")
    sys.stdout.write(f"serving {name} at {server.url}{' (text only)' if llm_only else ''}\n")
    sys.stdout.flush()
    _serve_until_stopped(server)


def _default_name(backbone: str) -> str:
    """The backbone's name; for a local directory its last part (a model id need not reveal local paths)."""
    p = Path(backbone)
    return p.name if p.is_dir() and p.name else backbone


class _Stop(BaseException):
    """SIGTERM (uvicorn re-raises it once it has shut down). Not an Exception, so nothing on the way swallows it."""


def _serve_until_stopped(server) -> None:
    """Serve until Ctrl-C or SIGTERM, then close the socket and return (exit 0, no traceback)."""
    import signal
    import threading

    def on_term(signum, frame):
        raise _Stop()

    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, on_term) if main else None
    try:
        server.serve_forever()
    except (KeyboardInterrupt, _Stop):
        pass
    finally:
        server.server_close()
        if main:
            signal.signal(signal.SIGTERM, previous)
    sys.stderr.write("stopped\n")
