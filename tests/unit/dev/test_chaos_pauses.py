"""The torture harness's pauses: their schedule (seeded, drawn after everything else,
pause points in rotation), the report, the command line, and how the cluster notices a
worker that stopped itself at its pause point and continues it (a real child process,
no broker)."""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sendonce.dev.chaos import (
    PAUSE_MAX_OCCURRENCE,
    PAUSE_MAX_S,
    PAUSE_MIN_S,
    PAUSE_RETRIES,
    PAUSE_RETRY_S,
    SESSION_TIMEOUT_S,
    ChaosReport,
    ChaosWorker,
    Cluster,
    _schedule,
    add_cli,
    retry_later,
)
from sendonce.dev.procs import process_state, stop_process
from sendonce.faults import PAUSE_POINTS


def _events(pauses: int, bursts: int = 10, duration: float = 30.0) -> list[tuple[Any, ...]]:
    rng = random.Random(11)
    events = _schedule(
        rng,
        bursts,
        duration,
        kills=4,
        rebalances=1,
        broker_restarts=1,
        leader_kills=2,
        pauses=pauses,
    )
    return [(e.at, e.action, e.arg, e.crash_at, e.pause_at, e.pause_s) for e in events]


def test_pauses_leave_the_seeds_schedule_alone() -> None:
    plain = _events(0)
    with_pauses = _events(6)

    assert [e for e in with_pauses if not e[1].startswith("pause")] == plain
    assert not any(e[4] or e[5] for e in plain)


def test_a_run_without_pauses_draws_nothing_more() -> None:
    # The run goes on drawing from the same rng (faults per burst, victims): a run
    # without pauses continues where the schedule before pauses left it (value taken
    # from the harness before pauses existed).
    rng = random.Random(11)
    _schedule(rng, 10, 30.0, kills=4, rebalances=1, broker_restarts=1, leader_kills=2)
    assert rng.random() == 0.6500709739140725


def test_pauses_alternate_points_in_rotation_and_random_moments() -> None:
    pauses = [e for e in _events(8) if e[1].startswith("pause")]

    assert Counter(e[1] for e in pauses) == {"pause-point": 4, "pause": 4}
    armed = [e[4] for e in pauses if e[1] == "pause-point"]
    # Four point pauses cover the four points once each.
    assert sorted(spec.partition(":")[0] for spec in armed) == sorted(PAUSE_POINTS)
    for spec in armed:
        assert 1 <= int(spec.partition(":")[2]) <= PAUSE_MAX_OCCURRENCE
    assert not any(e[4] for e in pauses if e[1] == "pause")
    for at, _, _, _, _, pause_s in pauses:
        assert 0.0 < at <= 30.0  # within the bursts
        # Longer than the session timeout: the group evicts the stopped worker.
        assert SESSION_TIMEOUT_S < PAUSE_MIN_S <= pause_s <= PAUSE_MAX_S


def test_one_pause_is_at_a_pause_point_and_points_repeat_in_rotation() -> None:
    assert [e[1] for e in _events(1) if e[1].startswith("pause")] == ["pause-point"]
    armed = [e[4].partition(":")[0] for e in _events(20) if e[1] == "pause-point"]
    assert len(armed) == 10
    # In rotation: ten point pauses over four points give each two or three.
    assert sorted(Counter(armed).values()) == [2, 2, 3, 3]
    assert set(armed) == set(PAUSE_POINTS)


def test_summary_names_pauses_only_when_asked_for_and_details_the_points() -> None:
    plain = ChaosReport(seed=1)
    paused = ChaosReport(seed=1, pauses_planned=2, pauses=2, pause_points={"after-accept": 1})

    assert plain.summary().endswith("seed=1")
    assert paused.summary().endswith("seed=1 pauses=2")
    assert (
        "pause_points=pending-produced:0,after-pending:0,after-accept:1,after-sent:0"
        in paused.details()
    )


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sendonce dev")
    add_cli(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_cli_pauses_option() -> None:
    assert _parse(["chaos"]).pauses == 0
    assert _parse(["chaos", "--pauses", "3"]).pauses == 3


# A stand-in worker: it logs the worker's pause line and stops itself, as
# sendonce.faults.PausePoints does, then reports that it runs again.
_STOPS_ITSELF = """
import os, signal, sys, time
print("pause point after-accept reached (occurrence 2): SIGSTOP", flush=True)
os.kill(os.getpid(), signal.SIGSTOP)
print("continued", flush=True)
time.sleep(60)
"""


def _bare_cluster(lines: list[str]) -> Cluster:
    # No broker, no emulator: only what check_workers needs for a worker that does not
    # die (starting one would need the emulator's environment).
    cluster = Cluster.__new__(Cluster)
    cluster.progress = lines.append
    cluster.workers = []
    cluster.unexpected_exits = 0
    cluster.crash_points_fired = Counter()
    cluster.pause_points_fired = Counter()
    cluster.pauses = 0
    return cluster


def _until(condition: Callable[[], bool], cluster: Cluster, what: str) -> None:
    deadline = time.monotonic() + 20
    while not condition():
        assert time.monotonic() < deadline, what
        cluster.check_workers()
        time.sleep(0.02)


def test_a_worker_stopped_at_its_pause_point_is_counted_and_continued(
    tmp_path: Path,
) -> None:
    lines: list[str] = []
    cluster = _bare_cluster(lines)
    worker = ChaosWorker(0, tmp_path / "w0", tmp_path / "w0.log", incarnation=1)
    worker.pause_at = "after-accept:2"
    worker.pause_deadline = time.monotonic() + 60
    worker.pause_s = 0.5
    with open(worker.log_path, "ab") as log:
        log.write(b"==== chaos: start incarnation 1 (SENDONCE_PAUSE_AT=after-accept:2)\n")
        worker.process = subprocess.Popen(
            [sys.executable, "-c", _STOPS_ITSELF], stdout=log, stderr=subprocess.STDOUT
        )
    cluster.workers.append(worker)
    try:
        cluster.check_workers()
        _until(lambda: cluster.pauses == 1, cluster, "stop not noticed")
        assert process_state(worker.process.pid) == "T"
        assert cluster.pause_points_fired == {"after-accept": 1}
        assert cluster.stopped_workers() == [worker]
        assert worker.pause_at == ""  # fired: not armed any more
        assert any("pause point after-accept reached (occurrence 2)" in line for line in lines)

        _until(lambda: not worker.resume_at, cluster, "not continued")
        _until(lambda: "continued" in worker.log_tail(), cluster, "not running again")
        assert cluster.stopped_workers() == []
        assert cluster.pauses == 1 and cluster.unexpected_exits == 0
    finally:
        stop_process(worker.process, timeout=5)


def test_a_pause_from_outside_lasts_its_time(tmp_path: Path) -> None:
    lines: list[str] = []
    cluster = _bare_cluster(lines)
    worker = ChaosWorker(0, tmp_path / "w0", tmp_path / "w0.log", incarnation=1)
    worker.process = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], stdout=subprocess.DEVNULL
    )
    cluster.workers.append(worker)
    try:
        cluster.pause(worker, 1.5)
        assert worker.busy and cluster.stopped_workers() == [worker]
        _until(lambda: process_state(worker.process.pid) == "T", cluster, "not stopped")
        _until(lambda: not worker.resume_at, cluster, "not continued")
        _until(lambda: process_state(worker.process.pid) != "T", cluster, "still stopped")
        assert cluster.pauses == 1 and not worker.busy
        assert "SIGSTOP for 1.5s" in worker.log_tail() and "SIGCONT" in worker.log_tail()
    finally:
        stop_process(worker.process, timeout=5)


def test_a_pause_with_no_worker_to_stop_is_put_off_a_bounded_number_of_times() -> None:
    # With two workers, one armed and one stopped, about half the pauses found no
    # victim and were dropped: the run had fewer pauses than asked for.
    events = _schedule(random.Random(3), 8, 60.0, 0, 0, 0, pauses=1)
    pause = next(e for e in events if "pause" in e.action)
    tries = [pause]
    while (later := retry_later(tries[-1])) is not None:
        tries.append(later)
    assert len(tries) == PAUSE_RETRIES + 1
    assert [t.at - pause.at for t in tries[1:3]] == [PAUSE_RETRY_S, 2 * PAUSE_RETRY_S]
    assert {(t.action, t.pause_at, t.pause_s) for t in tries} == {
        (pause.action, pause.pause_at, pause.pause_s)
    }
