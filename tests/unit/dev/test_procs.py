"""stop_process: a clean leave first (also for a stopped child), SIGKILL for a child that
ignores it; process_state: what the kernel says a process is doing."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from sendonce.dev.procs import process_state, stop_process


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


def _stopped(child: subprocess.Popen[bytes]) -> None:
    """SIGSTOP ``child`` and wait until the kernel shows it stopped."""
    child.send_signal(signal.SIGSTOP)
    deadline = time.monotonic() + 10
    while process_state(child.pid) != "T":
        assert time.monotonic() < deadline, process_state(child.pid)
        time.sleep(0.01)


def test_process_state_tells_a_stopped_child_from_a_running_one() -> None:
    child = _child("import time; print('ready', flush=True); time.sleep(60)")
    try:
        assert process_state(child.pid) in ("S", "R")
        _stopped(child)
        child.send_signal(signal.SIGCONT)
        deadline = time.monotonic() + 10
        while process_state(child.pid) == "T":
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        child.kill()
        child.wait(10)
    assert process_state(child.pid) is None  # reaped: no such process


def test_a_stopped_child_still_gets_its_clean_leave() -> None:
    # A stopped process keeps a handled SIGTERM pending until it runs again: without
    # a SIGCONT it would sit out the timeout and die of SIGKILL.
    child = _child(
        "import signal, sys, time; "
        "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0)); "
        "print('ready', flush=True); time.sleep(60)"
    )
    _stopped(child)
    assert stop_process(child, timeout=5) == 0
