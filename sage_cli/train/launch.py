"""Running a training command under `accelerate launch` (several processes) from a plain `sage train ...`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from sage_cli.config import find_accelerate_config


def launched() -> bool:
    """Inside `accelerate launch` / torchrun already (they set these)."""
    return "LOCAL_RANK" in os.environ or "ACCELERATE_PROCESS_INDEX" in os.environ


def relaunch(config: str, args: list[str]) -> int:
    """Run this same `sage` command (`args`, without --accelerate-config) again under `accelerate launch
    --config_file CONFIG`; returns its exit code. Its stderr is relayed (`relay_stderr`)."""
    path = find_accelerate_config(config)
    argv, skip = [], False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg == "--accelerate-config":
            skip = True
            continue
        if arg.startswith("--accelerate-config="):
            continue
        argv.append(arg)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(path), "-m", "sage_cli", *argv]
    env = dict(os.environ)
    if sys.stderr.isatty():  # the main process's progress bar still draws, through the pipe below
        env.setdefault("TTY_COMPATIBLE", "1")
        env.setdefault("COLUMNS", str(shutil.get_terminal_size().columns))
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, env=env)
    relay_stderr(proc.stderr.fileno(), sys.stderr.buffer)
    return proc.wait()


def relay_stderr(fd: int, out) -> None:
    """Copy the launched processes' stderr to `out` as it comes, until a process prints sage's one-line
    "error: ..."; after it only new error lines pass, not the same line from every process nor the
    launcher's report of the failed processes (a traceback of torch's launcher, not of sage)."""
    pending, written = b"", 0  # the current line, and how much of it is already out (progress bars)
    failed, shown = False, set()
    while chunk := os.read(fd, 65536):
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            is_error = line.startswith(b"error: ")
            if not failed:
                out.write(line[written:] + b"\n")
            elif is_error and line not in shown:
                out.write(line + b"\n")
            if is_error:
                failed = True
                shown.add(line)
            written = 0
        if not failed and len(pending) > written:
            out.write(pending[written:])
            written = len(pending)
        out.flush()
