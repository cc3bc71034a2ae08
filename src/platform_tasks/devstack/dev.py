"""``platform-tasks dev``: the whole platform on this machine, a demo, then running until Ctrl-C."""

from __future__ import annotations

import os
import shlex
import signal
import sys
import time
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import TextIO

from platform_tasks.devstack.demo import run_demo
from platform_tasks.devstack.redis_binary import RedisBinaryNotFound
from platform_tasks.devstack.stack import DevStack, StackError
from platform_tasks.devstack.topology import TopologyError

_SECRET_SUFFIXES = ("_PASSWORD",)


def default_run_dir() -> Path:
    """``.run/dev-<timestamp>`` under the current directory."""
    return Path.cwd() / ".run" / f"dev-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def _platform_env(env: dict[str, str]) -> dict[str, str]:
    return {key: value for key, value in sorted(env.items()) if key.startswith("PLATFORM_TASKS_")}


def _write_env_file(stack: DevStack) -> Path:
    # The printed variables hide the passwords; this file, readable only by its owner, has
    # them, so another shell can `source` it and run `platform-tasks enqueue …`.
    path = stack.run_dir / "env.sh"
    lines = [f"export {key}={shlex.quote(value)}" for key, value in
             _platform_env(stack.env).items()]
    if stack.flower_auth is not None:
        # Flower's login, as `curl -u "$FLOWER_BASIC_AUTH"` and Flower itself read it.
        lines.append(f"export FLOWER_BASIC_AUTH={shlex.quote(':'.join(stack.flower_auth))}")
    # Created owner-only, so the passwords are never readable by others, not even briefly.
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write("\n".join(lines) + "\n")
    return path


def print_banner(stack: DevStack, out: TextIO) -> None:
    """Where the logs are and how to talk to the stack, secrets masked."""
    print(f"platform-tasks dev stack is up in {stack.run_dir}", file=out)
    print(f"  logs:        {stack.log_dir}/<name>.log", file=out)
    for process in [*stack.topology.processes, *stack.processes.values()]:
        print(f"    {process.name:<16} pid {process.pid}  {process.log_path}", file=out)
    print(f"  sentinels:   {', '.join(f'{h}:{p}' for h, p in stack.topology.sentinel_addresses)}",
          file=out)
    if stack.smtp is not None:
        print(f"  smtp sink:   127.0.0.1:{stack.smtp.port} (mail in {stack.run_dir / 'mail'})",
              file=out)
    if stack.gateway is not None:
        print(f"  gateway:     {stack.gateway.url}", file=out)
    if stack.flower_url is not None and stack.flower_auth is not None:
        print(f"  flower:      {stack.flower_url} (user {stack.flower_auth[0]}, password in "
              "env.sh as FLOWER_BASIC_AUTH)", file=out)
    for name, url in stack.metrics_urls.items():
        print(f"  metrics:     {name:<16} {url}", file=out)
    print(f"  media root:  {stack.media_root}", file=out)
    print("  environment (passwords masked):", file=out)
    for key, value in _platform_env(stack.env).items():
        shown = "********" if key.endswith(_SECRET_SUFFIXES) else value
        print(f"    {key}={shown}", file=out)
    print(f"  to use it from another shell: source {_write_env_file(stack)}", file=out)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _say_stopping(signum: int, frame: FrameType | None) -> None:
    print("still stopping the stack's processes, please wait…", file=sys.stderr)


def run_dev(run_dir: Path | None, *, demo: bool = True, flower: bool = False) -> int:
    """Start the stack, run the demo, keep running until Ctrl-C or SIGTERM, stop everything.

    Exit status 0, or 1 if the stack did not start or the demo did not finish as expected.
    """
    out = sys.stdout
    # Like Kubernetes, bring a crashed worker back; its log keeps each run's start line.
    stack = DevStack(run_dir or default_run_dir(), flower=flower, restart_workers=True)
    # SIGTERM takes the same way out as Ctrl-C, through the ``finally`` that stops the stack.
    # SIGINT is set too: a shell starts background jobs with it ignored, and Python then
    # never turns it into KeyboardInterrupt.
    previous_term = signal.signal(signal.SIGTERM, _raise_interrupt)
    previous_int = signal.signal(signal.SIGINT, _raise_interrupt)
    status = 0
    try:
        print(f"starting the dev stack in {stack.run_dir} …", file=out, flush=True)
        stack.start()
        stack.wait_for_workers(timeout=90.0)
        print_banner(stack, out)
        if demo:
            print("", file=out)
            if not run_demo(stack.settings(), out):
                status = 1
        print("", file=out)
        print("running; press Ctrl-C to stop", file=out, flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("", file=out)
    except (RedisBinaryNotFound, TopologyError, StackError) as error:
        print(f"platform-tasks dev: {error}", file=sys.stderr)
        status = 1
    finally:
        # A second Ctrl-C must not abandon children half-stopped.
        signal.signal(signal.SIGINT, _say_stopping)
        signal.signal(signal.SIGTERM, _say_stopping)
        try:
            print("stopping the dev stack …", file=out, flush=True)
            stack.stop()
            print(f"stopped; logs kept in {stack.log_dir}", file=out, flush=True)
        finally:
            signal.signal(signal.SIGINT, previous_int)
            signal.signal(signal.SIGTERM, previous_term)
    return status

