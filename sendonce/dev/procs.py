"""Child processes of the dev tools (demo, torture harness, benchmarks, tests).

Stopping a child cleanly, and telling whether a pid (ours or another process's, e.g. a
detached broker's) still runs: the local broker and its jar resolver both need the
latter, so it lives here rather than in either.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

__all__ = ["pid_alive", "process_state", "stop_process"]


def stop_process(
    process: subprocess.Popen[bytes], timeout: float = 30.0, kill_wait: float = 10.0
) -> int | None:
    """SIGTERM (a clean leave), SIGKILL if it has not exited after ``timeout`` seconds.

    Returns the exit code (None if even SIGKILL did not end it within ``kill_wait``).
    A stopped child (SIGSTOP) is continued first: it would keep a handled SIGTERM
    pending until it runs again and so sit out the timeout.
    """
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        # After the SIGTERM, so the child meets it the moment it runs again (a no-op
        # for a running child).
        process.send_signal(signal.SIGCONT)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            try:
                process.wait(kill_wait)
            except subprocess.TimeoutExpired:
                return None
    return process.returncode


def process_state(pid: int) -> str | None:
    """The kernel's one-letter state of ``pid`` (``T``: stopped), None if there is no such
    process (or no /proc).

    The torture harness tells a worker that stopped itself at a pause point by this.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may contain spaces/parens; the state follows the last ')'.
    return stat.rsplit(")", 1)[1].split()[0]


def _exited_unreaped(pid: int) -> bool:
    """True if ``pid`` has fully exited and only its zombie waits to be reaped (Linux).

    A leader in state Z is not enough: when a JVM's main thread ends first, the leader
    shows Z while the other threads are still shutting down (and holding the data-dir
    lock and sockets).  The process is gone only when no task is left but zombies.
    """
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False  # no /proc, or vanished: kill(0) decides
    for tid in tasks:
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue  # that thread just went away
        # The command name may contain spaces/parens; the state follows the last ')'.
        if stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X"):
            return False
    return True


def pid_alive(pid: int) -> bool:
    """True if ``pid`` is a running process (an exited, unreaped zombie is not)."""
    try:
        # Our own child: waitpid is authoritative, and reaping it here keeps it from
        # lingering as a zombie that kill(pid, 0) would report as alive.
        return os.waitpid(pid, os.WNOHANG)[0] != pid
    except ChildProcessError:
        pass  # not our child
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    # Someone else's child that exited but is not reaped yet (e.g. a container's init
    # that does not reap) counts as dead.
    return not _exited_unreaped(pid)
