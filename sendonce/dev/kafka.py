"""A real Apache Kafka broker (KRaft) for development and integration tests: one node, or
a cluster of several on loopback.

The broker jars come from Maven Central via ``deploy/local-kafka/pom.xml`` (see
:mod:`sendonce.dev.kafka_jars`); this module runs each node as a plain ``java`` process
whose state lives in one *home* directory.  One node (the default)::

    home/
      server.properties   rendered by this module (ports, log.dirs, single-node settings)
      data/               the Kafka log dirs (formatted once, on first start)
      broker.log          the broker's console output (log4j at WARN)
      state.json          pid, ports and bootstrap while the broker runs

A cluster (``LocalKafka(home, brokers=3)``): every node is a combined broker+controller
with its own ports and its own ``home/node-N/{server.properties,data,broker.log}``; the
three controllers form a static voter quorum, so one node may die and the cluster keeps
its metadata leader and (with replication factor 3 and ``min.insync.replicas=2``) accepts
``acks=all`` writes.  ``state.json`` in ``home`` records every node; ``bootstrap`` is the
comma list of all of them.  :meth:`LocalKafka.kill_node`, :meth:`LocalKafka.start_node`
and :meth:`LocalKafka.leader_of` let a test or the torture harness kill the leader of a
partition and bring it back.

Two ways to run it:

* attached (the default; tests, ``with LocalKafka() as k``): the broker is tied to the
  Python process that started it.  On Linux the child gets ``PR_SET_PDEATHSIG=SIGKILL``
  so it dies even if the parent is SIGKILLed, and an ``atexit`` hook stops it cleanly on
  normal interpreter exit.
* detached (``start(detach=True)``, ``sendonce dev kafka start``): the broker gets its own
  session and outlives the starting process; ``state.json`` lets ``stop()``/``status()``
  in any other process find it.

Starting a home that already has a live broker raises :class:`BrokerAlreadyRunning`
(which carries the running bootstrap); the CLI turns that into "already running" with
exit code 0 so ``start`` is idempotent for scripts.  The command line
(``sendonce dev kafka ...``) is :mod:`sendonce.cli.dev_kafka`; this module is the
runner alone, so tests, the demo and the benchmarks use it without argparse.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import fcntl
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from sendonce.dev.kafka_jars import (
    LocalKafkaError,
    default_home,
    ensure_jars,
    java_executable,
    log4j_config,
)
from sendonce.dev.procs import pid_alive
from sendonce.lifecycle import Service

__all__ = [
    "BrokerAlreadyRunning",
    "LocalKafka",
    "LocalKafkaError",
    "cluster_replication",
    "log_tail",
    "new_cluster_id",
    "pick_free_ports",
    "quorum_voters",
    "recorded_broker",
    "render_server_properties",
]

# How much of broker.log an error message (or the CLI) quotes.
_LOG_TAIL_LINES = 40


class BrokerAlreadyRunning(LocalKafkaError):
    """``start()`` was called on a home whose broker is alive."""

    def __init__(
        self, home: Path, bootstrap: str, pid: int, pids: tuple[int, ...] | None = None
    ) -> None:
        super().__init__(
            f"a Kafka broker is already running from {home} (pid {pid}, bootstrap "
            f"{bootstrap}); stop it first with `sendonce dev kafka stop --home {home}`"
        )
        self.home = home
        self.bootstrap = bootstrap
        self.pid = pid
        # Every live node's pid (a cluster has several; one node: just ``pid``).
        self.pids = pids or (pid,)


# --------------------------------------------------------------------------- helpers


def pick_free_ports(count: int = 2, host: str = "127.0.0.1") -> list[int]:
    """Return ``count`` distinct ports that the OS reports free on ``host``.

    All sockets are held open until every port is chosen so the OS cannot hand out the
    same port twice.  (Another process may still take one before the broker binds it.)
    """
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind((host, 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Java server sockets set SO_REUSEADDR, so a port whose old connections linger in
        # TIME_WAIT after a stop is still usable by the broker; probe the same way.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def new_cluster_id() -> str:
    """A KRaft cluster id: a random UUID as 22 characters of unpadded base64url."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode("ascii")
        # StorageTool would parse a leading '-' as an option (Kafka's own Uuid avoids it).
        if not cid.startswith("-"):
            return cid


def quorum_voters(controller_ports: Mapping[int, int]) -> str:
    """``controller.quorum.voters`` for nodes ``{node_id: controller_port}`` on loopback."""
    return ",".join(
        f"{node_id}@127.0.0.1:{port}" for node_id, port in sorted(controller_ports.items())
    )


def cluster_replication(nodes: int) -> tuple[int, int]:
    """Replication factor and min ISR of the internal topics for a cluster of ``nodes``.

    Three nodes or more: 3 and 2, as in production (one broker may be lost without
    refusing an ``acks=all`` write).  Fewer: every node holds a copy, and one suffices.
    """
    replicas = min(nodes, 3)
    return replicas, (2 if replicas >= 3 else 1)


def render_server_properties(
    port: int,
    controller_port: int,
    log_dir: Path,
    overrides: Mapping[str, str] | None = None,
    *,
    node_id: int = 1,
    voters: Mapping[int, int] | None = None,
) -> str:
    """Render ``server.properties`` for a combined broker+controller on loopback.

    ``voters`` maps every node id of the cluster to its controller port (default: this
    node alone); the internal topics (consumer offsets, transaction state, share state)
    are replicated as :func:`cluster_replication` says for that many nodes.
    """
    voters = dict(voters) if voters else {node_id: controller_port}
    if voters.get(node_id) != controller_port:
        raise ValueError(f"node {node_id} must be a voter on its controller port")
    replicas, min_isr = (str(n) for n in cluster_replication(len(voters)))
    props: dict[str, str] = {
        "process.roles": "broker,controller",
        "node.id": str(node_id),
        "controller.quorum.voters": quorum_voters(voters),
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(log_dir),
        # Every internal topic must accept the replication factor / ISR the cluster
        # can give: 1 on one node; on three, what a production cluster would use.
        "offsets.topic.replication.factor": replicas,
        "transaction.state.log.replication.factor": replicas,
        "transaction.state.log.min.isr": min_isr,
        "share.coordinator.state.topic.replication.factor": replicas,
        "share.coordinator.state.topic.min.isr": min_isr,
        # Tests create consumer groups constantly; don't wait 3 s for more members.
        "group.initial.rebalance.delay.ms": "0",
        # Topics are declared explicitly (like production); a typo must fail, not create.
        "auto.create.topics.enable": "false",
        "num.partitions": "1",
        # Tests assert on compaction; the default 15 s cleaner backoff makes that slow.
        "log.cleaner.backoff.ms": "1000",
        # After a crash (SIGKILL) the controller refuses the restarted broker's new
        # registration until the old one's session expires: with the 9 s default a
        # crash-restart takes ~15 s, with 3 s ~6 s.  Heartbeats every 0.5 s keep a
        # momentarily slow JVM from being fenced.  On a cluster this is also how soon
        # a killed node's partitions get a new leader.
        "broker.session.timeout.ms": "3000",
        "broker.heartbeat.interval.ms": "500",
    }
    if overrides:
        props.update(overrides)
    header = "# Written by sendonce.dev.kafka; regenerated on every start.\n"
    return header + "".join(f"{key}={value}\n" for key, value in props.items())


def _parse_properties(text: str) -> dict[str, str]:
    result: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "!")) and "=" in line:
            key, value = line.split("=", 1)
            result[key.strip()] = value.strip()
    return result


def log_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of ``path`` (a broker log), or a note that there are none."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


def _is_our_broker(pid: int, config: Path) -> bool:
    """True if ``pid`` is alive and is the broker started with ``config``.

    Guards against pid reuse after a reboot or crash left a stale ``state.json``.
    """
    # Identity first, so that we never waitpid() (reap) an unrelated child of ours that
    # happens to reuse the pid.  A zombie's cmdline is empty, so it does not match.
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False
    except OSError:
        return pid_alive(pid)  # no /proc (macOS): trust the pid
    return str(config).encode() in cmdline.split(b"\0") and pid_alive(pid)


def _make_pdeathsig_preexec() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGKILL when its parent dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    # Resolve libc and prctl in the parent: the child between fork and exec should do as
    # little as possible (no dlopen, no imports).
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()
    pr_set_pdeathsig = 1
    sigkill = int(signal.SIGKILL)

    def preexec() -> None:
        if prctl(pr_set_pdeathsig, sigkill, 0, 0, 0) != 0:
            os._exit(125)
        # The parent may have died between fork() and prctl(); then no signal will come.
        if os.getppid() != parent:
            os._exit(125)

    return preexec


# --------------------------------------------------------------------------- runner


def _listener_ports(config: Path) -> tuple[int, int] | None:
    """(broker port, controller port) of a rendered ``server.properties``, if readable."""
    try:
        listeners = _parse_properties(config.read_text())["listeners"]
    except (FileNotFoundError, KeyError):
        return None
    ports: dict[str, int] = {}
    for listener in listeners.split(","):
        name, _, address = listener.partition("://")
        with contextlib.suppress(ValueError):
            ports[name] = int(address.rsplit(":", 1)[1])
    if "PLAINTEXT" not in ports or "CONTROLLER" not in ports:
        return None
    return ports["PLAINTEXT"], ports["CONTROLLER"]


def _cluster_id_of(data_dir: Path) -> str | None:
    try:
        return _parse_properties((data_dir / "meta.properties").read_text()).get("cluster.id")
    except FileNotFoundError:
        return None


class LocalKafka(Service):
    """A local Kafka broker, or a cluster of ``brokers`` nodes, whose state lives in ``home``.

    Note on attached mode: Linux delivers the parent-death signal when the *thread* that
    started the broker exits, so call :meth:`start` (and :meth:`start_node`) from a
    long-lived thread (normally the main thread).
    """

    def __init__(
        self,
        home: Path | None = None,
        heap: str = "512m",
        *,
        lib: Path | None = None,
        config: Mapping[str, str] | None = None,
        brokers: int = 1,
    ) -> None:
        """``config`` entries override/extend every node's rendered server.properties.

        ``brokers`` is how many nodes :meth:`start` runs; a handle that finds a running
        cluster in ``home`` (stop, status, restart from another process) follows the
        record, whatever it was given.
        """
        if brokers < 1:
            raise LocalKafkaError(f"a Kafka cluster needs at least one broker, not {brokers}")
        self.home = (home or default_home()).expanduser().resolve()
        self.heap = heap
        self.brokers = brokers
        self._lib = lib
        self._overrides = dict(config or {})
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        # node id -> (broker port, controller port), once chosen.
        self._ports: dict[int, tuple[int, int]] | None = None
        self._detached = False
        self._started_at = 0.0
        self._atexit_registered = False

    # -- paths -------------------------------------------------------------------------

    @property
    def node_ids(self) -> list[int]:
        """The nodes' ids (``node.id``): 1 to ``brokers``."""
        return list(range(1, self.brokers + 1))

    def node_dir(self, node_id: int) -> Path:
        """Where node ``node_id`` keeps its files: ``home`` itself for a single node."""
        return self.home if self.brokers == 1 else self.home / f"node-{node_id}"

    @property
    def data_dir(self) -> Path:
        """The (first) node's ``log.dirs``."""
        return self.node_dir(1) / "data"

    @property
    def config_path(self) -> Path:
        """The (first) node's rendered ``server.properties``."""
        return self.node_dir(1) / "server.properties"

    @property
    def log_path(self) -> Path:
        """The (first) node's console output."""
        return self.node_dir(1) / "broker.log"

    def node_log_path(self, node_id: int) -> Path:
        """Node ``node_id``'s console output."""
        return self.node_dir(node_id) / "broker.log"

    @property
    def state_path(self) -> Path:
        """``state.json``: pids/ports/bootstrap of the live broker or cluster."""
        return self.home / "state.json"

    # -- state -------------------------------------------------------------------------

    def _read_state(self) -> dict[str, Any] | None:
        try:
            state: dict[str, Any] = json.loads(self.state_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return state

    def _write_state(self, state: Mapping[str, Any]) -> None:
        tmp = self.state_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        os.replace(tmp, self.state_path)  # readers never see a half-written file

    def _recorded_nodes(self, state: Mapping[str, Any]) -> list[dict[str, Any]]:
        nodes: list[dict[str, Any]] | None = state.get("nodes")
        if nodes:
            return nodes
        # A record written before clusters existed: one node, in the home itself.
        return [{"node_id": 1, "pid": state.get("pid"), "config": str(self.config_path)}]

    def status(self) -> dict[str, Any] | None:
        """The live broker's state (pid, port, controller_port, bootstrap, detached, ...).

        Works from any process via ``state.json``; returns None when no node from this
        home is alive (a stale ``state.json`` is removed).  ``pid`` is the first live
        node's, ``pids`` every live node's and ``down`` the ids of recorded nodes that
        are not running (a cluster with a killed node is still running).
        """
        state = self._read_state()
        if state is None:
            return None
        live: list[int] = []
        down: list[int] = []
        for node in self._recorded_nodes(state):
            pid = node.get("pid")
            config = Path(str(node.get("config") or self.config_path))
            if pid is not None and _is_our_broker(int(pid), config):
                live.append(int(pid))
            else:
                down.append(int(node["node_id"]))
        if not live:
            with contextlib.suppress(FileNotFoundError):
                self.state_path.unlink()
            return None
        return {**state, "pid": live[0], "pids": live, "down": down}

    def is_running(self) -> bool:
        """True if a node from this home is alive (started by anyone)."""
        if any(proc.poll() is None for proc in self._procs.values()):
            return True
        return self.status() is not None

    @property
    def pid(self) -> int | None:
        """The (first live) broker's pid, or None when not running."""
        pids = self.pids
        return pids[0] if pids else None

    @property
    def pids(self) -> list[int]:
        """Every live node's pid, in node order (empty when none runs)."""
        mine = [p.pid for _, p in sorted(self._procs.items()) if p.poll() is None]
        if mine:
            return mine
        state = self.status()
        return [int(p) for p in state["pids"]] if state else []

    def node_pid(self, node_id: int) -> int | None:
        """Node ``node_id``'s pid, or None when it is not running."""
        proc = self._procs.get(node_id)
        if proc is not None:
            return proc.pid if proc.poll() is None else None
        state = self.status()
        if state is None:
            return None
        for node in self._recorded_nodes(state):
            if int(node["node_id"]) == node_id and node.get("pid") is not None:
                config = Path(str(node.get("config") or self.config_path))
                return int(node["pid"]) if _is_our_broker(int(node["pid"]), config) else None
        return None

    @property
    def bootstrap(self) -> str:
        """``127.0.0.1:PORT`` of the broker, comma separated for every node of a cluster.

        Raises if it was never started.
        """
        if self._ports is not None:
            return ",".join(f"127.0.0.1:{port}" for _, (port, _c) in sorted(self._ports.items()))
        state = self.status()
        if state is None:
            raise LocalKafkaError(f"no Kafka broker is running from {self.home}")
        return str(state["bootstrap"])

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # Serialises start/stop across processes so two `start`s cannot both format the
        # data dir or launch two brokers on one home.
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.home / ".lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _adopt(self) -> None:
        """Take over the address, size and mode of a broker another handle started."""
        if self._ports is not None:
            return
        state = self.status()
        if state is None:
            return
        nodes = self._recorded_nodes(state)
        if "port" in nodes[0]:
            self._ports = {
                int(n["node_id"]): (int(n["port"]), int(n["controller_port"])) for n in nodes
            }
        else:
            self._ports = {1: (int(state["port"]), int(state["controller_port"]))}
        self.brokers = len(self._ports)
        self._detached = bool(state.get("detached", False))
        self._started_at = float(state.get("started_at", time.time()))

    def _record(self) -> None:
        """Write ``state.json`` for the nodes this handle runs (a dead node's pid is null)."""
        assert self._ports is not None
        nodes: list[dict[str, Any]] = []
        for node_id, (port, cport) in sorted(self._ports.items()):
            # Nodes another handle started keep their recorded pid while they live.
            pid = self.node_pid(node_id)
            nodes.append(
                {
                    "node_id": node_id,
                    "pid": pid,
                    "port": port,
                    "controller_port": cport,
                    "config": str(self.node_dir(node_id) / "server.properties"),
                }
            )
        first_port, first_cport = self._ports[min(self._ports)]
        live = [n["pid"] for n in nodes if n["pid"] is not None]
        self._write_state(
            {
                "pid": live[0] if live else None,
                "port": first_port,
                "controller_port": first_cport,
                "bootstrap": self.bootstrap,
                "detached": self._detached,
                "home": str(self.home),
                "started_at": self._started_at,
                "brokers": len(nodes),
                "nodes": nodes,
            }
        )

    # -- lifecycle -----------------------------------------------------------------------

    def _choose_ports(self) -> dict[int, tuple[int, int]]:
        if self._ports is not None:
            return self._ports  # restart: clients reconnect to the same address
        # A previous run of this home: keep its addresses if all still free, so a
        # developer's bootstrap does not change across stop/start.
        old = {i: _listener_ports(self.node_dir(i) / "server.properties") for i in self.node_ids}
        chosen = [port for ports in old.values() if ports is not None for port in ports]
        if (
            len(chosen) == 2 * self.brokers
            and len(set(chosen)) == len(chosen)
            and all(_port_free(port) for port in chosen)
        ):
            return {i: ports for i, ports in old.items() if ports is not None}
        fresh = pick_free_ports(2 * self.brokers)
        return {i: (fresh[2 * k], fresh[2 * k + 1]) for k, i in enumerate(self.node_ids)}

    def _jvm_command(self, lib: Path, main: str, *args: str) -> list[str]:
        cmd = [java_executable(), f"-Xmx{self.heap}", "-XX:+ExitOnOutOfMemoryError"]
        log4j = log4j_config()
        if log4j is not None:
            cmd.append(f"-Dlog4j2.configurationFile={log4j}")
        # "lib/*" is expanded by the JVM itself (classpath wildcard), not the shell.
        cmd += ["-cp", str(lib / "*"), main, *args]
        return cmd

    def _render_configs(self) -> None:
        assert self._ports is not None
        voters = {i: cport for i, (_port, cport) in self._ports.items()}
        for node_id, (port, cport) in self._ports.items():
            data = self.node_dir(node_id) / "data"
            data.mkdir(parents=True, exist_ok=True)
            (self.node_dir(node_id) / "server.properties").write_text(
                render_server_properties(
                    port, cport, data, self._overrides, node_id=node_id, voters=voters
                )
            )

    def _format_storage(self, lib: Path) -> None:
        """Format every node's log dir that is not yet formatted, with one cluster id."""
        unformatted = [
            i for i in self.node_ids if not (self.node_dir(i) / "data" / "meta.properties").exists()
        ]
        if not unformatted:
            return
        # A node formatted before (a half-finished first start) fixes the cluster id.
        known = [_cluster_id_of(self.node_dir(i) / "data") for i in self.node_ids]
        cluster_id = next((cid for cid in known if cid), None) or new_cluster_id()
        # The JVMs format in parallel: each takes seconds to start.
        running = [
            subprocess.Popen(
                self._jvm_command(
                    lib,
                    "kafka.tools.StorageTool",
                    "format",
                    "-t",
                    cluster_id,
                    "-c",
                    str(self.node_dir(i) / "server.properties"),
                ),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for i in unformatted
        ]
        for node_id, proc in zip(unformatted, running, strict=True):
            output, _ = proc.communicate()
            if proc.returncode != 0:
                raise LocalKafkaError(
                    f"formatting Kafka storage in {self.node_dir(node_id) / 'data'} failed "
                    f"(exit {proc.returncode}):\n{output.strip()}"
                )

    def _spawn(self, lib: Path, node_id: int, detach: bool) -> subprocess.Popen[bytes]:
        cmd = self._jvm_command(
            lib, "kafka.Kafka", str(self.node_dir(node_id) / "server.properties")
        )
        what = "broker" if self.brokers == 1 else f"node {node_id}"
        with open(self.node_log_path(node_id), "ab") as log:
            log.write(f"\n==== sendonce: starting {what} at {time.ctime()} ====\n".encode())
            log.flush()
            if detach:
                # Own session: no terminal signals, survives the starting process.
                return subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            # Own process group, so Ctrl-C reaches only us and we shut the broker down
            # in order; the parent-death signal covers our abrupt death.
            return subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                process_group=0,
                preexec_fn=_make_pdeathsig_preexec(),
            )

    def start(self, detach: bool = False, timeout: float = 60) -> str:
        """Start the broker (every node of a cluster) and wait until it serves.

        Returns the bootstrap address ``127.0.0.1:PORT`` (comma separated for a
        cluster); ready means a metadata request lists every node as a live broker.
        Raises :class:`BrokerAlreadyRunning` if this home's broker is alive, and
        :class:`LocalKafkaError` (with the tail of ``broker.log``) if a node exits or
        the broker is not ready within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        lib = ensure_jars(self._lib)
        with self._locked():
            state = self.status()
            if state is not None:
                raise BrokerAlreadyRunning(
                    self.home,
                    str(state["bootstrap"]),
                    int(state["pid"]),
                    tuple(int(p) for p in state["pids"]),
                )
            ports_were_pinned = self._ports is not None
            self._ports = self._choose_ports()
            try:
                self._render_configs()
                self._format_storage(lib)
                for node_id in self.node_ids:
                    self._procs[node_id] = self._spawn(lib, node_id, detach)
                self._detached = detach
                self._started_at = time.time()
                if not detach and not self._atexit_registered:
                    atexit.register(self._atexit_stop)
                    self._atexit_registered = True
                self._record()
                self._wait_ready(self.node_ids, deadline)
            except BaseException:
                pids = [p.pid for p in self._procs.values()]
                with contextlib.suppress(LocalKafkaError):
                    self._terminate(pids, timeout=10)
                self._procs = {}
                with contextlib.suppress(FileNotFoundError):
                    self.state_path.unlink()
                if not ports_were_pinned:
                    # e.g. another process grabbed a picked port: let a retry pick anew.
                    self._ports = None
                raise
        return self.bootstrap

    def _wait_ready(self, node_ids: list[int], deadline: float) -> None:
        """Wait until ``node_ids`` listen and a metadata request lists them as brokers."""
        from confluent_kafka.admin import AdminClient

        assert self._ports is not None
        what = "the Kafka broker" if self.brokers == 1 else "the Kafka cluster"

        def check_alive() -> None:
            for node_id in node_ids:
                proc = self._procs.get(node_id)
                if proc is not None and proc.poll() is not None:
                    log = self.node_log_path(node_id)
                    who = "the Kafka broker" if self.brokers == 1 else f"Kafka node {node_id}"
                    raise LocalKafkaError(
                        f"{who} exited with code {proc.returncode} while starting; "
                        f"tail of {log}:\n{log_tail(log)}"
                    )

        def timed_out() -> LocalKafkaError:
            log = self.node_log_path(node_ids[0])
            return LocalKafkaError(
                f"{what} did not become ready at {self.bootstrap} in time; "
                f"tail of {log}:\n{log_tail(log)}"
            )

        # Phase 1: wait for the listeners with a plain TCP probe, so librdkafka does not
        # spray "connection refused" errors on stderr while the JVMs boot.
        for node_id in node_ids:
            port = self._ports[node_id][0]
            while True:
                check_alive()
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise timed_out()
                time.sleep(0.1)  # polling with a deadline: no event to wait on
        # Phase 2: a real metadata round trip that lists these nodes as live brokers
        # (on a cluster: registered with the controller quorum and unfenced).
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 2})
        while True:
            check_alive()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise timed_out()
            try:
                metadata = admin.list_topics(timeout=min(2.0, remaining))
            except Exception:  # KafkaException: listener open but not serving yet
                metadata = None
            if metadata is not None and set(node_ids) <= set(metadata.brokers):
                return
            time.sleep(0.1)  # avoid a hot loop when the failure is immediate

    def _terminate(self, pids: list[int], timeout: float) -> None:
        """SIGTERM (controlled shutdown) all, wait, SIGKILL after ``timeout``; wait for exit.

        All at once: a cluster's nodes stopped one by one would each wait for a
        controller quorum the previous ones took away.
        """
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for pid in pids:
            if not self._wait_exit(pid, max(0.0, deadline - time.monotonic())):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                if not self._wait_exit(pid, 10):
                    raise LocalKafkaError(f"Kafka broker pid {pid} did not exit after SIGKILL")

    def _wait_exit(self, pid: int, timeout: float) -> bool:
        proc = next((p for p in self._procs.values() if p.pid == pid), None)
        if proc is not None:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                return False
            return True
        # Not our child: poll with a deadline (there is no portable exit event to wait on).
        deadline = time.monotonic() + timeout
        while pid_alive(pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def wait(self) -> int:
        """Block until a node this handle started exits; return its exit code.

        For ``sendonce dev kafka start --foreground``, which runs until the broker ends
        (on a cluster: until any node ends).
        """
        if not self._procs:
            raise LocalKafkaError(f"this handle did not start the broker from {self.home}")
        if len(self._procs) == 1:
            return next(iter(self._procs.values())).wait()
        # One waiter thread per node: the first exit is the event.
        exits: queue.Queue[int] = queue.Queue()
        for proc in self._procs.values():
            threading.Thread(target=lambda p=proc: exits.put(p.wait()), daemon=True).start()
        return exits.get()

    def stop(self, timeout: float = 30) -> None:
        """Stop the broker, every node (from this or any process); a no-op if none runs.

        Sends SIGTERM so the nodes shut down cleanly, SIGKILL to any that has not exited
        after ``timeout`` seconds, then removes ``state.json``.
        """
        with self._locked():
            pids = self.pids
            if pids:
                self._terminate(pids, timeout)
            with contextlib.suppress(FileNotFoundError):
                self.state_path.unlink()
            self._procs = {}

    def kill(self) -> None:
        """SIGKILL every node (simulates a crash); data stays, ``start()`` recovers it."""
        with self._locked():
            pids = self.pids
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            for pid in pids:
                if not self._wait_exit(pid, 10):
                    raise LocalKafkaError(f"Kafka broker pid {pid} did not exit after SIGKILL")
            with contextlib.suppress(FileNotFoundError):
                self.state_path.unlink()
            self._procs = {}

    def restart(self, timeout: float = 60) -> str:
        """Stop, then start again on the same ports and data; returns the bootstrap."""
        self._adopt()  # a handle that did not start the broker: take over its ports
        self.stop()
        return self.start(detach=self._detached, timeout=timeout)

    # -- single nodes of a cluster -------------------------------------------------------

    def _node_down(self, node_id: int, how: signal.Signals, timeout: float) -> None:
        self._adopt()
        if self._ports is None or node_id not in self._ports:
            raise LocalKafkaError(f"no Kafka node {node_id} is running from {self.home}")
        with self._locked():
            pid = self.node_pid(node_id)
            if pid is not None:
                if how == signal.SIGTERM:
                    self._terminate([pid], timeout)
                else:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    if not self._wait_exit(pid, 10):
                        raise LocalKafkaError(f"Kafka node pid {pid} did not exit after SIGKILL")
            self._procs.pop(node_id, None)
            # The others still run: the record stays, with this node's pid cleared.
            self._record()

    def kill_node(self, node_id: int) -> None:
        """SIGKILL one node of the cluster (a crash); :meth:`start_node` brings it back."""
        self._node_down(node_id, signal.SIGKILL, 0)

    def stop_node(self, node_id: int, timeout: float = 30) -> None:
        """Stop one node cleanly (SIGTERM, SIGKILL after ``timeout``)."""
        self._node_down(node_id, signal.SIGTERM, timeout)

    def start_node(self, node_id: int, timeout: float = 60) -> None:
        """Start a stopped node on its old ports and data; wait until it is a live broker.

        Raises :class:`LocalKafkaError` if it is running already, or does not come back.
        """
        deadline = time.monotonic() + timeout
        lib = ensure_jars(self._lib)
        self._adopt()
        if self._ports is None or node_id not in self._ports:
            raise LocalKafkaError(f"Kafka node {node_id} of {self.home} was never started")
        with self._locked():
            if self.node_pid(node_id) is not None:
                raise LocalKafkaError(f"Kafka node {node_id} of {self.home} is running")
            self._procs[node_id] = self._spawn(lib, node_id, self._detached)
            self._record()
            try:
                self._wait_ready([node_id], deadline)
            except BaseException:
                with contextlib.suppress(LocalKafkaError):
                    self._terminate([self._procs[node_id].pid], timeout=10)
                self._procs.pop(node_id, None)
                self._record()
                raise

    def leader_of(self, topic: str, partition: int, timeout: float = 10) -> int:
        """The node id leading ``topic``'s ``partition`` now (-1 while it has none)."""
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 2})
        metadata = admin.list_topics(topic=topic, timeout=timeout).topics[topic]
        if metadata.error is not None:
            raise LocalKafkaError(f"no metadata for {topic}: {metadata.error}")
        return int(metadata.partitions[partition].leader)

    def _atexit_stop(self) -> None:
        if any(p.poll() is None for p in self._procs.values()) and not self._detached:
            with contextlib.suppress(Exception):
                self.stop(timeout=15)


def recorded_broker(home: Path | None = None) -> tuple[str, Path] | None:
    """The bootstrap of the live local broker of ``home`` and the record it is read from.

    ``home`` defaults to :func:`~sendonce.dev.kafka_jars.default_home`, where
    ``sendonce dev kafka start`` records its broker (``state.json``; ``stop`` removes
    it). None when there is no record, its broker is gone, or there is no checkout to
    look in: the tools then use their configured address.
    """
    try:
        broker = LocalKafka(home)
        state = broker.status()
    except (LocalKafkaError, KeyError, TypeError, ValueError):
        return None  # no checkout, or a record this version cannot read
    if state is None or not state.get("bootstrap"):
        return None
    return str(state["bootstrap"]), broker.state_path
