"""A worker that lost its partitions while stopped must not act on them when it resumes.

Issue 15. Worker A is frozen (``SENDONCE_PAUSE_AT``: SIGSTOP, every thread, librdkafka's
too) at a point of a key's send, longer than its group session; the group evicts it,
worker B takes the partition over and finishes the key. Then A is resumed (SIGCONT)
as the zombie a long GC pause or a frozen VM makes. Whatever A still holds (a PENDING
record in librdkafka's queue, an acknowledged PENDING, an accepted send) must not
reach the provider or the ledger again: B's attempt is the key's only delivery, the
changelog ends on B's final entry, and A says it was fenced.

One test per pause point:

* ``pending-produced``: A's PENDING sits unacknowledged in its producer's linger queue
  (linger raised so it is surely still there when A stops). B restores the changelog
  without it, reads the uncommitted intent again and sends.
* ``after-pending``: A's PENDING is durable, the provider was not called. B finds it,
  looks the key up (nothing), reports AMBIGUOUS and, at the reconcile deadline (short
  here, policy ``resend``), sends.
* ``after-accept``: the provider accepted A's message, nothing is recorded. B finds the
  PENDING, looks the key up and settles it SENT (reconciled) without sending.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sendonce.emulator import GraphEmulator
from sendonce.faults import AFTER_ACCEPT, AFTER_PENDING, PENDING_PRODUCED
from sendonce.ops.history import TopicReader
from sendonce.streams.ledger import LedgerEntry, LedgerStatus
from sendonce.streams.processor import partition_for_key
from tests.integration.harness import Pipeline, WorkerProcess, intent
from tests.integration.test_graph_worker import graph_env

pytestmark = pytest.mark.integration

SENDER = "orders@acme.example"
FINAL = (LedgerStatus.SENT, LedgerStatus.FAILED)
FENCED = re.compile(r"\bfenced\b", re.IGNORECASE)
# What a resumed A does today once its stale work ran its course: it emits a result
# for the key, or abandons the batch because the partition moved.
ABANDONED = "batch abandoned"


class NotFenced(AssertionError):
    """The verdict: the resumed worker acted on the key its successor had finished."""


def fencing_env(emulator: GraphEmulator) -> dict[str, str]:
    return {
        **graph_env(emulator),
        # B finishes an after-pending key by resending at the deadline: the lookup
        # can only say "not found yet", and the key must end SENT for the test.
        "SENDONCE_RECONCILE_DEADLINE_S": "3",
        "SENDONCE_RECONCILE_ON_DEADLINE": "resend",
    }


def full_log(worker: WorkerProcess) -> str:
    return worker.log_path.read_text(errors="replace")


def stopped(worker: WorkerProcess) -> bool:
    """Whether the process is in the stopped state (SIGSTOP), from /proc."""
    stat = Path(f"/proc/{worker.pid}/stat").read_text()
    # The state follows the command name, which is in parentheses and may hold spaces.
    return stat[stat.rindex(")") + 2] == "T"


def wait_until(
    pipeline: Pipeline,
    condition: Callable[[], bool],
    seconds: float,
    why: Callable[[], str],
    running: WorkerProcess | None = None,
) -> None:
    """Poll results until ``condition``; fail at the deadline or when ``running`` exits."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, why()
        assert running is None or running.alive(), f"worker exited: {running.log()}"
        pipeline.watcher.poll(timeout=0.2)


def results_for(pipeline: Pipeline, key: str) -> list[dict[str, object]]:
    return [r.value for r in pipeline.watcher.records if r.value["idempotency_key"] == key]


def changelog_history(pipeline: Pipeline, key: str) -> list[LedgerEntry]:
    """Every committed changelog record of ``key``, oldest first (read_committed)."""
    settings = pipeline.settings
    partition = partition_for_key(key.encode(), settings.partitions)
    with TopicReader(settings.bootstrap_servers) as reader:
        return [
            LedgerEntry.from_bytes(record.value)
            for record in reader.scan(settings.ledger_changelog_topic, partition, key=key.encode())
            if record.value is not None
        ]


# Failed on main before fencing (issue 15): pending-produced and after-pending with two
# deliveries, after-accept with A's SENT written after B's; none logged "fenced".
@pytest.mark.parametrize("point", [PENDING_PRODUCED, AFTER_PENDING, AFTER_ACCEPT])
def test_a_worker_resumed_after_losing_its_partition_is_fenced(
    pipeline: Pipeline, emulator: GraphEmulator, point: str
) -> None:
    env = fencing_env(emulator)
    a_env = {**env, "SENDONCE_PAUSE_AT": f"{point}:1"}
    if point == PENDING_PRODUCED:
        # The PENDING record must still be in librdkafka's queue when A stops a few
        # microseconds after handing it over: hold every batch back for 2 s.
        a_env["SENDONCE_PRODUCER_LINGER_MS"] = "2000"
    a = pipeline.start_worker(**a_env, SENDONCE_DATA_DIR=str(pipeline.root / "data-a"))
    try:
        [key] = pipeline.publish([intent(1, sender=SENDER)])

        pause_line = f"pause point {point} reached (occurrence 1): SIGSTOP"
        wait_until(
            pipeline,
            lambda: pause_line in full_log(a),
            120,
            lambda: f"A never reached {point}: {a.log()}",
            running=a,
        )
        wait_until(pipeline, lambda: stopped(a), 10, lambda: "A logged its pause but runs on")
        assert len(emulator.deliveries(key=key)) == (1 if point == AFTER_ACCEPT else 0)

        # B joins; A's session expires (8 s) and B gets every partition, the key's too.
        b = pipeline.start_worker(**env, SENDONCE_DATA_DIR=str(pipeline.root / "data-b"))
        wait_until(
            pipeline,
            lambda: any(r["outcome"] == "SENT" for r in results_for(pipeline, key)),
            120,
            lambda: f"B never finished the key: {results_for(pipeline, key)}\n{b.log()}",
            running=b,
        )
        assert len(emulator.deliveries(key=key)) == 1
        # The scenario's premise, from the changelog: B's final entry is the key's
        # latest, and the attempt B found was A's, except at pending-produced, where
        # A's PENDING was still in A's producer and B made its own attempt.
        before = changelog_history(pipeline, key)
        assert [e.status for e in before if e.status in FINAL] == [LedgerStatus.SENT], before
        assert before[-1].status is LedgerStatus.SENT
        assert before[0].worker == ("worker-1" if point == PENDING_PRODUCED else "worker-0")
        # Every result so far is B's: A is stopped. (A result names the worker that made
        # the key's attempt, so after-pending and after-accept results name A.)
        results_of_b = len(results_for(pipeline, key))

        os.kill(a.pid, signal.SIGCONT)

        # A has settled when it says it was fenced, or (today) when its stale drive ran
        # its course: a result of its own for the key, or its batch abandoned.
        def settled() -> bool:
            log = full_log(a).split(pause_line, 1)[1]
            return (
                bool(FENCED.search(log))
                or ABANDONED in log
                or len(results_for(pipeline, key)) > results_of_b
                or not a.alive()
            )

        wait_until(pipeline, settled, 60, lambda: f"A never settled after SIGCONT: {a.log()}")
    finally:
        # A worker left stopped would ignore the harness's SIGTERM until it timed out.
        with contextlib.suppress(ProcessLookupError):
            os.kill(a.pid, signal.SIGCONT)

    history = changelog_history(pipeline, key)
    deliveries = emulator.deliveries(key=key)
    a_log = full_log(a).split(pause_line, 1)[1]
    problems = []
    if len(deliveries) != 1:
        problems.append(f"{len(deliveries)} deliveries at the provider")
    if not history or history[-1].status is not LedgerStatus.SENT:
        problems.append(f"latest changelog entry {history[-1].status.value if history else None}")
    finals = [e for e in history if e.status in FINAL]
    if len(finals) != 1:
        # B's final entry must be the key's only one: A may not write after it.
        problems.append(f"{len(finals)} final changelog entries")
    if not FENCED.search(a_log):
        problems.append("A never logged that it was fenced")
    trail = [e.status.value for e in history]
    outcomes = [(r["worker"], r["outcome"]) for r in results_for(pipeline, key)]
    if problems:
        raise NotFenced(f"{point}: {'; '.join(problems)} (changelog {trail}, results {outcomes})")
