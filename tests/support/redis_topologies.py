"""Redis as production runs it, for tests: with a password, over TLS, and under Sentinel.

Every server is a real ``redis-server`` child on a free port of 127.0.0.1 with its data,
config and log in the test's tmp dir:

- ``password_redis``: ``--requirepass``;
- ``tls_redis``: TLS only (``--port 0 --tls-port``), with a CA and a server certificate
  (for ``127.0.0.1`` and ``localhost``) that ``make_certificates`` creates with ``openssl``;
- ``sentinel_cluster``: a master, one replica and three ``redis-server --sentinel``
  (quorum 2), which a test can fail over by SIGKILLing the master.

A server is ready when its log says so (a TLS or password server does not answer a
bare PING); a Sentinel cluster is ready once every sentinel knows the replica and
the two other sentinels, so that a failover can start as soon as the master dies.
"""

from __future__ import annotations

import collections
import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import redis

from ops.localstack.redis_server import find_redis_server, free_port

HOST = "127.0.0.1"
MASTER_NAME = "wavequeue"
READY_LINE = "Ready to accept connections"


@dataclass
class RedisProcess:
    """One ``redis-server`` (or sentinel) child; its log is ``data_dir / "redis.log"``."""

    name: str
    data_dir: Path
    args: list[str]
    port: int = field(default_factory=free_port)
    #: A sentinel takes its config from a file it rewrites as it learns the topology.
    config: str | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.data_dir / "redis.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self, ready_line: str = READY_LINE, timeout: float = 30.0) -> RedisProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        data_dir = self.data_dir.resolve()
        argv = [find_redis_server()]
        if self.config is not None:
            conf = data_dir / "redis.conf"
            conf.write_text(self.config)
            argv.append(str(conf))
        argv += [
            "--bind", HOST,
            "--dir", str(data_dir),
            "--logfile", str(self.log_path.resolve()),
            "--daemonize", "no",
            *self.args,
        ]  # fmt: skip
        if "--tls-port" not in self.args:
            argv += ["--port", str(self.port)]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while ready_line not in self.log():
            if self.process.poll() is not None:
                stderr = self.process.stderr.read().decode() if self.process.stderr else ""
                raise RuntimeError(f"{self.name} exited at start: {stderr}\n{self.log()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} not ready in {timeout}s:\n{self.log()}")
            time.sleep(0.05)
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown save, no goodbye to replicas or clients."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.process.stderr:
            self.process.stderr.close()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def client(self, **kwargs: Any) -> redis.Redis:
        return redis.Redis(host=HOST, port=self.port, decode_responses=True, **kwargs)


# --- password ------------------------------------------------------------------------


@contextlib.contextmanager
def password_redis(tmp_path: Path, password: str) -> Iterator[RedisProcess]:
    """A redis-server that wants ``password`` (``--requirepass``)."""
    server = RedisProcess(
        "redis", tmp_path / "redis-auth", ["--requirepass", password, "--save", ""]
    )
    try:
        yield server.start()
    finally:
        server.stop()


# --- TLS -----------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path
    #: A client certificate the same CA signed, for a server that asks for one.
    client_cert: Path
    client_key: Path


def make_certificates(directory: Path) -> TlsFiles:
    """A throwaway CA, a server certificate for 127.0.0.1 and localhost, and a client
    certificate, both signed by that CA (EC keys: quick to make)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise FileNotFoundError("openssl is not on PATH")
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = directory / "ca.crt", directory / "ca.key"
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(openssl, directory, ["req", "-x509", *ec, "-keyout", ca_key, "-out", ca,
                                  "-days", "2", "-subj", "/CN=wavequeue test CA"])  # fmt: skip
    made = {}
    for name, usage, alt in (
        ("server", "serverAuth", "subjectAltName=IP:127.0.0.1,DNS:localhost\n"),
        ("client", "clientAuth", ""),
    ):
        key, csr, cert = (directory / f"{name}.{ext}" for ext in ("key", "csr", "crt"))
        extensions = directory / f"{name}.ext"
        extensions.write_text(
            f"{alt}basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
            f"extendedKeyUsage={usage}\n"
        )
        _openssl(openssl, directory, ["req", *ec, "-keyout", key, "-out", csr,
                                      "-subj", f"/CN=wavequeue test {name}"])  # fmt: skip
        _openssl(openssl, directory, ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key,
                                      "-CAcreateserial", "-out", cert, "-days", "2",
                                      "-extfile", extensions])  # fmt: skip
        made[name] = (cert, key)
    return TlsFiles(ca, *made["server"], *made["client"])


def _openssl(openssl: str, cwd: Path, args: list[str | Path]) -> None:
    subprocess.run([openssl, *map(str, args)], check=True, capture_output=True, timeout=60, cwd=cwd)


@contextlib.contextmanager
def tls_redis(
    tmp_path: Path, *, client_certificates: bool = False
) -> Iterator[tuple[RedisProcess, TlsFiles]]:
    """A redis-server that speaks TLS only, and the CA that signed its certificate;
    ``client_certificates`` makes it refuse clients without a certificate from that CA."""
    files = make_certificates(tmp_path / "tls")
    port = free_port()
    args = [
        "--port", "0", "--tls-port", str(port),
        "--tls-cert-file", str(files.cert), "--tls-key-file", str(files.key),
        "--tls-ca-cert-file", str(files.ca),
        "--tls-auth-clients", "yes" if client_certificates else "no",
        "--save", "",
    ]  # fmt: skip
    server = RedisProcess("redis-tls", tmp_path / "redis-tls", args, port=port)
    try:
        yield server.start(), files
    finally:
        server.stop()


# --- Sentinel ------------------------------------------------------------------------


@dataclass
class SentinelCluster:
    master: RedisProcess
    replica: RedisProcess
    sentinels: list[RedisProcess]
    master_name: str = MASTER_NAME

    @property
    def url(self) -> str:
        """REDIS_URL as Celery spells Sentinel: every sentinel, ``;``-separated."""
        return ";".join(f"sentinel://{HOST}:{s.port}/0" for s in self.sentinels)

    @property
    def env(self) -> dict[str, str]:
        return {"REDIS_URL": self.url, "REDIS_SENTINEL_MASTER": self.master_name}

    def sentinel_view(self, sentinel: RedisProcess) -> dict[str, Any]:
        client = sentinel.client(socket_timeout=2)
        try:
            view = cast(dict[str, Any], client.sentinel_master(self.master_name))
        finally:
            client.close()
        return view

    def master_address(self) -> tuple[str, int]:
        """Where the sentinels that answer say the master is (the first that answers)."""
        for sentinel in self.sentinels:
            with contextlib.suppress(redis.RedisError):
                client = sentinel.client(socket_timeout=2)
                try:
                    address = client.sentinel_get_master_addr_by_name(self.master_name)
                    host, port = cast(tuple[str, int], address)
                    return str(host), int(port)
                finally:
                    client.close()
        raise RuntimeError("no sentinel answers")

    def wait_until_ready(self, timeout: float = 60.0) -> None:
        """Every sentinel knows the master, the replica and both other sentinels."""
        deadline = time.monotonic() + timeout
        while True:
            views = []
            with contextlib.suppress(redis.RedisError):
                views = [self.sentinel_view(s) for s in self.sentinels]
            if views and all(
                int(v["num-slaves"]) >= 1 and int(v["num-other-sentinels"]) >= 2 for v in views
            ):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"sentinels not ready in {timeout}s: {views}")
            time.sleep(0.1)

    def wait_for_promotion(self, old: tuple[str, int], timeout: float = 60.0) -> tuple[str, int]:
        """Block until the sentinels name a new master that says it is one."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError, RuntimeError):
                address = self.master_address()
                if address != old:
                    probe = redis.Redis(host=address[0], port=address[1], socket_timeout=2)
                    try:
                        if probe.info("replication")["role"] == "master":
                            return address
                    finally:
                        probe.close()
            time.sleep(0.05)
        raise TimeoutError(f"no failover away from {old} in {timeout}s")

    def stop(self) -> None:
        for process in [*self.sentinels, self.replica, self.master]:
            process.stop()


@dataclass(frozen=True)
class StoredState:
    """What a Redis held of wavequeue's: job records (status and prediction id), the
    broker's unacked messages (by delivery tag) and the messages waiting in queues."""

    jobs: dict[str, tuple[str, str]]
    unacked: frozenset[str]
    queued: collections.Counter[str]

    @classmethod
    def read(cls, client: redis.Redis) -> StoredState:
        job_keys = sorted(client.scan_iter(match="wq:job:*", count=1000, _type="hash"))
        pipe = client.pipeline(transaction=False)
        for key in job_keys:
            pipe.hmget(key, ["status", "prediction_id"])
        jobs = {
            key: (fields[0] or "", fields[1] or "")
            for key, fields in zip(job_keys, pipe.execute(), strict=True)
        }
        queued: collections.Counter[str] = collections.Counter()
        for key in client.scan_iter(count=1000, _type="list"):
            queued.update(str(message) for message in client.lrange(key, 0, -1))
        return cls(jobs, frozenset(str(tag) for tag in client.hkeys("unacked")), queued)

    def missing_from(self, other: StoredState) -> dict[str, int]:
        """What this state holds that ``other`` lacks (or holds at another status)."""
        return {
            "records": len(self.jobs.keys() - other.jobs.keys()),
            "record changes": sum(
                1
                for key in self.jobs.keys() & other.jobs.keys()
                if self.jobs[key] != other.jobs[key]
            ),
            "unacked messages": len(self.unacked - other.unacked),
            "queued messages": sum((self.queued - other.queued).values()),
        }


def read_state(host: str, port: int) -> StoredState:
    client = redis.Redis(host=host, port=port, decode_responses=True, socket_timeout=5)
    try:
        return StoredState.read(client)
    finally:
        client.close()


def state_on_disk(process: RedisProcess, scratch: Path) -> StoredState:
    """What a killed server had acknowledged, read back from its AOF (SIGKILL loses
    nothing the kernel already had: the AOF is written before replies go out)."""
    copy = scratch / f"{process.name}-aof"
    shutil.copytree(process.data_dir, copy)
    (copy / "redis.log").unlink(missing_ok=True)
    reader = RedisProcess(f"{process.name}-aof", copy, ["--appendonly", "yes", "--save", ""])
    reader.start()
    try:
        return read_state(HOST, reader.port)
    finally:
        reader.stop()


def sentinel_config(port: int, master_port: int, down_after_ms: int, failover_ms: int) -> str:
    return "\n".join(
        [
            f"port {port}",
            f"sentinel monitor {MASTER_NAME} {HOST} {master_port} 2",
            f"sentinel down-after-milliseconds {MASTER_NAME} {down_after_ms}",
            f"sentinel failover-timeout {MASTER_NAME} {failover_ms}",
            f"sentinel parallel-syncs {MASTER_NAME} 1",
            "",
        ]
    )


@contextlib.contextmanager
def sentinel_cluster(
    tmp_path: Path,
    *,
    down_after_ms: int = 2000,
    failover_ms: int = 6000,
    master_args: tuple[str, ...] = (),
) -> Iterator[SentinelCluster]:
    """Master and replica (AOF on both), three sentinels with quorum 2, all ready."""
    durable = ["--appendonly", "yes", "--save", "", "--maxmemory-policy", "noeviction"]
    master = RedisProcess("master", tmp_path / "master", [*durable, *master_args])
    replica = RedisProcess("replica", tmp_path / "replica", [*durable])
    replica.args += ["--replicaof", HOST, str(master.port)]
    sentinels = [
        RedisProcess(f"sentinel{n}", tmp_path / f"sentinel{n}", ["--sentinel"]) for n in range(3)
    ]
    for sentinel in sentinels:
        sentinel.config = sentinel_config(sentinel.port, master.port, down_after_ms, failover_ms)
    cluster = SentinelCluster(master, replica, sentinels)
    try:
        master.start()
        replica.start()
        _wait_for_replication(replica)
        # Started after the replica is in sync: the sentinels' first INFO to the master
        # lists it, so they need not wait for the next 10 s INFO round.
        for sentinel in sentinels:
            sentinel.start(ready_line="+monitor master")
        cluster.wait_until_ready()
        yield cluster
    finally:
        cluster.stop()


def _wait_for_replication(replica: RedisProcess, timeout: float = 30.0) -> None:
    client = replica.client(socket_timeout=2)
    deadline = time.monotonic() + timeout
    try:
        while client.info("replication").get("master_link_status") != "up":
            if time.monotonic() > deadline:
                raise TimeoutError(f"replica not in sync in {timeout}s:\n{replica.log()}")
            time.sleep(0.05)
    finally:
        client.close()
