"""stop_process: a clean leave first, SIGKILL for a child that ignores it."""

from __future__ import annotations

import signal
import subprocess
import sys

from sendonce.dev.procs import stop_process


def _child(code: str) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    assert process.stdout is not None
    assert process.stdout.readline() == b"ready\n"  # its handlers are installed
    return process


def test_a_child_that_leaves_on_sigterm_gets_to_leave() -> None:
    child = _child("import time; print('ready', flush=True); time.sleep(60)")
    assert stop_process(child, timeout=10) == -signal.SIGTERM


def test_a_child_that_ignores_sigterm_is_killed_after_the_timeout() -> None:
    child = _child(
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ready', flush=True); time.sleep(60)"
    )
    assert stop_process(child, timeout=0.5) == -signal.SIGKILL


def test_a_child_that_already_exited_keeps_its_code() -> None:
    child = _child("print('ready', flush=True); raise SystemExit(3)")
    child.wait(10)
    assert stop_process(child) == 3
