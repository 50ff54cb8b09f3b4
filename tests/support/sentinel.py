"""A real Redis Sentinel deployment for tests: a primary, its replicas and three sentinels, each its
own redis-server process on a free port, with failover tuned to take a few seconds."""

from __future__ import annotations

import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from redis import Redis

from tests.support.procs import free_port, wait_for

MASTER = "omega"


def _spawn(args: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["redis-server", *args], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)


def _answers(port: int) -> bool:
    try:
        return bool(Redis(port=port, socket_connect_timeout=0.2, socket_timeout=0.5).ping())
    except Exception:
        return False


@dataclass
class SentinelCluster:
    directory: Path
    data_ports: list[int] = field(default_factory=list)
    sentinel_ports: list[int] = field(default_factory=list)
    processes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def sentinels(self) -> str:
        """The REDIS_SENTINELS value for this cluster."""
        return ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)

    def _data_node(self, port: int, replica_of: int | None) -> None:
        folder = self.directory / f"node-{port}"
        folder.mkdir()
        args = ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder), "--save", ""]
        args += ["--appendonly", "yes", "--loglevel", "warning"]
        if replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(replica_of)]
        self.processes[port] = _spawn(args)
        wait_for(lambda: _answers(port), 10, f"redis-server on {port}")

    def _sentinel(self, port: int, primary: int) -> None:
        conf = self.directory / f"sentinel-{port}.conf"
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {self.directory}\n"
            f"sentinel monitor {MASTER} 127.0.0.1 {primary} 2\n"
            f"sentinel down-after-milliseconds {MASTER} 1000\n"
            f"sentinel failover-timeout {MASTER} 4000\n"
            f"sentinel parallel-syncs {MASTER} 1\n"
        )
        self.processes[port] = _spawn([str(conf), "--sentinel", "--loglevel", "warning"])
        wait_for(lambda: _answers(port), 10, f"sentinel on {port}")

    def start(self, replicas: int = 1) -> SentinelCluster:
        primary = free_port()
        self.data_ports.append(primary)
        self._data_node(primary, None)
        for _ in range(replicas):
            port = free_port()
            self.data_ports.append(port)
            self._data_node(port, primary)
        wait_for(lambda: self.replicas_in_sync(primary) >= replicas, 15, "replicas in sync")
        for _ in range(3):
            port = free_port()
            self.sentinel_ports.append(port)
            self._sentinel(port, primary)
        wait_for(lambda: self._sentinels_agree(replicas), 15, "sentinels see the replicas")
        return self

    def replicas_in_sync(self, primary: int) -> int:
        info = Redis(port=primary).info("replication")
        return sum(1 for k, v in info.items() if k.startswith("slave") and v.get("state") == "online")

    def _sentinels_agree(self, replicas: int) -> bool:
        for port in self.sentinel_ports:
            sentinel = Redis(port=port, decode_responses=True)
            if len(sentinel.sentinel_slaves(MASTER)) < replicas:
                return False
            if int(sentinel.sentinel_master(MASTER)["num-other-sentinels"]) < len(self.sentinel_ports) - 1:
                return False
        return True

    def primary_port(self) -> int:
        _, port = Redis(port=self.sentinel_ports[0]).sentinel_get_master_addr_by_name(MASTER)
        return int(port)

    def kill_primary(self, replica_lag_s: float = 0.0) -> int:
        """SIGKILL the current primary; returns its port. With `replica_lag_s`, the replicas are
        stopped (SIGSTOP) that long before the kill and resumed after it: the primary dies with
        that much of its writes unreplicated, as it would behind lagging replicas. Keep it under
        the sentinels' down-after-milliseconds, or they would judge the replicas down too."""
        port = self.primary_port()
        replicas = [p for p in self.data_ports if p != port and self.processes[p].poll() is None]
        try:
            if replica_lag_s:
                for replica in replicas:
                    self.processes[replica].send_signal(signal.SIGSTOP)
                time.sleep(replica_lag_s)
            self.processes[port].send_signal(signal.SIGKILL)
            self.processes[port].wait(10)
        finally:
            for replica in replicas:
                self.processes[replica].send_signal(signal.SIGCONT)
        return port

    def wait_failover(self, old: int, timeout: float = 30) -> int:
        """Until the sentinels name a new primary that answers as one; returns its port."""

        def promoted() -> bool:
            port = self.primary_port()
            return port != old and Redis(port=port).info("replication")["role"] == "master"

        wait_for(promoted, timeout, "sentinel failover", interval=0.2)
        return self.primary_port()

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()


def start_sentinel_cluster(replicas: int = 1) -> SentinelCluster:
    return SentinelCluster(Path(tempfile.mkdtemp(prefix="omega-sentinel-"))).start(replicas)
