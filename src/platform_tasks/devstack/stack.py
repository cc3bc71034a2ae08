"""The whole platform on loopback: Sentinel topology, SMTP sink, payment gateway, workers, beat.

The demo (``platform-tasks dev``) and the integration tests both start this one stack, so what
the tests prove is what a developer sees running.
"""

from __future__ import annotations

import os
import secrets
import sys
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path

from platform_tasks.app import create_app
from platform_tasks.devstack.gateway import PaymentGatewayStub
from platform_tasks.devstack.lifecycle import Service
from platform_tasks.devstack.ports import LOOPBACK, free_port
from platform_tasks.devstack.processes import ManagedProcess, Supervisor
from platform_tasks.devstack.smtp_sink import SmtpSink
from platform_tasks.devstack.topology import SentinelTopology
from platform_tasks.heartbeat import queue_of_node
from platform_tasks.queues import QUEUE_NAMES, policy_for
from platform_tasks.settings import Settings, load_settings

#: Inherited variables that would contradict the stack's own broker (settings refuse a
#: Redis URL next to Sentinels) are dropped; the rest of a developer's PLATFORM_TASKS_* stay.
_CONFLICTING_ENV = (
    "PLATFORM_TASKS_REDIS_URL",
    "PLATFORM_TASKS_REDIS_USERNAME",
    "PLATFORM_TASKS_REDIS_TLS",
    "PLATFORM_TASKS_REDIS_TLS_CA_FILE",
)


class StackError(RuntimeError):
    """A process of the stack did not come up."""


def worker_argv(queue: str) -> list[str]:
    """The command that runs one queue's worker, as the container runs it."""
    return [sys.executable, "-m", "platform_tasks", "worker", "--queue", queue]


def beat_argv() -> list[str]:
    """The command that runs the scheduler."""
    return [sys.executable, "-m", "platform_tasks", "beat"]


def monitor_argv() -> list[str]:
    """The singleton that serves the broker's view as metrics."""
    return [sys.executable, "-m", "platform_tasks", "monitor"]


#: The user of Flower's basic auth in the local stack; the password is random per stack.
FLOWER_USER = "flower"


def flower_argv(port: int) -> list[str]:
    """Flower, through Celery's own CLI and the app module that reads the environment."""
    return [
        sys.executable, "-m", "celery", "-A", "platform_tasks.celery_app", "flower",
        f"--address={LOOPBACK}", f"--port={port}",
    ]


class DevStack(Service):
    """Starts the platform's processes against a fresh Sentinel topology under ``run_dir``.

    Each child's output goes to ``run_dir/logs/<name>.log``. Beat runs under a supervisor
    that restarts it, because a Sentinel failover makes it exit by design. Workers are
    restarted too only with ``restart_workers`` (as Kubernetes would); tests leave it off so a
    crashed worker shows up as a dead process instead of being hidden by a restart.
    """

    def __init__(
        self,
        run_dir: Path,
        *,
        queues: Iterable[str] = QUEUE_NAMES,
        beat: bool = True,
        beats: int = 1,
        smtp: bool = True,
        gateway: bool = True,
        gateway_fail_every: int = 3,
        media_root: Path | None = None,
        extra_env: Mapping[str, str] | None = None,
        flower: bool = False,
        monitor: bool = True,
        restart_workers: bool = False,
        stop_timeout: float = 15.0,
    ) -> None:
        self.run_dir = Path(run_dir).resolve()
        self.queues = tuple(queues)
        unknown = sorted(set(self.queues) - set(QUEUE_NAMES))
        if unknown:
            raise ValueError(f"unknown queues {unknown}; known: {', '.join(QUEUE_NAMES)}")
        self.beats = beats if beat else 0
        self.media_root = (media_root or self.run_dir / "media").resolve()
        self.extra_env = dict(extra_env or {})
        self.restart_workers = restart_workers
        self.stop_timeout = stop_timeout
        self.topology = SentinelTopology(
            self.run_dir,
            password=secrets.token_urlsafe(18),
            sentinel_password=secrets.token_urlsafe(18),
        )
        self.smtp: SmtpSink | None = (
            SmtpSink(LOOPBACK, 0, mail_dir=self.run_dir / "mail") if smtp else None
        )
        self.gateway: PaymentGatewayStub | None = (
            PaymentGatewayStub(LOOPBACK, 0, fail_every=gateway_fail_every) if gateway else None
        )
        self.flower = flower
        self.flower_port: int | None = None
        #: Flower's basic-auth login ``(user, password)``: its HTTP API answers no one without.
        self.flower_auth: tuple[str, str] | None = (
            (FLOWER_USER, secrets.token_urlsafe(18)) if flower else None
        )
        self.monitor = monitor
        self.monitor_port: int | None = None
        #: Queue -> port of that worker's /metrics.
        self.metrics_ports: dict[str, int] = {}
        self.processes: dict[str, ManagedProcess] = {}
        self._supervisor = Supervisor()
        self._env: dict[str, str] | None = None
        self._started_services: list[SmtpSink | PaymentGatewayStub] = []

    # -- life cycle -------------------------------------------------------------------------

    @property
    def log_dir(self) -> Path:
        return self.run_dir / "logs"

    @property
    def metrics_urls(self) -> dict[str, str]:
        """Process name -> its /metrics URL (every worker, and the monitor when it runs)."""
        urls = {
            f"worker-{queue}": f"http://{LOOPBACK}:{port}/metrics"
            for queue, port in self.metrics_ports.items()
        }
        if self.monitor_port is not None:
            urls["monitor"] = f"http://{LOOPBACK}:{self.monitor_port}/metrics"
        return urls

    @property
    def flower_url(self) -> str | None:
        return None if self.flower_port is None else f"http://{LOOPBACK}:{self.flower_port}"

    def start(self) -> None:
        """Start everything; on failure stop what was started and re-raise."""
        if self._env is not None:
            raise StackError("the stack is already started")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.media_root.mkdir(parents=True, exist_ok=True)
        try:
            self.topology.start()
            for service in (self.smtp, self.gateway):
                if service is not None:
                    service.start()
                    self._started_services.append(service)
            self._env = self._build_env()
            for queue in self.queues:
                self.metrics_ports[queue] = free_port()
                self._spawn(f"worker-{queue}", worker_argv(queue),
                            restart=self.restart_workers, env=self._worker_overrides(queue))
            if self.monitor:
                self.monitor_port = free_port()
                self._spawn(
                    "monitor", monitor_argv(), restart=True,
                    env={"PLATFORM_TASKS_MONITOR_PORT": str(self.monitor_port)},
                )
            for index in range(self.beats):
                name = "beat" if self.beats == 1 else f"beat-{index + 1}"
                self._spawn(name, beat_argv(), restart=True)
            if self.flower_auth is not None:
                self.flower_port = free_port()
                # Flower reads FLOWER_* variables; the password stays off the command line,
                # which goes into the process's log and shows in ps.
                self._spawn("flower", flower_argv(self.flower_port),
                            env={"FLOWER_BASIC_AUTH": ":".join(self.flower_auth)})
            self._supervisor.start()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop everything this stack started, in reverse order; safe to call twice."""
        self._supervisor.stop()
        # SIGTERM every child first and then wait, so the workers' warm shutdowns overlap.
        children = list(reversed(self.processes.values()))
        for process in children:
            process.terminate()
        deadline = time.monotonic() + self.stop_timeout
        for process in children:
            process.stop(max(0.0, deadline - time.monotonic()))
        self.processes.clear()
        for service in reversed(self._started_services):
            service.stop()
        self._started_services.clear()
        self.topology.stop()
        self._env = None

    # -- what the stack offers --------------------------------------------------------------

    @property
    def env(self) -> dict[str, str]:
        """The environment the stack's processes run with (a copy)."""
        if self._env is None:
            raise StackError("the stack is not started")
        return dict(self._env)

    def worker_env(self, queue: str) -> dict[str, str]:
        """The environment ``queue``'s worker runs with, e.g. for its probe commands."""
        return {**self.env, **self._worker_overrides(queue)}

    def _worker_overrides(self, queue: str) -> dict[str, str]:
        # Each worker of the one host gets its own metrics port and directory and its own
        # liveness file, as each pod would.
        return {
            "PLATFORM_TASKS_METRICS_PORT": str(self.metrics_ports[queue]),
            "PLATFORM_TASKS_METRICS_DIR": str(self.run_dir / "metrics" / queue),
            "PLATFORM_TASKS_HEARTBEAT_FILE": str(self.run_dir / f"{queue}.alive"),
        }

    def settings(self) -> Settings:
        """The platform settings that talk to this stack."""
        return load_settings(self.env)

    def wait_for_workers(self, timeout: float = 60.0) -> None:
        """Wait until every queue's worker answers a ping; raise :class:`StackError` if one
        does not in ``timeout`` seconds, or exits."""
        app = create_app(self.settings(), include_tasks=False)
        deadline = time.monotonic() + timeout
        missing = list(self.queues)
        try:
            while True:
                for queue in missing:
                    process = self.processes[f"worker-{queue}"]
                    if not process.alive:
                        raise StackError(
                            f"worker for queue {queue!r} exited with status "
                            f"{process.returncode}; see {process.log_path}"
                        )
                replies = app.control.ping(timeout=1.0) or []
                hostnames = {str(name) for reply in replies for name in reply}
                answered = Counter(queue_of_node(name) for name in hostnames)
                missing = [
                    queue for queue in self.queues
                    if answered[queue] < policy_for(queue).worker_nodes
                ]
                if not missing:
                    return
                if time.monotonic() >= deadline:
                    raise StackError(
                        f"no worker answered for {', '.join(missing)} within {timeout:g}s; "
                        f"logs in {self.log_dir}"
                    )
        finally:
            app.close()

    # -- internals --------------------------------------------------------------------------

    def _build_env(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if key not in _CONFLICTING_ENV}
        env.update(self.topology.settings_env())
        env["PLATFORM_TASKS_MEDIA_ROOT"] = str(self.media_root)
        if self.smtp is not None:
            env["PLATFORM_TASKS_SMTP_HOST"] = LOOPBACK
            env["PLATFORM_TASKS_SMTP_PORT"] = str(self.smtp.port)
        if self.gateway is not None:
            env["PLATFORM_TASKS_PAYMENT_GATEWAY_URL"] = self.gateway.url
        # Logs reach the files as they are written, not when a buffer fills.
        env["PYTHONUNBUFFERED"] = "1"
        # Metrics only on loopback; heartbeats and monitor polls a little faster than in a
        # cluster so that a local change shows within seconds.
        env["PLATFORM_TASKS_METRICS_HOST"] = LOOPBACK
        env["PLATFORM_TASKS_HEARTBEAT_INTERVAL_SECONDS"] = "2"
        env["PLATFORM_TASKS_MONITOR_INTERVAL_SECONDS"] = "2"
        if self.flower:
            # Flower's task list is built from the workers' task events.
            env["PLATFORM_TASKS_TASK_EVENTS"] = "true"
        env.update(self.extra_env)
        return env

    def _spawn(
        self, name: str, argv: list[str], *, restart: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> ManagedProcess:
        process = ManagedProcess(
            name, argv, {**self.env, **(env or {})}, self.log_dir / f"{name}.log",
            restart=restart,
            cwd=self.run_dir,
        )
        self.processes[name] = process
        process.start()
        self._supervisor.watch(process)
        return process
