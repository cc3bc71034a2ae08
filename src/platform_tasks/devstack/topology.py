"""A real Redis Sentinel topology on loopback: one master, its replicas and the Sentinels.

The nodes are configured as the chart configures them in production (passwords, AOF,
``min-replicas-to-write``, ``noeviction``), so failover behaves here as it does there.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import redis

from platform_tasks.devstack.lifecycle import Service
from platform_tasks.devstack.ports import LOOPBACK, free_ports
from platform_tasks.devstack.processes import ManagedProcess
from platform_tasks.devstack.redis_binary import find_redis_server

Address = tuple[str, int]

T = TypeVar("T")

#: A master accepts writes only while this many replicas are connected and recent, so a master
#: cut off from its replicas (the one a failover leaves behind) refuses writes it would lose.
MIN_REPLICAS_TO_WRITE = 1
MIN_REPLICAS_MAX_LAG = 10


class TopologyError(RuntimeError):
    """The topology did not reach the state it was waiting for."""


@dataclass(frozen=True)
class _Node:
    name: str
    port: int
    config: Path
    process: ManagedProcess


def _quote(value: str) -> str:
    if any(char in value for char in "\r\n\0"):
        raise ValueError("passwords and names may not contain line breaks or NUL")
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _replication(client: redis.Redis) -> dict[str, str]:
    """``INFO replication`` with every value as text (redis-py converts numbers)."""
    info: dict[str, Any] = client.info("replication")
    return {key: str(value) for key, value in info.items()}


def _server_lines(port: int, directory: Path, password: str) -> list[str]:
    """Config lines every node and Sentinel share: loopback only, foreground, logs to stdout."""
    return [
        f"port {port}",
        f"bind {LOOPBACK}",
        "protected-mode yes",
        "daemonize no",
        'logfile ""',
        f"dir {_quote(str(directory))}",
        f"requirepass {_quote(password)}",
    ]


def _loopback_client(port: int, password: str, timeout: float) -> redis.Redis:
    return redis.Redis(
        host=LOOPBACK,
        port=port,
        password=password,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        decode_responses=True,
    )


class SentinelTopology(Service):
    """Starts and controls ``redis-server`` processes: a master, replicas and Sentinels.

    Everything listens on 127.0.0.1 only, on ports picked free at start. Configs, data and
    logs live under ``run_dir`` (logs in ``run_dir/logs/<name>.log``).
    """

    def __init__(
        self,
        run_dir: Path,
        *,
        password: str,
        sentinel_password: str,
        master_name: str = "platform-tasks",
        replicas: int = 2,
        sentinels: int = 3,
        quorum: int = 2,
        down_after_ms: int = 2000,
        failover_timeout_ms: int = 5000,
        binary: Path | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        if replicas < MIN_REPLICAS_TO_WRITE:
            raise ValueError(f"the master needs at least {MIN_REPLICAS_TO_WRITE} replica(s)")
        if not 1 <= quorum <= sentinels:
            raise ValueError("quorum must be between 1 and the number of sentinels")
        self.run_dir = Path(run_dir)
        self.password = password
        self.sentinel_password = sentinel_password
        self.master_name = master_name
        self.replicas = replicas
        self.sentinels = sentinels
        self.quorum = quorum
        # 1000 ms fails over faster, but on a loaded two-core machine a Sentinel then
        # sometimes declares the just-promoted master down too and fails over a second time,
        # discarding what the first new master accepted in between.
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.binary = binary
        self.start_timeout = start_timeout
        self._nodes: list[_Node] = []
        self._sentinels: list[_Node] = []

    # -- life cycle -------------------------------------------------------------------------

    @property
    def log_dir(self) -> Path:
        return self.run_dir / "logs"

    def start(self) -> None:
        """Write the configs, start every process and wait until replication and the
        Sentinels have settled. On failure, stops what it started and raises."""
        if self._nodes:
            raise TopologyError("the topology is already started")
        # Absolute, as each process runs in its own directory; but symlinks kept, since
        # Debian's redis-server is a link to a multi-call binary that reads its argv[0].
        binary = (self.binary or find_redis_server()).absolute()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        ports = free_ports(1 + self.replicas + self.sentinels)
        node_ports, sentinel_ports = ports[: 1 + self.replicas], ports[1 + self.replicas :]
        master_port = node_ports[0]
        try:
            for port in node_ports:
                config = self._write_node_config(port, None if port == master_port else master_port)
                argv = [str(binary), str(config)]
                self._nodes.append(self._launch(f"redis-{port}", port, config, argv))
            self._wait(
                self._replication_settled, self.start_timeout, "replicas in sync", self._nodes
            )
            for port in sentinel_ports:
                config = self._write_sentinel_config(port, master_port)
                argv = [str(binary), str(config), "--sentinel"]
                self._sentinels.append(self._launch(f"sentinel-{port}", port, config, argv))
            self._wait(
                self._sentinels_settled,
                self.start_timeout,
                "sentinels agreeing",
                [*self._nodes, *self._sentinels],
            )
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the Sentinels, then the nodes: SIGTERM, then SIGKILL after ``timeout``."""
        for node in [*reversed(self._sentinels), *reversed(self._nodes)]:
            node.process.stop(timeout)
        self._sentinels.clear()
        self._nodes.clear()

    # -- addresses and clients --------------------------------------------------------------

    @property
    def sentinel_addresses(self) -> list[Address]:
        return [(LOOPBACK, node.port) for node in self._sentinels]

    @property
    def processes(self) -> list[ManagedProcess]:
        """The data nodes' and then the Sentinels' processes."""
        return [node.process for node in [*self._nodes, *self._sentinels]]

    @property
    def node_ports(self) -> list[int]:
        """Ports of the master and replicas, in start order (the first started as master)."""
        return [node.port for node in self._nodes]

    def client(self, port: int, *, timeout: float = 2.0) -> redis.Redis:
        """A client for the data node on ``port`` (caller closes it)."""
        return _loopback_client(port, self.password, timeout)

    def sentinel_client(self, port: int, *, timeout: float = 2.0) -> redis.Redis:
        """A client for the Sentinel on ``port`` (caller closes it)."""
        return _loopback_client(port, self.sentinel_password, timeout)

    def settings_env(self) -> dict[str, str]:
        """The ``PLATFORM_TASKS_*`` variables that point the platform at this topology."""
        return {
            "PLATFORM_TASKS_SENTINELS": ",".join(
                f"{host}:{port}" for host, port in self.sentinel_addresses
            ),
            "PLATFORM_TASKS_SENTINEL_MASTER": self.master_name,
            "PLATFORM_TASKS_REDIS_PASSWORD": self.password,
            "PLATFORM_TASKS_SENTINEL_PASSWORD": self.sentinel_password,
        }

    # -- what the Sentinels say -------------------------------------------------------------

    def master_address(self) -> Address:
        """The master a majority of the reachable Sentinels report right now."""
        answers: Counter[Address] = Counter()
        for _, port in self.sentinel_addresses:
            try:
                with self.sentinel_client(port, timeout=1.0) as sentinel:
                    reply = sentinel.sentinel_get_master_addr_by_name(self.master_name)
            except redis.RedisError:
                continue
            if reply:
                answers[(str(reply[0]), int(reply[1]))] += 1
        if not answers:
            raise TopologyError("no Sentinel answered with a master address")
        address, votes = answers.most_common(1)[0]
        if votes * 2 <= sum(answers.values()):
            raise TopologyError(f"the Sentinels disagree about the master: {dict(answers)}")
        return address

    def kill_master(self) -> Address:
        """SIGKILL the current master's process, as a crash would; returns its address."""
        address = self.master_address()
        node = self._node_at(address[1])
        node.process.kill()
        node.process.wait(5.0)
        return address

    def wait_for_failover(self, old: Address, timeout: float = 30.0) -> Address:
        """Wait until the Sentinels name a master other than ``old`` that is ready for writes.

        Ready means it answers ``ROLE`` as master and has the replicas that
        ``min-replicas-to-write`` demands; the new master's address is returned.
        """

        def promoted() -> Address | None:
            address = self.master_address()
            if address == old:
                return None
            with self.client(address[1], timeout=1.0) as client:
                role = client.execute_command("ROLE")
                info = _replication(client)
            if str(role[0]) != "master":
                return None
            if int(info.get("connected_slaves", "0")) < MIN_REPLICAS_TO_WRITE:
                return None
            return address

        return self._wait(promoted, timeout, f"a failover away from {old[0]}:{old[1]}")

    def restart_node(self, port: int, timeout: float = 20.0) -> None:
        """Start the stopped node on ``port`` again with its config and wait until it is back.

        Unless the Sentinels still name it master, it starts as a replica of the current
        master, so it never serves as a second, stale master until a Sentinel demotes it.
        """
        node = self._node_at(port)
        if node.process.alive:
            raise TopologyError(f"{node.name} is still running")
        master = self.master_address()
        extra = [] if master[1] == port else ["--replicaof", master[0], str(master[1])]
        node.process.start(extra)

        def back() -> bool:
            with self.client(port, timeout=1.0) as client:
                info = _replication(client)
            if not extra:
                return info.get("role") == "master"
            return (
                info.get("master_port") == str(master[1])
                and info.get("master_link_status") == "up"
            )

        self._wait(back, timeout, f"{node.name} back in the topology", [node])

    # -- internals --------------------------------------------------------------------------

    def _node_at(self, port: int) -> _Node:
        for node in self._nodes:
            if node.port == port:
                return node
        raise TopologyError(f"no data node of this topology listens on port {port}")

    def _launch(self, name: str, port: int, config: Path, argv: list[str]) -> _Node:
        process = ManagedProcess(name, argv, None, self.log_dir / f"{name}.log", cwd=config.parent)
        process.start()
        return _Node(name, port, config, process)

    def _write_node_config(self, port: int, replica_of: int | None) -> Path:
        node_dir = self.run_dir / f"redis-{port}"
        node_dir.mkdir(parents=True, exist_ok=True)
        lines = [
            *_server_lines(port, node_dir, self.password),
            # Every node may become a replica after a failover, so each carries masterauth.
            f"masterauth {_quote(self.password)}",
            "appendonly yes",
            "appendfsync everysec",
            'save ""',
            f"min-replicas-to-write {MIN_REPLICAS_TO_WRITE}",
            f"min-replicas-max-lag {MIN_REPLICAS_MAX_LAG}",
            # A broker that evicts keys silently drops messages; fail the write instead.
            "maxmemory-policy noeviction",
            # The default 5 s wait lets more replicas share one full sync; here it would only
            # delay every start and every rejoin by 5 s.
            "repl-diskless-sync-delay 0",
        ]
        if replica_of is not None:
            lines.append(f"replicaof {LOOPBACK} {replica_of}")
        config = node_dir / "redis.conf"
        config.write_text("\n".join(lines) + "\n")
        return config

    def _write_sentinel_config(self, port: int, master_port: int) -> Path:
        # Sentinel rewrites its config file as it learns the topology: one writable file each.
        sentinel_dir = self.run_dir / f"sentinel-{port}"
        sentinel_dir.mkdir(parents=True, exist_ok=True)
        name = self.master_name
        lines = [
            *_server_lines(port, sentinel_dir, self.sentinel_password),
            # Sentinels authenticate to each other with the same password they require.
            f"sentinel sentinel-pass {_quote(self.sentinel_password)}",
            f"sentinel monitor {name} {LOOPBACK} {master_port} {self.quorum}",
            f"sentinel auth-pass {name} {_quote(self.password)}",
            f"sentinel down-after-milliseconds {name} {self.down_after_ms}",
            f"sentinel failover-timeout {name} {self.failover_timeout_ms}",
            f"sentinel parallel-syncs {name} 1",
        ]
        config = sentinel_dir / "sentinel.conf"
        config.write_text("\n".join(lines) + "\n")
        return config

    def _replication_settled(self) -> bool:
        master, *replicas = self._nodes
        with self.client(master.port, timeout=1.0) as client:
            info = _replication(client)
        if info.get("role") != "master" or int(info.get("connected_slaves", "0")) < len(replicas):
            return False
        for replica in replicas:
            with self.client(replica.port, timeout=1.0) as client:
                info = _replication(client)
            if info.get("master_link_status") != "up":
                return False
        return True

    def _sentinels_settled(self) -> bool:
        master_port = self._nodes[0].port
        for node in self._sentinels:
            with self.sentinel_client(node.port, timeout=1.0) as sentinel:
                state: dict[str, Any] = sentinel.sentinel_master(self.master_name)
            if int(state.get("port", 0)) != master_port:
                return False
            if int(state.get("num-slaves", 0)) != self.replicas:
                return False
            if int(state.get("num-other-sentinels", 0)) != self.sentinels - 1:
                return False
        return True

    def _wait(
        self,
        check: Callable[[], T | None],
        timeout: float,
        what: str,
        watched: list[_Node] | None = None,
    ) -> T:
        """Poll ``check`` until it returns something truthy; raise naming ``what`` if it
        never does, or at once if one of the ``watched`` processes has exited."""
        deadline = time.monotonic() + timeout
        last_error: BaseException | None = None
        while True:
            for node in watched or ():
                if not node.process.alive:
                    raise TopologyError(
                        f"{node.name} exited with status {node.process.returncode} while "
                        f"waiting for {what}; see {node.process.log_path}"
                    )
            try:
                result = check()
            except (redis.RedisError, OSError, TopologyError) as error:
                last_error, result = error, None
            if result:
                return result
            if time.monotonic() >= deadline:
                detail = f" (last error: {last_error})" if last_error else ""
                raise TopologyError(
                    f"gave up after {timeout:g}s waiting for {what}{detail}; logs in {self.log_dir}"
                )
            time.sleep(0.05)
