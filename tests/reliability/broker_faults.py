"""Faults of the broker itself: replicas killed, every process stopped, the master partitioned.

Only processes of the scenario's own topology are signalled, through the ``ManagedProcess``
objects that started them. The partition uses a fault proxy for the replication link and the
master's password for the Sentinels' link (see :class:`MasterPartition`).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import time
from pathlib import Path

import redis
from cluster import ClusterError, wait_topology_healthy
from fault_proxy import FaultProxy

from platform_tasks.devstack.ports import LOOPBACK
from platform_tasks.devstack.processes import ManagedProcess
from platform_tasks.devstack.topology import SentinelTopology


def node_process(topology: SentinelTopology, port: int) -> ManagedProcess:
    """The process of the data node on ``port`` (``processes`` lists nodes first, in order)."""
    return topology.processes[topology.node_ports.index(port)]


def replica_ports(topology: SentinelTopology) -> list[int]:
    master = topology.master_address()[1]
    return [port for port in topology.node_ports if port != master]


def kill_replicas(topology: SentinelTopology) -> list[int]:
    """SIGKILL every replica; their ports, for :meth:`SentinelTopology.restart_node`."""
    ports = replica_ports(topology)
    for port in ports:
        process = node_process(topology, port)
        process.kill()
        process.wait(5.0)
    return ports


def stop_broker(topology: SentinelTopology) -> None:
    """Stop every Sentinel and node (SIGTERM: Redis writes its AOF and exits)."""
    sentinels = topology.processes[len(topology.node_ports):]
    for process in [*sentinels, *topology.processes[: len(topology.node_ports)]]:
        process.stop(10.0)


def start_broker(topology: SentinelTopology, master_port: int) -> None:
    """Start the nodes (the master first, each with its own config) and then the Sentinels,
    and wait until the topology is whole again."""
    nodes = topology.processes[: len(topology.node_ports)]
    first = node_process(topology, master_port)
    for process in [first, *(p for p in nodes if p is not first)]:
        process.start()
    for process in topology.processes[len(topology.node_ports):]:
        process.start()
    wait_topology_healthy(topology, timeout=60.0)


def own_tcp_ports() -> set[int]:
    """Local ports of this process's TCP sockets (to tell its connections apart in Redis)."""
    inodes = set()
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        found = re.fullmatch(r"socket:\[(\d+)\]", target)
        if found:
            inodes.add(found.group(1))
    ports = set()
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


class MasterPartition:
    """The master cut off from its replicas and the Sentinels; this process still reaches it.

    * Replication runs through a fault proxy that then stalls: the master sees its replicas
      connected but silent (their lag grows, as in a real partition), the replicas see a
      silent master.
    * The Sentinels are locked out by a new password on the master, and their connections
      (and every other client's, the workers' included) are killed: they see it down and
      fail over to a replica.
    * The connections this process already has (the producer's) keep working: the producer
      is on the master's side of the partition.

    ``heal()`` restores the password and the link; the Sentinels then demote the old master.
    """

    def __init__(self, topology: SentinelTopology) -> None:
        self.topology = topology
        self.master = topology.master_address()
        self.proxy = FaultProxy(self.master)
        self._new_password = secrets.token_urlsafe(12)
        # Opened before the password changes: the one client that can still administer it.
        self._admin = topology.client(self.master[1], timeout=5.0)

    def start(self) -> None:
        self.proxy.start()
        for port in replica_ports(self.topology):
            with self.topology.client(port) as replica:
                replica.execute_command("REPLICAOF", LOOPBACK, self.proxy.port)
        self._wait_replicas_through_proxy()
        # Nothing from before the partition may be lost with it: the replicas have it all.
        self._admin.execute_command("WAIT", len(self.topology.node_ports) - 1, 5000)
        self.proxy.stall()
        self._admin.config_set("requirepass", self._new_password)
        keep = own_tcp_ports()
        me = int(self._admin.client_id())
        for client in self._admin.client_list():
            port = int(str(client["addr"]).rsplit(":", 1)[1])
            if int(client["id"]) == me or port in keep or "S" in str(client["flags"]):
                continue
            with contextlib.suppress(redis.ResponseError):  # it went away on its own
                self._admin.client_kill_filter(_id=str(client["id"]))

    def heal(self) -> None:
        self._admin.config_set("requirepass", self.topology.password)
        self.proxy.forward()
        # The replicas were re-pointed by the failover; nothing should use the proxy now.
        self.proxy.stop()
        self._admin.close()

    def _wait_replicas_through_proxy(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            linked = 0
            for port in replica_ports(self.topology):
                with self.topology.client(port) as replica:
                    info = replica.info("replication")
                if (info.get("master_port") == self.proxy.port
                        and info.get("master_link_status") == "up"):
                    linked += 1
            if linked == len(self.topology.node_ports) - 1:
                return
            time.sleep(0.1)
        raise ClusterError("the replicas did not resync through the fault proxy")
