"""The system under fault: platform workers and beats as real subprocesses on a topology.

Each process is what the container runs (``python -m platform_tasks worker --queue Q``, or
``beat``), plus ``--include ledger_tasks`` so it carries the suite's tasks and ledger hooks.
Processes run in sessions of their own; they are signalled only by the PID (or process group)
this module got when it started them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import redis
from ledger import LEDGER_URL_ENV, Ledger

from platform_tasks.devstack.processes import ManagedProcess
from platform_tasks.devstack.topology import MIN_REPLICAS_TO_WRITE, SentinelTopology
from platform_tasks.redis_client import connect, no_retry
from platform_tasks.settings import ENV_PREFIX, Settings, load_settings

HERE = Path(__file__).resolve().parent
LEDGER_MODULE = "ledger_tasks"

#: Seconds after which a dead worker's messages go back on their queue. Short, so that the
#: drain after a SIGKILL takes seconds; live workers refresh what they hold (the platform's
#: visibility heartbeat), so long tasks are not handed out twice.
VISIBILITY_TIMEOUT_SECONDS = 6
#: Runs of a message whose every run kills its worker, before it is dead-lettered.
MAX_REDELIVERIES = 3


class ClusterError(RuntimeError):
    """A process of the system under fault did not come up, or did not stop."""


class Cluster:
    """Starts, signals and stops the platform's processes for one scenario."""

    def __init__(
        self,
        topology: SentinelTopology,
        ledger: Ledger,
        run_dir: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.topology = topology
        self.ledger = ledger
        self.run_dir = run_dir
        self.extra_env = dict(env or {})
        self.processes: dict[str, ManagedProcess] = {}

    # -- configuration ------------------------------------------------------------------------

    def env(self, overrides: Mapping[str, str] | None = None) -> dict[str, str]:
        """What every process of the scenario runs with."""
        # The developer's own PLATFORM_TASKS_* would make results depend on their shell.
        env = {key: value for key, value in os.environ.items()
               if not key.upper().startswith(ENV_PREFIX)}
        env.update(self.topology.settings_env())
        env.update({
            "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE),
                                                        os.environ.get("PYTHONPATH")])),
            "PYTHONUNBUFFERED": "1",
            LEDGER_URL_ENV: self.ledger.url,
            # No /metrics server per worker: nothing here reads them.
            "PLATFORM_TASKS_METRICS_PORT": "0",
            "PLATFORM_TASKS_HEARTBEAT_INTERVAL_SECONDS": "1",
            "PLATFORM_TASKS_BEAT_LOCK_TIMEOUT": "5",
            "PLATFORM_TASKS_VISIBILITY_TIMEOUT_SECONDS": str(VISIBILITY_TIMEOUT_SECONDS),
            "PLATFORM_TASKS_MAX_REDELIVERIES": str(MAX_REDELIVERIES),
            # Short enough that a worker notices a dead connection within the scenario.
            "PLATFORM_TASKS_REDIS_SOCKET_TIMEOUT": "3",
        })
        env.update(self.extra_env)
        env.update(overrides or {})
        return env

    def settings(self, overrides: Mapping[str, str] | None = None) -> Settings:
        return load_settings(self.env(overrides))

    def broker(self) -> redis.Redis:
        """A client of whatever master the Sentinels name now; it fails fast, never hangs."""
        return connect(self.settings(), retry=no_retry())

    # -- processes ----------------------------------------------------------------------------

    def start_worker(
        self,
        queue: str,
        *,
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        wait: bool = True,
    ) -> ManagedProcess:
        name = name or f"worker-{queue}"
        argv = [sys.executable, "-m", "platform_tasks", "worker", "--queue", queue,
                "--include", LEDGER_MODULE]
        overrides = {"PLATFORM_TASKS_HEARTBEAT_FILE": str(self.run_dir / f"{name}.alive"),
                     **(env or {})}
        process = self._spawn(name, argv, overrides)
        if wait:
            self.wait_ready(process)
        return process

    def start_workers(self, *queues: str) -> list[ManagedProcess]:
        """One worker per queue, started together and then waited for (they boot in
        parallel, which on two cores saves seconds per scenario)."""
        processes = [self.start_worker(queue, wait=False) for queue in queues]
        for process in processes:
            self.wait_ready(process)
        return processes

    def start_beat(self, name: str = "beat", *, wait: bool = True) -> ManagedProcess:
        argv = [sys.executable, "-m", "platform_tasks", "beat", "--include", LEDGER_MODULE]
        process = self._spawn(name, argv, {})
        if wait:
            self.wait_ready(process)
        return process

    def restart(self, process: ManagedProcess, *, wait: bool = True) -> None:
        """Start ``process`` again after it died or was stopped, as Kubernetes would."""
        process.start()
        if wait:
            self.wait_ready(process)

    def wait_ready(self, process: ManagedProcess, timeout: float = 60.0) -> None:
        """Wait until the process's current run reported ready in the ledger (a worker
        group: every member it started)."""
        deadline = time.monotonic() + timeout
        while True:
            pid = process.pid
            if pid is not None and self._ready(pid):
                return
            if not process.alive:
                raise ClusterError(f"{process.name} exited with {process.returncode}; "
                                   f"see {process.log_path}")
            if time.monotonic() > deadline:
                raise ClusterError(f"{process.name} not ready in {timeout:g}s; "
                                   f"see {process.log_path}")
            time.sleep(0.1)

    def _ready(self, pid: int) -> bool:
        if self.ledger.is_ready(pid):
            return True
        # A worker group's supervisor is not a Celery worker; its members report.
        try:
            members = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            return False
        return bool(members) and all(self.ledger.is_ready(int(member)) for member in members)

    def kill(self, process: ManagedProcess, sig: int = signal.SIGKILL) -> None:
        """Signal ``process`` and every process of its group: a container killed whole."""
        pid = process.pid
        if pid is None:
            return
        signal_group(pid, sig)
        if sig == signal.SIGKILL:
            process.wait(10.0)

    def stop(self, process: ManagedProcess, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL to the whole group after ``timeout``: a hung worker, or the
        pool processes of a main process killed alone, do not outlive the scenario."""
        pid = process.pid
        if pid is None:
            return
        process.terminate()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not _exited(pid):
            time.sleep(0.05)
        signal_group(pid, signal.SIGKILL)
        process.stop(5.0)  # reaps it

    def stop_all(self, timeout: float = 10.0) -> None:
        """SIGTERM every process at once, then SIGKILL what is left after ``timeout``: warm
        shutdowns overlap, and a hung worker costs the timeout once, not once per worker."""
        for process in self.processes.values():
            process.terminate()
        deadline = time.monotonic() + timeout
        for process in self.processes.values():
            self.stop(process, max(0.0, deadline - time.monotonic()))
        self.processes.clear()

    def _spawn(self, name: str, argv: list[str], overrides: Mapping[str, str]) -> ManagedProcess:
        if name in self.processes:
            raise ClusterError(f"a process named {name} already runs")
        process = ManagedProcess(name, argv, self.env(overrides),
                                 self.run_dir / "logs" / f"{name}.log", cwd=self.run_dir)
        self.processes[name] = process
        process.start()
        return process


def _exited(pid: int) -> bool:
    """Whether our child ``pid`` has exited, without reaping it (its PID stays ours)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True  # already reaped


def signal_group(pgid: int, sig: int) -> None:
    """Send ``sig`` to the process group a child of ours leads (its own session).

    Only while the group still has a member, the unreaped leader included: Linux does not
    hand out a PID that is still some group's id, so the group is then certainly ours.
    """
    members = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            members += int(fields[2]) == pgid
    if members:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)


def wait_topology_healthy(topology: SentinelTopology, timeout: float = 60.0) -> None:
    """Wait until the Sentinels agree on a master that has every replica in sync.

    Scenarios that fault the broker end with this, so the drain and the next scenario start
    from a whole topology: a master, ``replicas`` replicas linked to it, writes accepted.
    """
    deadline = time.monotonic() + timeout
    problem = "not checked yet"
    while time.monotonic() < deadline:
        try:
            _, port = topology.master_address()
            with topology.client(port, timeout=1.0) as master:
                role = master.execute_command("ROLE")
                info = master.info("replication")
            if str(role[0]) != "master":
                problem = f"{port} is {role[0]}"
            elif int(info.get("connected_slaves", 0)) < topology.replicas:
                problem = f"master {port} has {info.get('connected_slaves')} replicas"
            elif not _replicas_linked(topology, port):
                problem = "a replica's link to the master is down"
            else:
                return
        except (redis.RedisError, OSError, RuntimeError) as error:
            problem = f"{type(error).__name__}: {error}"
        time.sleep(0.2)
    raise ClusterError(f"the topology did not heal in {timeout:g}s: {problem}")


def _replicas_linked(topology: SentinelTopology, master_port: int) -> bool:
    linked = 0
    for port in topology.node_ports:
        if port == master_port:
            continue
        with topology.client(port, timeout=1.0) as replica:
            info = replica.info("replication")
        if info.get("master_port") == master_port and info.get("master_link_status") == "up":
            linked += 1
    return linked >= max(MIN_REPLICAS_TO_WRITE, topology.replicas)
