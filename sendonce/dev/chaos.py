"""``sendonce dev chaos``: a seeded torture run of the real system, and its checker.

One run starts its own local Kafka broker, the Microsoft Graph emulator (in a thread),
12-partition topics under a unique prefix and K ``sendonce worker`` processes in one
consumer group. It publishes a seeded workload in bursts (fresh intents, repeats, key
reuses with other content, garbage records) while a seeded schedule SIGKILLs and
restarts workers, adds and removes a worker (rebalances), optionally restarts the
broker, and changes the emulator's fault rules per burst. Some kills are *crash-point
kills*: the victim is restarted with ``SENDONCE_CRASH_AT`` and SIGKILLs itself exactly
between the PENDING ack and the provider call, between provider acceptance and the SENT
write, or between the SENT write and the offset commit (``streams/faults.py``), windows
a kill from outside rarely hits. ``--pauses N`` SIGSTOPs workers for longer than the
group's session timeout and continues them afterwards, so the group evicts a worker that
still believes it owns its partitions: half of them at a random moment, half at a pause
point (the victim is restarted with ``SENDONCE_PAUSE_AT`` and stops itself there, with
its PENDING entry in flight, after it, after the provider accepted or after the SENT
write). The resumed zombie must be fenced. Then it waits until every intent record has
a result or a dead letter (and every pause is over) and checks the invariants:

* no idempotency key delivered more than once by the emulator (deliveries the emulator
  itself duplicated, flagged ``transport_duplicate``, are counted apart);
* no intent record without a result or dead letter (``lost``);
* no key left PENDING in the ledger (``stranded``): every key's latest state is final
  or AMBIGUOUS, which ``sendonce review list`` shows an operator;
* every poison record on an internal topic (a deferred intent with a malformed
  ``sendonce-origin`` header, an undecodable operator command) is dead-lettered, and
  the deferred one is never sent;
* every AMBIGUOUS key was reconciled to SENT or is listed as open.

Beyond the kills and provider faults, the workload mixes in garbage and oversize
records on the intents topic and the poison records above, and the run sometimes
plays an operator: AMBIGUOUS keys the emulator never delivered are resolved with
``review resolve --as resend``. Half the seeds run the workers with the reconcile
deadline policy ``resend``. Resends started after the origin offset was committed are
exactly the attempts a crash can strand.

With ``--brokers 3`` the run has its own three-node KRaft cluster instead of one
broker, its topics replication factor 3 and ``min.insync.replicas=2``, and
``--leader-kills N`` SIGKILLs the broker leading a random ledger changelog partition N
times mid-run, restarting it a few seconds later: the acknowledged ledger writes must
survive a leader's loss.

The seed reproduces the workload and the schedule; the exact interleaving of worker
threads, the broker and the emulator's draws does not repeat, so a failing seed shows
a weakness, not a guaranteed replay.

The engine lives here (not under ``tests/``) because tests are not installed;
``tests/chaos`` imports it.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import dataclasses
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sendonce.dev.procs import process_state, stop_process
from sendonce.options import Subparsers

__all__ = ["ChaosReport", "add_cli", "run_chaos"]

Progress = Callable[[str], None]

TENANTS = 20
MAILBOXES = 30
PARTITIONS = 12
ACTIONS = ("receipt", "reply", "escalation", "invite")
# The worker's Graph read timeout; a ``timeout`` fault hangs longer than this.
READ_TIMEOUT_S = 2.0
# Draft-send: a draft read back still a draft this long after its send started is
# sent again. Above the read timeout, and above the emulator's longest latency fault
# (1.5 s, applied before the send is processed), so no send can still be in flight.
DRAFT_RESEND_GRACE_S = 5.0
GRAPH_MODES = ("sendmail", "draft-send")
RECONCILE_DEADLINE_S = 20.0
# An armed worker first waits for the group to drop its killed incarnation (session
# timeout 8 s), restores its ledger partitions, then needs traffic to reach its point.
CRASH_WAIT_S = 45.0
# How long the checker lets PENDING entries end before it calls them stranded: past
# the reconcile grace, a tick and a lookup, and a resend's round trip.
STRANDED_WAIT_S = 30.0
# The checker's last read of the result topics after the drain, at most.
FINAL_READ_S = 30.0
# A crash point armed for the N-th occurrence, N drawn from 1..this.
CRASH_MAX_OCCURRENCE = 4
# The workers' group session timeout. A pause lasts longer (drawn per pause), so the
# group evicts the stopped worker and another takes its partitions over before it
# runs again.
SESSION_TIMEOUT_S = 8.0
PAUSE_MIN_S = 12.0
PAUSE_MAX_S = 15.0
# A pause with no worker to stop (all armed or stopped) is tried again this much
# later, this many times at most.
PAUSE_RETRY_S = 3.0
PAUSE_RETRIES = 30
# A pause point armed for the N-th occurrence, N drawn from 1..this; an armed worker
# gets as long to reach it as a crash-point one.
PAUSE_MAX_OCCURRENCE = 4
PAUSE_WAIT_S = CRASH_WAIT_S
# The workers' record limit (SENDONCE_MAX_RECORD_BYTES), low enough that an oversize
# record for them is still one the broker and the publisher accept.
MAX_RECORD_BYTES = 300_000
# An operator resends an AMBIGUOUS key only this long after its result, and only when
# the emulator has no delivery for it: every send in flight has landed by then (the
# longest fault hangs twice the read timeout).
RESEND_AFTER_S = 4 * READ_TIMEOUT_S


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- report


@dataclass
class ChaosReport:
    """What a run did and what the checker found."""

    seed: int
    intents: int = 0
    keys: int = 0
    kills: int = 0
    # Kills where the worker died at its armed crash point, by point; the others
    # (not reached in time, or pre-empted by another kill) count as plain kills.
    crash_points: dict[str, int] = field(default_factory=dict)
    # Pauses asked for, and the SIGSTOPs done: at random moments and by workers that
    # stopped themselves at their armed pause point (by point). A pause point not
    # reached in time is no pause.
    pauses_planned: int = 0
    pauses: int = 0
    pause_points: dict[str, int] = field(default_factory=dict)
    rebalances: int = 0
    broker_restarts: int = 0
    # A cluster run (``--brokers 3``): its size, and the partition leaders it killed.
    brokers: int = 1
    leader_kills: int = 0
    delivered_twice: int = 0
    transport_duplicates: int = 0
    lost: int = 0
    stranded: int = 0
    ambiguous_open: int = 0
    reconciled: int = 0
    # Poison records published on internal topics, and those found dead-lettered.
    poison: int = 0
    poison_dead_lettered: int = 0
    poison_delivered: int = 0
    operator_resends: int = 0
    deadline_policy: str = "review"
    graph_mode: str = "sendmail"
    # Open ambiguous keys by the ledger's reason (error code): why a human is needed.
    ambiguous_causes: dict[str, int] = field(default_factory=dict)
    # Details beyond the summary line.
    outcomes: dict[str, int] = field(default_factory=dict)
    dead_letters: int = 0
    expected_dead_letters: int = 0
    conflicts: int = 0
    expected_conflicts: int = 0
    unexpected_worker_exits: int = 0
    keyless_deliveries: int = 0
    sent_without_delivery: int = 0
    delivered_but_open: int = 0
    result_id_mismatches: int = 0
    drained: bool = False
    delivered_twice_keys: list[str] = field(default_factory=list)
    lost_records: list[tuple[str, int, int]] = field(default_factory=list)
    open_ambiguous_keys: list[str] = field(default_factory=list)
    stranded_keys: list[str] = field(default_factory=list)
    root: str = ""
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        """The guarantee held: nothing delivered twice, nothing lost, nothing stranded."""
        return (
            self.delivered_twice == 0
            and self.lost == 0
            and self.stranded == 0
            and self.poison_dead_lettered == self.poison
            and self.poison_delivered == 0
        )

    def summary(self) -> str:
        """The one summary line the issue asks for."""
        return (
            f"intents={self.intents} keys={self.keys} kills={self.kills} "
            f"rebalances={self.rebalances} broker_restarts={self.broker_restarts} "
            f"delivered_twice={self.delivered_twice} "
            f"transport_duplicates={self.transport_duplicates} lost={self.lost} "
            f"stranded={self.stranded} poison={self.poison_dead_lettered}/{self.poison} "
            f"ambiguous_open={self.ambiguous_open} reconciled={self.reconciled} "
            f"seed={self.seed}"
            # A single-broker run without pauses: the line stays as it always was.
            + (
                f" brokers={self.brokers} leader_kills={self.leader_kills}"
                if self.brokers > 1
                else ""
            )
            + (f" pauses={self.pauses}" if self.pauses_planned else "")
            + (f" graph_mode={self.graph_mode}" if self.graph_mode != "sendmail" else "")
        )

    def details(self) -> str:
        """A second line with what is worth a look but is not a verdict."""
        from sendonce.faults import CRASH_POINTS, PAUSE_POINTS

        outcomes = ",".join(f"{k}:{v}" for k, v in sorted(self.outcomes.items()))
        crashes = ",".join(f"{p}:{self.crash_points.get(p, 0)}" for p in CRASH_POINTS)
        paused = ",".join(f"{p}:{self.pause_points.get(p, 0)}" for p in PAUSE_POINTS)
        causes = ",".join(f"{k}:{v}" for k, v in sorted(self.ambiguous_causes.items()))
        return (
            f"outcomes={outcomes} crash_points={crashes} pause_points={paused} "
            f"ambiguous_open_by_cause={causes or '-'} graph_mode={self.graph_mode} "
            f"dead_letters={self.dead_letters}/"
            f"{self.expected_dead_letters} conflicts={self.conflicts}/"
            f"{self.expected_conflicts} unexpected_worker_exits={self.unexpected_worker_exits} "
            f"keyless_deliveries={self.keyless_deliveries} "
            f"sent_without_delivery={self.sent_without_delivery} "
            f"delivered_but_open={self.delivered_but_open} "
            f"operator_resends={self.operator_resends} deadline_policy={self.deadline_policy} "
            f"poison_delivered={self.poison_delivered} "
            f"result_id_mismatches={self.result_id_mismatches} drained={self.drained} "
            f"elapsed_s={self.elapsed_s:.0f} root={self.root}"
        )


# --------------------------------------------------------------------------- workload


@dataclass
class PlannedRecord:
    """One record to publish: a valid intent (``intent``) or garbage bytes (``raw``).

    ``poison-deferred`` (an intent for the deferred topic with a malformed origin
    header) and ``poison-command`` (garbage for the operator commands topic) go to
    internal topics; every other kind to the intents topic.
    """

    kind: str  # fresh | repeat | supplied | reuse | bad | oversize | poison-*
    intent: dict[str, Any] | None = None
    raw: bytes | None = None


def _mailbox(i: int) -> tuple[str, str]:
    """Mailbox ``i``'s tenant and address; mailboxes are spread over the tenants."""
    tenant = f"tenant{i % TENANTS:02d}"
    return tenant, f"sender{i:02d}@{tenant}.example"


def _fresh_intent(rng: random.Random, seed: int, n: int) -> dict[str, Any]:
    tenant, sender = _mailbox(rng.randrange(MAILBOXES))
    to = [f"user{rng.randrange(10_000)}@example.com" for _ in range(rng.choice((1, 1, 1, 2)))]
    return {
        "tenant_id": tenant,
        "source_event_id": f"chaos-{seed}-evt-{n}",
        "action_type": rng.choice(ACTIONS),
        "sender": sender,
        "to": to,
        "subject": f"Chaos {seed} #{n}",
        "text_body": f"Body of intent {n} (seed {seed}).",
    }


def plan_workload(n: int, seed: int, bursts: int) -> list[list[PlannedRecord]]:
    """``n`` records in ``bursts`` bursts: >= 30 % repeats, a few conflicts and bad records.

    Repeats copy an earlier intent, half of them from the same burst (the agent retried
    at once) and half from any earlier burst (a replay minutes later); some upper-case
    the recipients, which the key normalises away. A ``reuse`` sends a producer-supplied
    key again with another body: the system must answer CONFLICT.
    """
    rng = random.Random(f"workload-{seed}")
    bad = max(2, n // 200)
    pairs = max(2, n // 150)
    repeats = max(1, int(n * 0.35))
    # Oversize and poison records: a few per run, whatever its size.
    rare = max(1, min(5, n // 500))
    fresh = max(1, n - bad - 2 * pairs - repeats - 3 * rare)
    kinds = ["fresh"] * fresh + ["repeat"] * repeats + ["supplied", "reuse"] * pairs
    kinds += ["bad"] * bad + ["oversize", "poison-deferred", "poison-command"] * rare
    kinds = kinds[:n] if len(kinds) > n else kinds
    rng.shuffle(kinds)
    size = max(1, -(-len(kinds) // bursts))
    plan: list[list[PlannedRecord]] = []
    earlier: list[dict[str, Any]] = []
    supplied: list[dict[str, Any]] = []
    counter = 0
    for start in range(0, len(kinds), size):
        burst: list[PlannedRecord] = []
        current: list[dict[str, Any]] = []
        for kind in kinds[start : start + size]:
            counter += 1
            if kind == "bad":
                raw = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
                burst.append(PlannedRecord("bad", raw=raw))
                continue
            if kind == "oversize":
                length = MAX_RECORD_BYTES + rng.randrange(1, 20_000)
                burst.append(PlannedRecord("oversize", raw=rng.randbytes(length)))
                continue
            if kind == "poison-command":
                raw = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
                burst.append(PlannedRecord(kind, raw=raw))
                continue
            if kind == "poison-deferred":
                poison = _fresh_intent(rng, seed, counter)
                poison["source_event_id"] += "-poison"
                burst.append(PlannedRecord(kind, intent=poison))
                continue
            if kind == "reuse" and supplied:
                original = supplied.pop(rng.randrange(len(supplied)))
                changed = {**original, "text_body": f"Regenerated body {counter}."}
                burst.append(PlannedRecord("reuse", intent=changed))
                continue
            if kind == "repeat" and (earlier or current):
                pool = current if current and (rng.random() < 0.5 or not earlier) else earlier
                copy = dict(rng.choice(pool))
                if rng.random() < 0.3:
                    copy["to"] = [addr.upper() for addr in copy["to"]]
                burst.append(PlannedRecord("repeat", intent=copy))
                continue
            intent = _fresh_intent(rng, seed, counter)
            if kind in ("supplied", "reuse"):
                # A reuse with no supplied key left to reuse becomes a supplied original.
                intent["idempotency_key"] = f"order-{seed}-{counter}"
                supplied.append(intent)
                kind = "supplied"
            current.append(intent)
            burst.append(PlannedRecord(kind if kind != "repeat" else "fresh", intent=intent))
        earlier.extend(current)
        plan.append(burst)
    return plan


#: The provider calls faults hit: both sends, and the draft create.
CALLS = ["send", "createMessage"]


def burst_faults(rng: random.Random) -> list[dict[str, Any]]:
    """The emulator's fault rules for one burst: each kind present with modest odds."""
    candidates: list[dict[str, Any]] = [
        {
            "kind": "latency",
            "distribution": "uniform",
            "low_ms": 50,
            "high_ms": 1500,
            "probability": 0.05,
        },
        # Sends and draft creates (draft-send mode; sendmail never creates).
        {"kind": "throttle", "retry_after": 1, "operations": CALLS, "probability": 0.01},
        {
            "kind": "unavailable",
            "operations": CALLS,
            "probability": 0.01,
            "deliver": rng.random() < 0.5,
        },
        {
            "kind": "gateway_timeout",
            "operations": CALLS,
            "probability": 0.01,
            "deliver": rng.random() < 0.5,
        },
        {"kind": "reset", "operations": CALLS, "probability": 0.01},
        {
            "kind": "timeout",
            "operations": CALLS,
            "hang_ms": READ_TIMEOUT_S * 2000,
            "probability": 0.01,
        },
        {"kind": "duplicate", "probability": 0.01},
        {"kind": "visibility_delay", "delay_ms": 1500, "probability": 0.05},
    ]
    return [f for f in candidates if rng.random() < 0.6]


# --------------------------------------------------------------------------- workers


@dataclass
class ChaosWorker:
    """One worker slot: its own data dir and log; restarted in place after a kill."""

    slot: int
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    incarnation: int = 0
    # Set when the harness killed/stopped it on purpose, so an exit is not a crash.
    expected_exit: bool = False
    removed: bool = False
    # SENDONCE_CRASH_AT of the running incarnation ("" when not armed), and when the
    # harness stops waiting for it to die there.
    crash_at: str = ""
    crash_deadline: float = 0.0
    # SENDONCE_PAUSE_AT of the running incarnation ("" when not armed or once it
    # stopped there), when the harness stops waiting for it, and how long it stays
    # stopped.
    pause_at: str = ""
    pause_deadline: float = 0.0
    pause_s: float = 0.0
    # When the harness continues the stopped worker (SIGCONT); 0.0 while it runs.
    resume_at: float = 0.0

    @property
    def busy(self) -> bool:
        """Armed at a crash or pause point, or stopped: a kill or another fault would
        forfeit what is under way."""
        return bool(self.crash_at or self.pause_at or self.resume_at)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""


class Cluster:
    """The broker, the emulator and the worker processes of one run."""

    def __init__(
        self,
        root: Path,
        seed: int,
        progress: Progress,
        deadline_policy: str = "review",
        brokers: int = 1,
        graph_mode: str = "sendmail",
    ) -> None:
        from sendonce.dev.kafka import LocalKafka, cluster_replication
        from sendonce.emulator import GraphEmulator
        from sendonce.kafka.topics import create_topics
        from sendonce.settings import Settings

        self.root = root
        self.progress = progress
        self.deadline_policy = deadline_policy
        self.graph_mode = graph_mode
        # Three JVMs share the machine with the workers: smaller heaps each.
        heap = "1g" if brokers == 1 else "512m"
        self.kafka = LocalKafka(root / "kafka", heap=heap, brokers=brokers)
        # Generous: the first run on a machine may resolve the broker jars.
        self.bootstrap = self.kafka.start(timeout=180)
        # The workers lift their per-minute cap (SENDONCE_GRAPH_SENDS_PER_MINUTE=0) to
        # push the torture's volume through a few mailboxes: the emulator must not
        # enforce Exchange's 30/min either, or every run would end in 429s.
        self.emulator = GraphEmulator(seed=seed, ca_dir=root / "graph-ca", sends_per_minute=0)
        self.emulator_thread = self.emulator.run_in_thread()
        tag = uuid.uuid4().hex[:8]
        self.settings = Settings(
            bootstrap_servers=self.bootstrap,
            app_id=f"sendonce-chaos-{tag}",
            topic_prefix=f"chaos{tag}.",
            partitions=PARTITIONS,
            data_dir=root / "workers",
            outbox_dir=root / "outbox",
        )
        if brokers > 1:
            replicas, min_isr = cluster_replication(brokers)
            self.settings = self.settings.with_overrides(
                replication_factor=replicas, min_insync_replicas=min_isr
            )
        create_topics(self.settings)
        self.workers: list[ChaosWorker] = []
        self.unexpected_exits = 0
        self.crash_points_fired: Counter[str] = Counter()
        self.pause_points_fired: Counter[str] = Counter()
        self.pauses = 0

    def env(self, worker: ChaosWorker) -> dict[str, str]:
        s = self.settings
        # Several workers on this host: the metrics port would clash.
        env = {
            **os.environ,
            **s.to_env(),
            **self.emulator.worker_env(),
            "SENDONCE_METRICS_PORT": "0",
        }
        env.update(
            {
                "SENDONCE_DATA_DIR": str(worker.data_dir),
                "SENDONCE_WORKER_ID": f"w{worker.slot}.{worker.incarnation}",
                "SENDONCE_LOG_LEVEL": "info",
                "SENDONCE_GRAPH_SENDS_PER_MINUTE": "0",
                "SENDONCE_GRAPH_READ_TIMEOUT_S": str(READ_TIMEOUT_S),
                "SENDONCE_GRAPH_MODE": self.graph_mode,
                "SENDONCE_RECONCILE_DRAFT_RESEND_GRACE_S": str(DRAFT_RESEND_GRACE_S),
                # A SIGKILLed worker's partitions move after 8 s, not after 30 s.
                "SENDONCE_SESSION_TIMEOUT_S": f"{SESSION_TIMEOUT_S:g}",
                "SENDONCE_RECONCILE_GRACE_S": "1",
                "SENDONCE_RECONCILE_INTERVAL_S": "1",
                "SENDONCE_RECONCILE_DEADLINE_S": str(RECONCILE_DEADLINE_S),
                "SENDONCE_RECONCILE_ON_DEADLINE": self.deadline_policy,
                "SENDONCE_RECONCILE_TICK_S": "0.5",
                "SENDONCE_MAX_RECORD_BYTES": str(MAX_RECORD_BYTES),
                # Always set, so a SENDONCE_CRASH_AT or SENDONCE_PAUSE_AT in the
                # harness's own environment cannot arm every worker.
                "SENDONCE_CRASH_AT": worker.crash_at,
                "SENDONCE_PAUSE_AT": worker.pause_at,
            }
        )
        return env

    def add_worker(self) -> ChaosWorker:
        slot = len(self.workers)
        worker = ChaosWorker(slot, self.root / f"worker-{slot}", self.root / f"worker-{slot}.log")
        self.workers.append(worker)
        self.start(worker)
        return worker

    def start(
        self, worker: ChaosWorker, crash_at: str = "", pause_at: str = "", pause_s: float = 0.0
    ) -> None:
        """Start the worker's next incarnation, armed with ``crash_at`` if given, or with
        ``pause_at`` (stopped there for ``pause_s`` seconds)."""
        worker.incarnation += 1
        worker.expected_exit = False
        worker.crash_at = crash_at
        worker.crash_deadline = time.monotonic() + CRASH_WAIT_S if crash_at else 0.0
        worker.pause_at = pause_at
        worker.pause_deadline = time.monotonic() + PAUSE_WAIT_S if pause_at else 0.0
        worker.pause_s = pause_s
        worker.resume_at = 0.0
        armed = f" (SENDONCE_CRASH_AT={crash_at})" if crash_at else ""
        armed += f" (SENDONCE_PAUSE_AT={pause_at})" if pause_at else ""
        with open(worker.log_path, "ab") as log:
            log.write(f"\n==== chaos: start incarnation {worker.incarnation}{armed}\n".encode())
            worker.process = subprocess.Popen(
                [sys.executable, "-m", "sendonce.cli", "worker"],
                env=self.env(worker),
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def kill(self, worker: ChaosWorker) -> None:
        """SIGKILL: no shutdown, no flush, no commit."""
        assert worker.process is not None
        worker.expected_exit = True
        # Its death is the harness's doing now, not the crash or pause point's. A
        # stopped process dies of SIGKILL too.
        worker.crash_at = ""
        worker.pause_at = ""
        worker.resume_at = 0.0
        with contextlib.suppress(ProcessLookupError):
            worker.process.send_signal(signal.SIGKILL)
        worker.process.wait(30)
        with open(worker.log_path, "ab") as log:
            log.write(b"\n==== chaos: SIGKILL\n")

    def stop(self, worker: ChaosWorker, timeout: float = 30) -> None:
        """SIGTERM (a clean leave), SIGKILL if it does not exit in time; a stopped worker
        is continued for it (``stop_process``)."""
        worker.expected_exit = True
        worker.crash_at = ""
        worker.pause_at = ""
        worker.resume_at = 0.0
        if worker.process is not None:
            stop_process(worker.process, timeout)

    def pause(self, worker: ChaosWorker, seconds: float) -> None:
        """SIGSTOP the worker now; :meth:`check_workers` continues it ``seconds`` later."""
        assert worker.process is not None
        worker.process.send_signal(signal.SIGSTOP)
        worker.resume_at = time.monotonic() + seconds
        # An armed worker gets no nearer its point while stopped.
        if worker.crash_at:
            worker.crash_deadline += seconds
        self.pauses += 1
        with open(worker.log_path, "ab") as log:
            log.write(f"\n==== chaos: SIGSTOP for {seconds:.1f}s\n".encode())

    def stopped_workers(self) -> list[ChaosWorker]:
        """Workers the harness keeps stopped right now (a pause not over yet)."""
        return [w for w in self.workers if w.resume_at and not w.removed]

    def _resume(self, worker: ChaosWorker) -> None:
        assert worker.process is not None
        worker.resume_at = 0.0
        with contextlib.suppress(ProcessLookupError):
            worker.process.send_signal(signal.SIGCONT)
        with open(worker.log_path, "ab") as log:
            log.write(b"\n==== chaos: SIGCONT\n")
        self.progress(f"SIGCONT worker {worker.slot}: it runs again, evicted from its group")

    def check_workers(self) -> None:
        """Restart a worker that died on its own, and count it: that is a finding.

        An armed worker that died of SIGKILL reached its crash point; one that has
        not reached it in time is killed and restarted like after a plain kill.
        Either way it comes back unarmed. A worker armed with a pause point that
        stopped itself there stays stopped for its pause, like one the harness
        stopped; then it is continued (SIGCONT).
        """
        now = time.monotonic()
        for w in self.workers:
            if w.resume_at and not w.removed and now >= w.resume_at:
                self._resume(w)
            if w.crash_at and not w.removed:
                self._check_armed(w)
            if w.pause_at and not w.removed:
                self._check_pause_armed(w)
            if w.removed or w.alive() or w.expected_exit:
                continue
            code = w.process.returncode if w.process is not None else None
            self.unexpected_exits += 1
            self.progress(f"!! worker {w.slot} exited by itself (code {code}); restarting")
            self.progress(w.log_tail(1500))
            self.start(w)

    def _check_armed(self, w: ChaosWorker) -> None:
        point = w.crash_at.partition(":")[0]
        if w.alive():
            if time.monotonic() < w.crash_deadline:
                return
            self.progress(
                f"worker {w.slot} did not reach {w.crash_at} within {CRASH_WAIT_S:.0f}s; "
                "plain SIGKILL and restart"
            )
            self.kill(w)
            self.start(w)
            return
        assert w.process is not None
        if w.process.returncode != -signal.SIGKILL:
            # Died some other way: check_workers reports it as unexpected.
            w.crash_at = ""
            return
        self.crash_points_fired[point] += 1
        # The last such line: the tail may still hold an earlier incarnation's.
        fired = next(
            (
                line
                for line in reversed(w.log_tail(4000).splitlines())
                if "crash point" in line and "reached" in line
            ),
            "",
        )
        self.progress(
            f"worker {w.slot} killed itself at {w.crash_at} ({fired.strip() or 'no log line'}); "
            "restarting it unarmed"
        )
        with open(w.log_path, "ab") as log:
            log.write(f"\n==== chaos: died at crash point {w.crash_at}\n".encode())
        self.start(w)

    def _check_pause_armed(self, w: ChaosWorker) -> None:
        assert w.process is not None
        if not w.alive():
            # Died instead of stopping: check_workers reports it as unexpected.
            w.pause_at = ""
            return
        if process_state(w.process.pid) == "T":
            point = w.pause_at.partition(":")[0]
            self.pause_points_fired[point] += 1
            self.pauses += 1
            # The last such line of this incarnation: it flushed it before stopping.
            tail = w.log_tail(8000).rpartition("==== chaos: start incarnation")[2]
            fired = next(
                (
                    line
                    for line in reversed(tail.splitlines())
                    if "pause point" in line and "reached" in line
                ),
                "",
            )
            self.progress(
                f"worker {w.slot} stopped itself at {w.pause_at} "
                f"({fired.strip() or 'no log line'}); SIGCONT in {w.pause_s:.1f}s"
            )
            with open(w.log_path, "ab") as log:
                log.write(f"\n==== chaos: stopped at pause point {w.pause_at}\n".encode())
            w.pause_at = ""
            w.resume_at = time.monotonic() + w.pause_s
            return
        if time.monotonic() < w.pause_deadline:
            return
        self.progress(
            f"worker {w.slot} did not reach {w.pause_at} within {PAUSE_WAIT_S:.0f}s; "
            "SIGKILL and restart unarmed"
        )
        self.kill(w)
        self.start(w)

    def kill_ledger_leader(self, rng: random.Random) -> tuple[int, int]:
        """SIGKILL the broker leading a random ledger changelog partition.

        Returns (partition, node id) of the victim; :meth:`restart_node` brings it back.
        """
        partition = rng.randrange(self.settings.partitions)
        leader = self.kafka.leader_of(self.settings.ledger_changelog_topic, partition)
        if leader < 0:
            # Leaderless right now (a previous victim's partitions still moving): any
            # node will do, it leads other ledger partitions.
            leader = rng.choice(self.kafka.node_ids)
        self.kafka.kill_node(leader)
        return partition, leader

    def restart_node(self, node_id: int) -> None:
        """Start a killed broker again; returns once it is a live broker."""
        self.kafka.start_node(node_id, timeout=120)

    def close(self) -> None:
        for w in self.workers:
            with contextlib.suppress(Exception):
                self.stop(w, timeout=15)
        with contextlib.suppress(Exception):
            self.emulator_thread.stop()
        with contextlib.suppress(Exception):
            self.kafka.stop()


# --------------------------------------------------------------------------- the run


@dataclass
class _Event:
    at: float
    # burst | kill | restart | crash | add | remove | broker | leader-kill |
    # leader-restart | pause | pause-point
    action: str
    arg: int = 0
    # For ``crash``: the SENDONCE_CRASH_AT the victim is restarted with.
    crash_at: str = ""
    # For ``pause-point``: the SENDONCE_PAUSE_AT the victim is restarted with; for it
    # and ``pause``: how long the victim stays stopped.
    pause_at: str = ""
    pause_s: float = 0.0
    # How often this event was put off already (a pause with no worker to stop).
    retries: int = 0


def retry_later(event: _Event) -> _Event | None:
    """The same pause a little later, when it found no worker to stop; None past the bound.

    With every live worker armed at a point or stopped already, a pause skipped for
    good would leave the run short of the pauses asked for.
    """
    if event.retries >= PAUSE_RETRIES:
        return None
    return dataclasses.replace(event, at=event.at + PAUSE_RETRY_S, retries=event.retries + 1)


def _is_crash_kill(index: int) -> bool:
    # The first three kills cover every crash point; later ones alternate with
    # plain kills.
    return index < 3 or index % 2 == 0


def _is_point_pause(index: int) -> bool:
    # Pauses alternate: at a pause point, then at a random moment.
    return index % 2 == 0


def _schedule(
    rng: random.Random,
    bursts: int,
    duration: float,
    kills: int,
    rebalances: int,
    broker_restarts: int,
    crash_points: bool = True,
    leader_kills: int = 0,
    pauses: int = 0,
) -> list[_Event]:
    from sendonce.faults import CRASH_POINTS, PAUSE_POINTS

    gap = duration / bursts
    events = [_Event(i * gap, "burst", i) for i in range(bursts)]
    points = rng.sample(CRASH_POINTS, len(CRASH_POINTS))
    crashes = 0
    # Right after a burst the workers are mid-batch: sends in flight, PENDING acked,
    # SENT not yet written, offsets not committed. That is where a kill hurts.
    kill_times = sorted(
        rng.randrange(bursts) * gap + rng.uniform(0.05, min(gap, 3.0)) for _ in range(kills)
    )
    # The earliest kills arm the crash points: an armed worker needs traffic (and a
    # rejoin) before it reaches its point, and a later kill must not pre-empt it.
    for index, at in enumerate(kill_times):
        if crash_points and _is_crash_kill(index):
            # The restart into the armed incarnation is itself a SIGKILL at this
            # moment, so crash-point kills keep the random kill's coverage too.
            n = rng.randint(1, CRASH_MAX_OCCURRENCE)
            events.append(_Event(at, "crash", crash_at=f"{points[crashes % len(points)]}:{n}"))
            crashes += 1
            continue
        events.append(_Event(at, "kill"))
        events.append(_Event(at + rng.uniform(0.5, 3.0), "restart"))
    for _ in range(rebalances):
        at = rng.uniform(0.1, duration * 0.6)
        events.append(_Event(at, "add"))
        events.append(_Event(rng.uniform(at + 2, duration), "remove"))
    for _ in range(broker_restarts):
        events.append(_Event(rng.uniform(duration * 0.2, duration * 0.8), "broker"))
    # Drawn last, so a run without leader kills keeps the schedule its seed always made.
    for _ in range(leader_kills):
        at = rng.uniform(duration * 0.1, duration * 0.8)
        events.append(_Event(at, "leader-kill"))
        events.append(_Event(at + rng.uniform(2.0, 5.0), "leader-restart"))
    # Drawn after everything else, and only when asked for, for the same reason.
    if pauses:
        pause_points = rng.sample(PAUSE_POINTS, len(PAUSE_POINTS))
        armed = 0
        for index in range(pauses):
            # Like a kill, right after a burst: mid-batch is where a zombie hurts.
            at = rng.randrange(bursts) * gap + rng.uniform(0.05, min(gap, 3.0))
            pause_s = rng.uniform(PAUSE_MIN_S, PAUSE_MAX_S)
            if _is_point_pause(index):
                n = rng.randint(1, PAUSE_MAX_OCCURRENCE)
                point = pause_points[armed % len(pause_points)]
                events.append(_Event(at, "pause-point", pause_at=f"{point}:{n}", pause_s=pause_s))
                armed += 1
            else:
                events.append(_Event(at, "pause", pause_s=pause_s))
    events.sort(key=lambda e: e.at)
    return events


def run_chaos(
    intents: int,
    workers: int,
    seed: int,
    *,
    kills: int = 3,
    rebalances: int = 1,
    broker_restarts: int = 0,
    duration: float = 60.0,
    drain_timeout: float = 300.0,
    root: Path | None = None,
    keep: bool = False,
    progress: Progress = _stderr,
    crash_points: bool = True,
    deadline_policy: str | None = None,
    brokers: int = 1,
    leader_kills: int = 0,
    pauses: int = 0,
    graph_mode: str = "sendmail",
) -> ChaosReport:
    """Run one seeded torture run against the real system and check it.

    ``crash_points=False`` makes every kill a plain SIGKILL at a random moment.
    ``brokers`` > 1 runs a local KRaft cluster (replication factor 3 and min ISR 2 at
    three nodes); ``leader_kills`` SIGKILLs the leader of a random ledger changelog
    partition that many times and restarts it a few seconds later.
    ``pauses`` SIGSTOPs a worker that many times for longer than the session timeout
    and continues it: every other one at a random moment, the others at a pause point
    (``SENDONCE_PAUSE_AT``, the points in rotation).
    ``deadline_policy`` (``review`` or ``resend``) is the workers'
    ``SENDONCE_RECONCILE_ON_DEADLINE``; by default the seed picks one.
    ``graph_mode`` is the workers' ``SENDONCE_GRAPH_MODE`` (faults hit draft creates
    too; the same seed makes the same run in either mode).
    """
    if graph_mode not in GRAPH_MODES:
        raise ValueError(f"graph_mode must be one of {GRAPH_MODES}, not {graph_mode!r}")
    if leader_kills and brokers < 2:
        raise ValueError("leader kills need a cluster: brokers >= 2")
    started = time.monotonic()
    own_root = root is None
    root = Path(tempfile.mkdtemp(prefix=f"sendonce-chaos-{seed}-")) if root is None else root
    root.mkdir(parents=True, exist_ok=True)
    progress(f"chaos: seed={seed} root={root}")
    rng = random.Random(seed)
    bursts = max(6, min(60, intents // 100), kills + 2)
    plan = plan_workload(intents, seed, bursts)
    events = _schedule(
        rng,
        len(plan),
        duration,
        kills,
        rebalances,
        broker_restarts,
        crash_points,
        leader_kills,
        pauses,
    )
    timetable = [
        f"t={e.at:.1f}s {e.action}{' ' + e.crash_at if e.crash_at else ''}"
        f"{' ' + e.pause_at if e.pause_at else ''}"
        f"{f' {e.pause_s:.1f}s' if e.pause_s else ''}"
        for e in events
        if e.action
        in ("kill", "crash", "add", "remove", "broker", "leader-kill", "pause", "pause-point")
    ]
    progress(f"chaos: schedule {'; '.join(timetable)}")
    if deadline_policy is None:
        # Its own stream: the workload and the schedule stay as the seed made them.
        deadline_policy = random.Random(f"policy-{seed}").choice(("review", "resend"))
    progress(f"chaos: reconcile deadline policy {deadline_policy}")
    report = ChaosReport(
        seed=seed,
        root=str(root),
        deadline_policy=deadline_policy,
        brokers=brokers,
        pauses_planned=pauses,
        graph_mode=graph_mode,
    )
    cluster = Cluster(root, seed, progress, deadline_policy, brokers, graph_mode)
    try:
        for _ in range(workers):
            cluster.add_worker()
        internal = _InternalTopics(cluster, report)
        operator = _Operator(cluster, report, seed)
        _execute(cluster, plan, events, rng, report, internal, operator)
        cluster.emulator.clear_faults()
        # Settle any armed worker that already died at its point, so it is counted.
        cluster.check_workers()
        for w in cluster.workers:
            if not w.removed and not w.alive():
                cluster.start(w)
        try:
            _check(cluster, plan, report, drain_timeout, internal, operator)
        finally:
            operator.close()
            internal.close()
    finally:
        report.unexpected_worker_exits = cluster.unexpected_exits
        report.crash_points = dict(cluster.crash_points_fired)
        report.pauses = cluster.pauses
        report.pause_points = dict(cluster.pause_points_fired)
        report.elapsed_s = time.monotonic() - started
        cluster.close()
        if own_root and not keep and report.ok:
            shutil.rmtree(root, ignore_errors=True)
    return report


def _wait_until(cluster: Cluster, at: float, t0: float) -> None:
    """Pace the schedule (a timetable, not a synchronisation), watching for workers
    that die on their own meanwhile."""
    while True:
        left = t0 + at - time.monotonic()
        cluster.check_workers()
        if left <= 0:
            return
        time.sleep(min(left, 0.5))


class _InternalTopics:
    """Publishes the poison records of the workload on the worker's internal topics."""

    def __init__(self, cluster: Cluster, report: ChaosReport) -> None:
        from confluent_kafka import Producer

        from sendonce.kafka.clients import producer_config
        from sendonce.schemas.codec import default_codec

        self.settings = cluster.settings
        self.report = report
        self.codec = default_codec()
        self.producer = Producer(producer_config(cluster.bootstrap))
        #: Where each poison record landed, and the keys of the deferred ones.
        self.coords: set[tuple[str, int, int]] = set()
        self.deferred_keys: set[str] = set()
        self.errors: list[str] = []

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.errors.append(str(err))
        else:
            self.coords.add((str(msg.topic()), int(msg.partition()), int(msg.offset())))

    def publish(self, record: PlannedRecord) -> None:
        from sendonce.keys import complete_intent, idempotency_key_for
        from sendonce.streams.processor import ORIGIN_HEADER, partition_for_key

        topics = self.settings.topics
        if record.kind == "poison-deferred":
            assert record.intent is not None
            full = complete_intent(record.intent)
            key = idempotency_key_for(full).value
            self.deferred_keys.add(key)
            # A valid intent on its key's partition whose lineage header is not
            # ``topic:partition:offset``: dead-lettered as misrouted, never sent.
            self.producer.produce(
                topics.intents_deferred,
                key=key.encode(),
                value=self.codec.encode("EmailIntent", full),
                partition=partition_for_key(key.encode(), self.settings.partitions),
                headers=[(ORIGIN_HEADER, b"not a topic:partition:offset")],
                on_delivery=self._delivered,
            )
        else:
            key = f"poison-{self.report.intents}"
            self.producer.produce(
                topics.commands,
                key=key.encode(),
                value=record.raw,
                partition=partition_for_key(key.encode(), self.settings.partitions),
                on_delivery=self._delivered,
            )
        self.report.poison += 1

    def flush(self) -> None:
        left = self.producer.flush(120)
        if left or self.errors:
            raise RuntimeError(f"poison records not acknowledged: {left} left, {self.errors[:1]}")

    def close(self) -> None:
        # Released before the broker stops: an idle producer would log its refused
        # reconnects on stderr until garbage-collected.
        self.flush()
        del self.producer


class _Operator:
    """Resolves AMBIGUOUS keys the emulator never delivered with ``resend``, as a person
    would after checking with the recipient."""

    def __init__(self, cluster: Cluster, report: ChaosReport, seed: int) -> None:
        from sendonce.ops.results import ResultWatcher

        self.rng = random.Random(f"operator-{seed}")
        self.next_act = 0.0
        self.cluster = cluster
        self.report = report
        topics = cluster.settings.topics
        self.watcher = ResultWatcher(
            cluster.bootstrap, [topics.results_sent, topics.results_ambiguous]
        )
        self.seen = 0
        self.ambiguous_since: dict[str, float] = {}
        self.sent: set[str] = set()
        self.resent: set[str] = set()

    def act(self, at_most: int = 3) -> None:
        """Resend up to ``at_most`` AMBIGUOUS keys that are old enough and undelivered."""
        from sendonce.ops.review import resolve

        now = time.monotonic()
        if now < self.next_act:
            return
        self.next_act = now + 2.0
        self.watcher.poll(timeout=0.2)
        for r in self.watcher.records[self.seen :]:
            key = str(r.value.get("idempotency_key"))
            if r.value.get("outcome") == "AMBIGUOUS":
                self.ambiguous_since.setdefault(key, now)
            elif r.value.get("outcome") == "SENT":
                self.sent.add(key)
        self.seen = len(self.watcher.records)
        due = sorted(
            key
            for key, since in self.ambiguous_since.items()
            if key not in self.sent and key not in self.resent and now - since >= RESEND_AFTER_S
        )
        for key in self.rng.sample(due, min(at_most, len(due))):
            if self.cluster.emulator.deliveries(key=key):
                continue  # it did go out: an operator would mark it sent, not resend
            self.resent.add(key)
            outcome = resolve(
                self.cluster.settings,
                key,
                "resend",
                "chaos: the recipient never got it",
                "chaos@harness",
                wait_s=0,
            )
            if outcome.published:
                self.report.operator_resends += 1
                self.cluster.progress(f"operator: resend {key}")

    def close(self) -> None:
        self.watcher.close()


def _execute(
    cluster: Cluster,
    plan: list[list[PlannedRecord]],
    events: list[_Event],
    rng: random.Random,
    report: ChaosReport,
    internal: _InternalTopics,
    operator: _Operator,
) -> None:
    from sendonce.ops.publish import IntentPublisher

    publisher = IntentPublisher(cluster.bootstrap, cluster.settings.topics.intents)
    killed: list[ChaosWorker] = []
    # Brokers killed as a ledger partition's leader, awaiting their restart.
    killed_nodes: list[int] = []
    t0 = time.monotonic()
    queue = list(events)
    try:
        while queue:
            event = queue.pop(0)
            _wait_until(cluster, event.at, t0)
            live = [w for w in cluster.workers if not w.removed and w.alive()]
            if event.action == "burst":
                faults = burst_faults(rng)
                cluster.emulator.set_faults(faults)
                for record in plan[event.arg]:
                    if record.kind.startswith("poison-"):
                        internal.publish(record)
                    elif record.intent is not None:
                        publisher.publish(record.intent)
                    else:
                        publisher.publish_raw(f"garbage-{report.intents}".encode(), record.raw)
                    report.intents += 1
                publisher.flush(120)
                internal.flush()
                progress_line = (
                    f"burst {event.arg + 1}/{len(plan)}: {len(plan[event.arg])} records, "
                    f"faults={[f['kind'] for f in faults]}"
                )
                cluster.progress(progress_line)
                operator.act()
            elif event.action == "kill" and live:
                # Spare armed workers where possible: killing one forfeits its crash point.
                victim = rng.choice([w for w in live if not w.busy] or live)
                cluster.kill(victim)
                killed.append(victim)
                report.kills += 1
                cluster.progress(f"SIGKILL worker {victim.slot} at t={event.at:.1f}s")
            elif event.action == "crash" and live:
                # An armed worker cannot be armed again; with none left, a plain kill
                # (restarted at once) keeps the kill count.
                unarmed = [w for w in live if not w.busy]
                victim = rng.choice(unarmed or live)
                cluster.kill(victim)
                report.kills += 1
                if unarmed:
                    cluster.start(victim, crash_at=event.crash_at)
                    cluster.progress(
                        f"SIGKILL worker {victim.slot} at t={event.at:.1f}s; restarted with "
                        f"SENDONCE_CRASH_AT={event.crash_at}"
                    )
                else:
                    cluster.start(victim)
                    cluster.progress(
                        f"SIGKILL worker {victim.slot} at t={event.at:.1f}s (every live "
                        "worker armed: plain kill)"
                    )
            elif event.action in ("pause", "pause-point"):
                if not (live and _pause(cluster, event, rng, live)):
                    later = retry_later(event)
                    if later is not None:
                        bisect.insort(queue, later, key=lambda e: e.at)
            elif event.action == "restart" and killed:
                w = killed.pop(0)
                if not w.removed and not w.alive():
                    cluster.start(w)
                    cluster.progress(f"restarted worker {w.slot}")
            elif event.action == "add":
                w = cluster.add_worker()
                report.rebalances += 1
                cluster.progress(f"added worker {w.slot} (rebalance)")
            elif event.action == "remove":
                # Never remove the last worker standing: someone must drain the topic.
                candidates = [w for w in live if w not in killed]
                if len(candidates) > 1:
                    w = rng.choice([c for c in candidates if not c.busy] or candidates)
                    w.removed = True
                    cluster.stop(w)
                    report.rebalances += 1
                    cluster.progress(f"removed worker {w.slot} (rebalance)")
            elif event.action == "broker":
                cluster.progress("restarting the broker")
                cluster.kafka.restart(timeout=120)
                report.broker_restarts += 1
                cluster.progress("broker back")
            elif event.action == "leader-kill":
                partition, node = cluster.kill_ledger_leader(rng)
                killed_nodes.append(node)
                report.leader_kills += 1
                cluster.progress(
                    f"SIGKILL broker {node}, leader of ledger changelog partition "
                    f"{partition}, at t={event.at:.1f}s"
                )
            elif event.action == "leader-restart" and killed_nodes:
                node = killed_nodes.pop(0)
                cluster.restart_node(node)
                cluster.progress(f"broker {node} back")
        # A victim whose restart was not due yet comes back before the drain.
        for node in killed_nodes:
            cluster.restart_node(node)
        publisher.flush(120)
        internal.flush()
    finally:
        with contextlib.suppress(Exception):
            publisher.close()


def _pause(cluster: Cluster, event: _Event, rng: random.Random, live: list[ChaosWorker]) -> bool:
    """Stop a worker that is neither armed nor stopped already; False if there is none.

    A pause from outside may also stop a worker armed at a crash point (it goes on
    towards its point afterwards); a pause point needs an unarmed victim.
    """
    idle = [w for w in live if not w.busy]
    if event.action == "pause" and not idle:
        idle = [w for w in live if not w.pause_at and not w.resume_at]
    if not idle:
        cluster.progress(
            f"every live worker armed or stopped at t={event.at:.1f}s: {event.action} put off"
        )
        return False
    victim = rng.choice(idle)
    if event.action == "pause":
        cluster.pause(victim, event.pause_s)
        cluster.progress(
            f"SIGSTOP worker {victim.slot} at t={event.at:.1f}s for {event.pause_s:.1f}s"
        )
        return True
    # Its current incarnation is mid-batch somewhere else: the armed one must reach
    # the point from the start of a send, so the victim is restarted.
    cluster.kill(victim)
    cluster.start(victim, pause_at=event.pause_at, pause_s=event.pause_s)
    cluster.progress(
        f"SIGKILL worker {victim.slot} at t={event.at:.1f}s; restarted with "
        f"SENDONCE_PAUSE_AT={event.pause_at} (stopped {event.pause_s:.1f}s there)"
    )
    return True


# --------------------------------------------------------------------------- checker


def _coords_of(value: dict[str, Any]) -> tuple[str, int, int] | None:
    if "result_id" in value:
        return (
            str(value["intent_topic"]),
            int(value["intent_partition"]),
            int(value["intent_offset"]),
        )
    if "source_topic" in value:
        return (
            str(value["source_topic"]),
            int(value["source_partition"]),
            int(value["source_offset"]),
        )
    return None


def _ambiguous_state(
    records: list[dict[str, Any]],
) -> tuple[set[str], set[str], set[str], set[str]]:
    """(ambiguous keys, keys with a SENT result, keys reconciled to SENT, keys FAILED).

    An ambiguous key is settled by SENT, or by FAILED (a draft proven unsent past the
    retry budget, an operator's cancel): only the rest are open.
    """
    ambiguous, sent, reconciled, failed = set(), set(), set(), set()
    for v in records:
        key = str(v.get("idempotency_key"))
        if v.get("outcome") == "AMBIGUOUS":
            ambiguous.add(key)
        elif v.get("outcome") == "FAILED":
            failed.add(key)
        elif v.get("outcome") == "SENT":
            sent.add(key)
            if v.get("reconciled"):
                reconciled.add(key)
    return ambiguous, sent, reconciled, failed


def _ambiguous_causes(cluster: Cluster, keys: list[str]) -> dict[str, int]:
    """How many of ``keys`` (open ambiguous) the ledger holds for each reason."""
    from sendonce.ops.history import TopicReader, ledger_entries

    if not keys:
        return {}
    with TopicReader(cluster.bootstrap) as reader:
        entries = ledger_entries(reader, cluster.settings, keys=keys)
    causes: Counter[str] = Counter()
    for key in keys:
        entry = entries.get(key)
        if entry is None:
            causes["no_entry"] += 1
        else:
            causes[f"{entry.status.value.lower()}:{entry.error_code or 'unknown'}"] += 1
    return dict(causes)


def _pending_keys(cluster: Cluster) -> list[str]:
    """Keys whose latest ledger entry is PENDING or DRAFTED (an attempt under way), from
    the changelog (what a new owner would recover)."""
    from sendonce.ops.history import TopicReader, ledger_entries
    from sendonce.streams.ledger import LedgerStatus

    attempting = (LedgerStatus.PENDING, LedgerStatus.DRAFTED)
    with TopicReader(cluster.bootstrap) as reader:
        return sorted(ledger_entries(reader, cluster.settings, status=attempting))


def _stranded_keys(cluster: Cluster) -> list[str]:
    """Keys still PENDING once in-flight work had :data:`STRANDED_WAIT_S` to end.

    A PENDING read at one instant may be an attempt under way (an operator's resend
    applied during the settle window, a due retry): its SENT follows within
    milliseconds. A stranded key stays PENDING however long one waits, so the check
    waits for the ledger to have none, up to the bound, and counts what is left.
    """
    deadline = time.monotonic() + STRANDED_WAIT_S
    pending = _pending_keys(cluster)
    while pending and time.monotonic() < deadline:
        cluster.check_workers()
        time.sleep(1.0)  # paces the changelog reads; the condition is re-read each time
        pending = _pending_keys(cluster)
    return pending


def _check(
    cluster: Cluster,
    plan: list[list[PlannedRecord]],
    report: ChaosReport,
    drain_timeout: float,
    internal: _InternalTopics,
    operator: _Operator,
) -> None:
    from sendonce.ops.results import ResultWatcher, read_topics

    topics = cluster.settings.topics
    intent_coords = {
        (r.topic, r.partition, r.offset)
        for r in read_topics(cluster.bootstrap, [topics.intents], timeout=60)
    }
    # The poison records on internal topics need their dead letters too: a drain
    # that ended without them would count a late dead letter as a missing one.
    expected = intent_coords | internal.coords
    watcher = ResultWatcher(cluster.bootstrap, [*topics.results(), topics.dlq])
    try:
        covered: set[tuple[str, int, int]] = set()
        seen = 0
        deadline = time.monotonic() + drain_timeout
        last_report = time.monotonic()
        # Drain: every intent record needs a result or a dead letter.
        while time.monotonic() < deadline:
            watcher.poll()
            for r in watcher.records[seen:]:
                c = _coords_of(r.value)
                if c is not None:
                    covered.add(c)
            seen = len(watcher.records)
            missing = expected - covered
            # A stopped worker runs again before the verdict: what the zombie does
            # once continued must be seen.
            if not missing and not cluster.stopped_workers():
                report.drained = True
                break
            cluster.check_workers()
            # The operator keeps working through the drain: resends are attempts too.
            operator.act()
            if time.monotonic() - last_report > 10:
                last_report = time.monotonic()
                cluster.progress(f"draining: {len(missing)} of {len(expected)} records open")
        # Settle: give ambiguous sends the reconcile deadline to be found or flagged,
        # and interrupted attempts (PENDING) their lookup.
        settle = time.monotonic() + RECONCILE_DEADLINE_S + 15
        next_ledger_read = 0.0
        pending: list[str] = []
        while report.drained and time.monotonic() < settle:
            if time.monotonic() >= next_ledger_read:
                pending = _pending_keys(cluster)
                next_ledger_read = time.monotonic() + 3
            ambiguous, sent, _, failed = _ambiguous_state([r.value for r in watcher.records])
            if not ambiguous - sent - failed and not pending and not cluster.stopped_workers():
                break
            watcher.poll()
            cluster.check_workers()
        # One last read so results written meanwhile count; bounded, since workers
        # still working off a backlog (a drain that timed out) keep writing.
        last_read = time.monotonic() + FINAL_READ_S
        while watcher.poll(1.0) and time.monotonic() < last_read:
            pass
        records = [r.value for r in watcher.records]
    finally:
        watcher.close()

    for v in records:
        c = _coords_of(v)
        if c is not None:
            covered.add(c)
    lost = sorted(intent_coords - covered)
    report.lost = len(lost)
    report.lost_records = lost[:50]
    # Not final and not listed for review (``review list`` shows AMBIGUOUS entries).
    stranded = _stranded_keys(cluster)
    report.stranded = len(stranded)
    report.stranded_keys = stranded[:50]
    report.poison_dead_lettered = len(internal.coords & covered)

    by_id: dict[str, dict[str, Any]] = {}
    outcomes: Counter[str] = Counter()
    for v in records:
        if "result_id" not in v:
            continue
        rid = str(v["result_id"])
        identity = (v["outcome"], v["idempotency_key"], _coords_of(v))
        if rid in by_id:
            first = by_id[rid]
            if (first["outcome"], first["idempotency_key"], _coords_of(first)) != identity:
                report.result_id_mismatches += 1
            continue
        by_id[rid] = v
        outcomes[str(v["outcome"])] += 1
    report.outcomes = dict(outcomes)
    report.conflicts = outcomes.get("CONFLICT", 0)
    report.expected_conflicts = sum(r.kind == "reuse" for b in plan for r in b)
    report.expected_dead_letters = sum(
        r.kind in ("bad", "oversize") or r.kind.startswith("poison-") for b in plan for r in b
    )
    report.dead_letters = len(
        {c for v in records if "result_id" not in v and (c := _coords_of(v)) is not None}
    )
    result_keys = {str(v["idempotency_key"]) for v in by_id.values()}
    report.keys = len(result_keys)

    deliveries = cluster.emulator.deliveries()
    per_key: defaultdict[str, int] = defaultdict(int)
    for d in deliveries:
        if d["transport_duplicate"]:
            report.transport_duplicates += 1
            continue
        if d["idempotency_key"] is None:
            report.keyless_deliveries += 1
            continue
        per_key[str(d["idempotency_key"])] += 1
    report.poison_delivered = len(internal.deferred_keys & set(per_key))
    twice = sorted(k for k, n in per_key.items() if n > 1)
    report.delivered_twice = len(twice)
    report.delivered_twice_keys = twice[:50]

    ambiguous, sent, reconciled, failed = _ambiguous_state(list(by_id.values()))
    open_keys = sorted(ambiguous - sent - failed)
    report.ambiguous_open = len(open_keys)
    report.open_ambiguous_keys = open_keys[:50]
    report.ambiguous_causes = _ambiguous_causes(cluster, open_keys)
    report.reconciled = len(reconciled)
    # Not verdicts, but worth a look: a SENT the provider never saw, and a delivery the
    # system still calls ambiguous after the reconcile deadline.
    report.sent_without_delivery = len(sent - set(per_key))
    report.delivered_but_open = len(set(open_keys) & set(per_key))


def _iter_lines(report: ChaosReport) -> Iterator[str]:
    yield report.summary()
    yield report.details()
    if report.delivered_twice_keys:
        yield f"delivered twice: {report.delivered_twice_keys}"
    if report.lost_records:
        yield f"lost (topic, partition, offset): {report.lost_records}"
    if report.stranded_keys:
        yield f"stranded (PENDING, not listed for review): {report.stranded_keys[:10]}"
    if report.open_ambiguous_keys:
        yield f"ambiguous open (review): {report.open_ambiguous_keys[:10]}"


# --------------------------------------------------------------------------- CLI


def add_cli(subparsers: Subparsers) -> None:
    """Register ``chaos`` on ``subparsers``; its ``func(args)`` returns the exit code."""
    p = subparsers.add_parser(
        "chaos",
        help="torture run: real broker, Graph emulator, workers, seeded kills and faults",
        description=(
            "Run the real system (own local broker, Graph emulator, worker processes) "
            "under a seeded schedule of SIGKILLs, pauses, rebalances, broker restarts and provider "
            "faults, then check: no key delivered twice, no intent lost, no key left "
            "PENDING, every poison record dead-lettered. Prints one "
            "summary line; exits 1 when the guarantee broke."
        ),
    )
    p.add_argument("--intents", type=int, default=2000, help="records to publish (2000)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (2)")
    p.add_argument("--seed", type=int, default=None, help="seed (default: random, printed)")
    p.add_argument("--kills", type=int, default=3, help="SIGKILLs of a worker (3)")
    p.add_argument("--rebalances", type=int, default=1, help="add+remove worker pairs (1)")
    p.add_argument(
        "--broker-restarts", type=int, default=0, help="broker restarts mid-run (default 0)"
    )
    p.add_argument(
        "--brokers",
        type=int,
        default=1,
        help="Kafka nodes (1); 3 runs a KRaft cluster, topics replication 3 and min ISR 2",
    )
    p.add_argument(
        "--leader-kills",
        type=int,
        default=0,
        help="SIGKILLs of the broker leading a ledger changelog partition, each restarted "
        "2-5 s later (default 0; needs --brokers 3)",
    )
    p.add_argument(
        "--pauses",
        type=int,
        default=0,
        help="SIGSTOPs of a worker for 12-15 s (beyond the 8 s session timeout), then "
        "SIGCONT; every other one at a pause point (SENDONCE_PAUSE_AT) (default 0)",
    )
    p.add_argument("--duration", type=float, default=60.0, help="seconds of bursts (60)")
    p.add_argument(
        "--drain-timeout", type=float, default=300.0, help="seconds to wait for results (300)"
    )
    p.add_argument(
        "--graph-mode",
        choices=GRAPH_MODES,
        default="sendmail",
        help="the workers' SENDONCE_GRAPH_MODE (sendmail); faults hit draft creates too",
    )
    p.add_argument("--root", type=Path, default=None, help="run directory (default: temp)")
    p.add_argument("--keep", action="store_true", help="keep the run directory and logs")
    p.add_argument(
        "--no-crash-points",
        dest="crash_points",
        action="store_false",
        help="plain SIGKILLs only (default: kills also restart workers with SENDONCE_CRASH_AT)",
    )
    p.add_argument(
        "--deadline-policy",
        choices=("review", "resend"),
        default=None,
        help="the workers' SENDONCE_RECONCILE_ON_DEADLINE (default: the seed picks one)",
    )
    p.set_defaults(func=_cmd_chaos)


def _cmd_chaos(args: argparse.Namespace) -> int:
    if args.leader_kills and args.brokers < 2:
        print("error: --leader-kills needs a cluster (--brokers 3)", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 2**31)
    report = run_chaos(
        args.intents,
        args.workers,
        seed,
        kills=args.kills,
        rebalances=args.rebalances,
        broker_restarts=args.broker_restarts,
        duration=args.duration,
        drain_timeout=args.drain_timeout,
        root=args.root,
        keep=args.keep,
        crash_points=args.crash_points,
        deadline_policy=args.deadline_policy,
        brokers=args.brokers,
        leader_kills=args.leader_kills,
        pauses=args.pauses,
        graph_mode=args.graph_mode,
    )
    for line in _iter_lines(report):
        print(line, flush=True)
    return 0 if report.ok else 1
