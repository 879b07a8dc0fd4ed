"""Child processes of the dev tools (demo, torture harness, benchmarks, tests)."""

from __future__ import annotations

import signal
import subprocess


def stop_process(
    process: subprocess.Popen[bytes], timeout: float = 30.0, kill_wait: float = 10.0
) -> int | None:
    """SIGTERM (a clean leave), SIGKILL if it has not exited after ``timeout`` seconds.

    Returns the exit code (None if even SIGKILL did not end it within ``kill_wait``).
    """
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            try:
                process.wait(kill_wait)
            except subprocess.TimeoutExpired:
                return None
    return process.returncode
