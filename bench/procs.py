"""The processes a benchmark run starts: workers, the ceiling, the baseline, the emulator.

Each runs as its own process, so the load generator does not share their GIL,
and logs to a file in the run's directory.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sendonce.dev.procs import stop_process
from sendonce.settings import Settings


@dataclass
class Proc:
    """A process under test with its log file."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        """The process id."""
        return self.process.pid

    def alive(self) -> bool:
        """Whether it is still running."""
        return self.process.poll() is None

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
        return stop_process(self.process, timeout, kill_wait=30)

    def memory_kb(self) -> dict[str, int]:
        """VmRSS and VmHWM (peak RSS) from /proc, in KiB (empty if unavailable)."""
        found: dict[str, int] = {}
        try:
            text = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return found
        for line in text.splitlines():
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                found[name] = int(rest.split()[0])
        return found

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of its log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


#: The checkout holding ``bench/``: children import ``bench.*`` from it wherever
#: the benchmark was started (``sendonce dev bench`` from another directory).
_ROOT = Path(__file__).resolve().parent.parent


def child_env(env: Mapping[str, str], root: Path | None = None) -> dict[str, str]:
    """``env`` (default: ours) with the checkout (or ``root``) first on ``PYTHONPATH``."""
    merged = {**os.environ, **env}
    path = merged.get("PYTHONPATH")
    first = root or _ROOT
    merged["PYTHONPATH"] = f"{first}{os.pathsep}{path}" if path else str(first)
    return merged


def start(
    name: str,
    argv: list[str],
    env: Mapping[str, str],
    log_path: Path,
    root: Path | None = None,
) -> Proc:
    """Start ``python argv...`` with our environment plus ``env``, output to ``log_path``.

    ``root``: run the code of that checkout instead of this one (``--baseline``).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        # The child keeps its own copy of the descriptor.
        # In the checkout's own directory: `python -m` puts the working directory
        # first on sys.path, ahead of PYTHONPATH, so a baseline started from this
        # checkout's directory would silently run this checkout's code.
        process = subprocess.Popen(
            [sys.executable, *argv],
            env=child_env(env, root),
            cwd=root or _ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return Proc(name, process, log_path)


_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds ``pid`` has used so far (Linux /proc), None if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces; utime and stime are fields 14 and 15.
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The ``SENDONCE_*`` variables of a ``sendonce worker`` for ``settings``."""
    return {
        **settings.to_env(),
        "SENDONCE_WORKER_ID": "bench-worker",
        # Two checkouts' workers may run side by side: no shared metrics port.
        "SENDONCE_METRICS_PORT": "0",
        **extra,
    }


def start_worker(
    settings: Settings, log_path: Path, root: Path | None = None, **extra_env: str
) -> Proc:
    """A ``sendonce worker`` process for ``settings`` (of the checkout ``root`` if given)."""
    return start(
        "worker",
        ["-m", "sendonce.cli", "worker"],
        worker_env(settings, **extra_env),
        log_path,
        root,
    )


# --------------------------------------------------------------------- Faust log


# A worker's text lines start with "2025-01-31 12:00:00,123" (local time; Faust's own
# format, which bracketed it, is accepted too).
_STAMP = re.compile(r"^\[?(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\b")


def log_event_times(log_path: Path, needles: Mapping[str, str]) -> dict[str, float]:
    """Epoch seconds of the first log line containing each needle (by the line's stamp)."""
    found: dict[str, float] = {}
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return found
    for line in text.splitlines():
        for name, needle in needles.items():
            if name in found or needle not in line:
                continue
            stamp = _STAMP.match(line)
            if stamp:
                found[name] = datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return found


# --------------------------------------------------------------------- Graph emulator


@dataclass
class Emulator:
    """A ``sendonce dev graph-emulator`` process and where it listens."""

    proc: Proc
    info: dict[str, str]
    secret: str

    def worker_env(self, mailbox_concurrency: int = 4) -> dict[str, str]:
        """Worker variables for this emulator, with the benchmark's limits lifted."""
        return {
            "SENDONCE_PROVIDER": "graph",
            "SENDONCE_GRAPH_TENANT_ID": self.info["tenant"],
            "SENDONCE_GRAPH_CLIENT_ID": self.info["client_id"],
            "SENDONCE_GRAPH_CLIENT_SECRET": self.secret,
            "SENDONCE_GRAPH_AUTHORITY": self.info["authority"],
            "SENDONCE_GRAPH_URL": self.info["graph_url"],
            "SENDONCE_GRAPH_CA_BUNDLE": self.info["ca_bundle"],
            "SENDONCE_GRAPH_MAILBOX_CONCURRENCY": str(mailbox_concurrency),
            # Exchange Online's 30 messages a minute and Graph's request budget would
            # turn the benchmark into a measurement of those caps.
            "SENDONCE_GRAPH_SENDS_PER_MINUTE": "0",
            "SENDONCE_GRAPH_REQUESTS_PER_10MIN": "0",
        }


_INFO = re.compile(r"^(graph_url|authority|ca_bundle|tenant|client_id|admin_url)=")


def start_emulator(work: Path, latency_ms: float, log_path: Path, timeout: float = 60) -> Emulator:
    """The Graph emulator in its own process, every request delayed by ``latency_ms``."""
    secret = secrets.token_urlsafe(24)
    argv = ["-m", "sendonce.cli", "dev", "graph-emulator", "--ca-dir", str(work / "graph-ca")]
    # The benchmark's workers lift their per-minute cap (worker_env): the emulator too.
    argv += ["--sends-per-minute", "0"]
    if latency_ms > 0:
        argv += ["--fault", json.dumps({"kind": "latency", "latency_ms": latency_ms})]
    env = {"SENDONCE_GRAPH_EMULATOR_CLIENT_SECRET": secret}
    proc = start("graph-emulator", argv, env, log_path)
    deadline = time.monotonic() + timeout
    while True:
        info = dict(
            line.split("=", 1) for line in proc.log_tail(50).splitlines() if _INFO.match(line)
        )
        if "admin_url" in info:
            return Emulator(proc, info, secret)
        if not proc.alive() or time.monotonic() > deadline:
            proc.stop()
            raise RuntimeError(f"the Graph emulator did not start:\n{proc.log_tail()}")
        time.sleep(0.1)  # waiting for the child to print its address
