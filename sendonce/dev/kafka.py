"""A real, single-node Apache Kafka broker (KRaft) for development and integration tests.

The broker jars come from Maven Central via ``deploy/local-kafka/pom.xml`` (see
:mod:`sendonce.dev.kafka_jars`); this module runs the broker as a plain ``java`` process
whose state lives in one *home* directory::

    home/
      server.properties   rendered by this module (ports, log.dirs, single-node settings)
      data/               the Kafka log dirs (formatted once, on first start)
      broker.log          the broker's console output (log4j at WARN)
      state.json          pid, ports and bootstrap while the broker runs

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
import signal
import socket
import subprocess
import sys
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
    "log_tail",
    "new_cluster_id",
    "pick_free_ports",
    "recorded_broker",
    "render_server_properties",
]

# How much of broker.log an error message (or the CLI) quotes.
_LOG_TAIL_LINES = 40


class BrokerAlreadyRunning(LocalKafkaError):
    """``start()`` was called on a home whose broker is alive."""

    def __init__(self, home: Path, bootstrap: str, pid: int) -> None:
        super().__init__(
            f"a Kafka broker is already running from {home} (pid {pid}, bootstrap "
            f"{bootstrap}); stop it first with `sendonce dev kafka stop --home {home}`"
        )
        self.home = home
        self.bootstrap = bootstrap
        self.pid = pid


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


def render_server_properties(
    port: int,
    controller_port: int,
    log_dir: Path,
    overrides: Mapping[str, str] | None = None,
) -> str:
    """Render ``server.properties`` for a combined broker+controller on loopback."""
    props: dict[str, str] = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@127.0.0.1:{controller_port}",
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(log_dir),
        # One node: every internal topic must accept a replication factor / ISR of 1.
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
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
        # momentarily slow JVM from being fenced.
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


class LocalKafka(Service):
    """One local single-node Kafka broker whose state lives in ``home``.

    Note on attached mode: Linux delivers the parent-death signal when the *thread* that
    started the broker exits, so call :meth:`start` from a long-lived thread (normally
    the main thread).
    """

    def __init__(
        self,
        home: Path | None = None,
        heap: str = "512m",
        *,
        lib: Path | None = None,
        config: Mapping[str, str] | None = None,
    ) -> None:
        """``config`` entries override/extend the rendered server.properties."""
        self.home = (home or default_home()).expanduser().resolve()
        self.heap = heap
        self._lib = lib
        self._overrides = dict(config or {})
        self._proc: subprocess.Popen[bytes] | None = None
        self._ports: tuple[int, int] | None = None
        self._detached = False
        self._atexit_registered = False

    # -- paths -------------------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        """The broker's ``log.dirs``."""
        return self.home / "data"

    @property
    def config_path(self) -> Path:
        """The rendered ``server.properties``."""
        return self.home / "server.properties"

    @property
    def log_path(self) -> Path:
        """The broker's console output."""
        return self.home / "broker.log"

    @property
    def state_path(self) -> Path:
        """``state.json``: pid/ports/bootstrap of the live broker."""
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

    def status(self) -> dict[str, Any] | None:
        """The live broker's state (pid, port, controller_port, bootstrap, detached, ...).

        Works from any process via ``state.json``; returns None when no broker from this
        home is alive (a stale ``state.json`` is removed).
        """
        state = self._read_state()
        if state is None:
            return None
        if not _is_our_broker(int(state["pid"]), self.config_path):
            with contextlib.suppress(FileNotFoundError):
                self.state_path.unlink()
            return None
        return state

    def is_running(self) -> bool:
        """True if a broker from this home is alive (started by anyone)."""
        if self._proc is not None and self._proc.poll() is None:
            return True
        return self.status() is not None

    @property
    def pid(self) -> int | None:
        """The broker's pid, or None when not running."""
        if self._proc is not None and self._proc.poll() is None:
            return self._proc.pid
        state = self.status()
        return int(state["pid"]) if state else None

    @property
    def bootstrap(self) -> str:
        """``127.0.0.1:PORT`` of this broker (raises if it was never started)."""
        if self._ports is not None:
            return f"127.0.0.1:{self._ports[0]}"
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

    # -- lifecycle -----------------------------------------------------------------------

    def _choose_ports(self) -> tuple[int, int]:
        if self._ports is not None:
            return self._ports  # restart: clients reconnect to the same address
        # A previous run of this home: keep its address if still free, so a developer's
        # bootstrap does not change across stop/start.
        with contextlib.suppress(FileNotFoundError, KeyError, ValueError):
            old = _parse_properties(self.config_path.read_text())
            port = int(old["advertised.listeners"].rsplit(":", 1)[1])
            cport = int(old["controller.quorum.voters"].rsplit(":", 1)[1])
            if port != cport and _port_free(port) and _port_free(cport):
                return port, cport
        port, cport = pick_free_ports(2)
        return port, cport

    def _jvm_command(self, lib: Path, main: str, *args: str) -> list[str]:
        cmd = [java_executable(), f"-Xmx{self.heap}", "-XX:+ExitOnOutOfMemoryError"]
        log4j = log4j_config()
        if log4j is not None:
            cmd.append(f"-Dlog4j2.configurationFile={log4j}")
        # "lib/*" is expanded by the JVM itself (classpath wildcard), not the shell.
        cmd += ["-cp", str(lib / "*"), main, *args]
        return cmd

    def _format_storage(self, lib: Path) -> None:
        cmd = self._jvm_command(
            lib,
            "kafka.tools.StorageTool",
            "format",
            "-t",
            new_cluster_id(),
            "-c",
            str(self.config_path),
        )
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise LocalKafkaError(
                f"formatting Kafka storage in {self.data_dir} failed "
                f"(exit {proc.returncode}):\n{(proc.stdout + proc.stderr).strip()}"
            )

    def start(self, detach: bool = False, timeout: float = 60) -> str:
        """Start the broker and wait until it answers a metadata request.

        Returns the bootstrap address ``127.0.0.1:PORT``.  Raises
        :class:`BrokerAlreadyRunning` if this home's broker is alive, and
        :class:`LocalKafkaError` (with the tail of ``broker.log``) if the broker exits or
        is not ready within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        lib = ensure_jars(self._lib)
        with self._locked():
            state = self.status()
            if state is not None:
                raise BrokerAlreadyRunning(self.home, str(state["bootstrap"]), int(state["pid"]))
            ports_were_pinned = self._ports is not None
            port, cport = self._choose_ports()
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self.config_path.write_text(
                render_server_properties(port, cport, self.data_dir, self._overrides)
            )
            if not (self.data_dir / "meta.properties").exists():
                self._format_storage(lib)
            cmd = self._jvm_command(lib, "kafka.Kafka", str(self.config_path))
            with open(self.log_path, "ab") as log:
                log.write(f"\n==== sendonce: starting broker at {time.ctime()} ====\n".encode())
                log.flush()
                if detach:
                    # Own session: no terminal signals, survives the starting process.
                    proc = subprocess.Popen(
                        cmd,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                else:
                    # Own process group, so Ctrl-C reaches only us and we shut the broker
                    # down in order; the parent-death signal covers our abrupt death.
                    proc = subprocess.Popen(
                        cmd,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        process_group=0,
                        preexec_fn=_make_pdeathsig_preexec(),
                    )
            self._proc = proc
            self._ports = (port, cport)
            self._detached = detach
            if not detach and not self._atexit_registered:
                atexit.register(self._atexit_stop)
                self._atexit_registered = True
            bootstrap = f"127.0.0.1:{port}"
            self._write_state(
                {
                    "pid": proc.pid,
                    "port": port,
                    "controller_port": cport,
                    "bootstrap": bootstrap,
                    "detached": detach,
                    "home": str(self.home),
                    "started_at": time.time(),
                }
            )
            try:
                self._wait_ready(proc, bootstrap, deadline)
            except BaseException:
                self._terminate(proc.pid, timeout=10)
                with contextlib.suppress(FileNotFoundError):
                    self.state_path.unlink()
                if not ports_were_pinned:
                    # e.g. another process grabbed a picked port: let a retry pick anew.
                    self._ports = None
                raise
        return bootstrap

    def _wait_ready(self, proc: subprocess.Popen[bytes], bootstrap: str, deadline: float) -> None:
        from confluent_kafka.admin import AdminClient

        def check_alive() -> None:
            if proc.poll() is not None:
                raise LocalKafkaError(
                    f"the Kafka broker exited with code {proc.returncode} while starting; "
                    f"tail of {self.log_path}:\n{log_tail(self.log_path)}"
                )

        def timed_out() -> LocalKafkaError:
            return LocalKafkaError(
                f"the Kafka broker did not become ready at {bootstrap} in time; "
                f"tail of {self.log_path}:\n{log_tail(self.log_path)}"
            )

        host, port = bootstrap.rsplit(":", 1)
        # Phase 1: wait for the listener with a plain TCP probe, so librdkafka does not
        # spray "connection refused" errors on stderr while the JVM boots.
        while True:
            check_alive()
            try:
                with socket.create_connection((host, int(port)), timeout=0.5):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise timed_out()
            time.sleep(0.1)  # polling with a deadline: no event to wait on
        # Phase 2: a real metadata round trip that lists this broker.
        admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 2})
        while True:
            check_alive()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise timed_out()
            try:
                metadata = admin.list_topics(timeout=min(2.0, remaining))
            except Exception:  # KafkaException: listener open but not serving yet
                metadata = None
            if metadata is not None and metadata.brokers:
                return
            time.sleep(0.1)  # avoid a hot loop when the failure is immediate

    def _terminate(self, pid: int, timeout: float) -> None:
        """SIGTERM (controlled shutdown), wait, SIGKILL after ``timeout``; wait for exit."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not self._wait_exit(pid, timeout):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            if not self._wait_exit(pid, 10):
                raise LocalKafkaError(f"Kafka broker pid {pid} did not exit after SIGKILL")

    def _wait_exit(self, pid: int, timeout: float) -> bool:
        if self._proc is not None and self._proc.pid == pid:
            try:
                self._proc.wait(timeout)
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
        """Block until the broker this handle started exits; return its exit code.

        For ``sendonce dev kafka start --foreground``, which runs until the broker ends.
        """
        if self._proc is None:
            raise LocalKafkaError(f"this handle did not start the broker from {self.home}")
        return self._proc.wait()

    def _target_pid(self) -> int | None:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc.pid
        state = self.status()
        return int(state["pid"]) if state else None

    def stop(self, timeout: float = 30) -> None:
        """Stop the broker (from this or any process); a no-op if it is not running.

        Sends SIGTERM so the broker shuts down cleanly, SIGKILL if it has not exited
        after ``timeout`` seconds, then removes ``state.json``.
        """
        with self._locked():
            pid = self._target_pid()
            if pid is not None:
                self._terminate(pid, timeout)
            with contextlib.suppress(FileNotFoundError):
                self.state_path.unlink()
            self._proc = None

    def kill(self) -> None:
        """SIGKILL the broker (simulates a crash); data stays, ``start()`` recovers it."""
        with self._locked():
            pid = self._target_pid()
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                if not self._wait_exit(pid, 10):
                    raise LocalKafkaError(f"Kafka broker pid {pid} did not exit after SIGKILL")
            with contextlib.suppress(FileNotFoundError):
                self.state_path.unlink()
            self._proc = None

    def restart(self, timeout: float = 60) -> str:
        """Stop, then start again on the same ports and data; returns the bootstrap."""
        if self._ports is None:
            # A handle that did not start the broker: adopt the running broker's ports.
            state = self.status()
            if state is not None:
                self._ports = (int(state["port"]), int(state["controller_port"]))
                self._detached = bool(state.get("detached", False))
        self.stop()
        return self.start(detach=self._detached, timeout=timeout)

    def _atexit_stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None and not self._detached:
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
