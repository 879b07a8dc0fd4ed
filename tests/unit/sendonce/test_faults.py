"""Crash and pause points (``SENDONCE_CRASH_AT``, ``SENDONCE_PAUSE_AT``): where they fire,
and that a restart sends nothing twice."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from sendonce.connectors.base import LookupResult, OutgoingEmail, SendOutcome
from sendonce.connectors.outbox import OutboxProvider
from sendonce.faults import (
    AFTER_ACCEPT,
    AFTER_PENDING,
    AFTER_SENT,
    CRASH_POINTS,
    PAUSE_POINTS,
    PENDING_PRODUCED,
    CrashPoints,
    PausePoints,
    parse_crash_spec,
    parse_pause_spec,
)
from sendonce.keys import complete_intent, idempotency_key_for
from sendonce.settings import Settings, SettingsError
from sendonce.streams.ledger import LedgerEntry, LedgerStatus
from sendonce.streams.processor import IntentProcessor
from sendonce.streams.testing import InMemoryPipeline


class Crashed(Exception):
    """Stands in for the SIGKILL: it unwinds the drive exactly where the kill lands."""


def crash() -> None:
    raise Crashed


# --------------------------------------------------------------------------- the spec


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_the_nth_occurrence_fires_and_no_other(point: str) -> None:
    kills: list[int] = []
    crash_points = CrashPoints(f"{point}:3", kill=lambda: kills.append(1))
    other = next(p for p in CRASH_POINTS if p != point)
    for _ in range(5):
        crash_points.reached(other)
    crash_points.reached(point)
    crash_points.reached(point)
    assert not kills
    crash_points.reached(point)
    assert kills == [1]
    crash_points.reached(point)
    assert kills == [1]


def test_firing_logs_one_warning_naming_the_point(caplog: pytest.LogCaptureFixture) -> None:
    crash_points = CrashPoints("after-sent:1", kill=crash)
    with pytest.raises(Crashed):
        crash_points.reached(AFTER_SENT)
    [record] = [r for r in caplog.records if r.name == "sendonce.faults"]
    assert record.levelname == "WARNING" and "after-sent" in record.getMessage()


def test_an_empty_spec_never_fires() -> None:
    crash_points = CrashPoints("", kill=crash)
    assert not crash_points.armed
    for point in CRASH_POINTS * 3:
        crash_points.reached(point)
    assert parse_crash_spec("  ") is None


@pytest.mark.parametrize(
    "spec",
    [
        "after-pending",
        "after-pending:",
        "after-pending:0",
        "after-pending:-1",
        "after-pending:x",
        "after-pending:²",
        "before-pending:1",
        "kill-after-accept:1",
        ":1",
    ],
)
def test_bad_specs_are_rejected(spec: str) -> None:
    with pytest.raises(ValueError, match="POINT:N"):
        CrashPoints(spec)
    with pytest.raises(SettingsError, match="SENDONCE_CRASH_AT"):
        Settings.from_env({"SENDONCE_CRASH_AT": spec})


def test_settings_read_and_round_trip_the_spec() -> None:
    s = Settings.from_env({"SENDONCE_CRASH_AT": "after-accept:2"})
    assert s.crash_at == "after-accept:2"
    assert Settings.from_env(s.to_env()).crash_at == "after-accept:2"
    assert Settings().crash_at == ""


def test_an_unknown_point_name_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown crash point"):
        CrashPoints("after-sent:1", kill=crash).reached("after-everything")


# --------------------------------------------------------------------------- pause points


@pytest.mark.parametrize("point", PAUSE_POINTS)
def test_a_pause_fires_at_the_nth_occurrence_and_no_other(point: str) -> None:
    stops: list[int] = []
    pause_points = PausePoints(f"{point}:2", stop=lambda: stops.append(1))
    other = next(p for p in PAUSE_POINTS if p != point)
    for _ in range(3):
        pause_points.reached(other)
    pause_points.reached(point)
    assert not stops
    pause_points.reached(point)
    assert stops == [1]
    pause_points.reached(point)
    assert stops == [1]


def test_a_pause_logs_one_warning_naming_the_point_and_sigstop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    PausePoints("pending-produced:1", stop=lambda: None).reached(PENDING_PRODUCED)
    [record] = [r for r in caplog.records if r.name == "sendonce.faults"]
    assert record.levelname == "WARNING"
    assert record.getMessage() == "pause point pending-produced reached (occurrence 1): SIGSTOP"


def test_pending_produced_is_a_pause_point_not_a_crash_point() -> None:
    assert parse_pause_spec("pending-produced:3") == (PENDING_PRODUCED, 3)
    with pytest.raises(ValueError, match="POINT:N"):
        parse_crash_spec("pending-produced:1")
    # Reaching it is harmless for an armed crash: the worker reports every point to both.
    kills: list[int] = []
    CrashPoints("after-pending:1", kill=lambda: kills.append(1)).reached(PENDING_PRODUCED)
    assert not kills


@pytest.mark.parametrize(
    "spec", ["pending-produced", "after-pending:0", "paused:1", "after-sent:x"]
)
def test_bad_pause_specs_are_rejected(spec: str) -> None:
    with pytest.raises(ValueError, match=r"pause point .* is not POINT:N"):
        PausePoints(spec)
    with pytest.raises(SettingsError, match="SENDONCE_PAUSE_AT"):
        Settings.from_env({"SENDONCE_PAUSE_AT": spec})


def test_settings_read_and_round_trip_the_pause_spec() -> None:
    s = Settings.from_env({"SENDONCE_PAUSE_AT": "pending-produced:2"})
    assert s.pause_at == "pending-produced:2"
    assert Settings.from_env(s.to_env()).pause_at == "pending-produced:2"
    assert Settings().pause_at == ""


# --------------------------------------------------------------------------- the worker


def intent(n: int) -> dict[str, Any]:
    return {
        "tenant_id": "acme",
        "source_event_id": f"evt-{n}",
        "action_type": "receipt",
        "sender": "orders@acme.example",
        "to": [f"user{n}@example.com"],
        "subject": f"Receipt {n}",
        "text_body": f"Thanks for order {n}.",
    }


def key_of(n: int) -> str:
    return idempotency_key_for(complete_intent(intent(n))).value


class CountingOutbox:
    """The outbox provider (definitive lookups), counting sends that reached it."""

    name = "outbox"

    def __init__(self, directory: Path) -> None:
        self.inner = OutboxProvider(directory)
        self.sends: list[str] = []

    async def send(self, outgoing: OutgoingEmail) -> SendOutcome:
        self.sends.append(outgoing.idempotency_key)
        return await self.inner.send(outgoing)

    async def lookup(self, idempotency_key: str, message_id: str, sender: str) -> LookupResult:
        return await self.inner.lookup(idempotency_key, message_id, sender)

    async def close(self) -> None:
        await self.inner.close()

    def delivered(self) -> int:
        return len(list(self.inner.directory.glob("*.eml")))


async def _no_sleep(_: float) -> None:
    return None


def worker(
    p: InMemoryPipeline,
    crash_points: CrashPoints | None = None,
    pause_points: PausePoints | None = None,
) -> IntentProcessor:
    """A worker process over the pipeline's durable state (ledger, topics, provider)."""
    return IntentProcessor(
        p.settings,
        p.store,
        p.provider,
        p.sink,
        p.codec,
        sleep=_no_sleep,
        fetcher=p.fetcher,
        crash_points=crash_points,
        pause_points=pause_points,
    )


def ledger_entry(p: InMemoryPipeline, n: int, partition: int) -> LedgerEntry | None:
    return p.store.get(key_of(n), partition)


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_each_point_fires_at_its_moment_and_a_restart_sends_nothing_twice(
    point: str, tmp_path: Path
) -> None:
    provider = CountingOutbox(tmp_path / "outbox")
    p = InMemoryPipeline(provider)
    record = p.intent_record(intent(1))
    crashing = worker(p, CrashPoints(f"{point}:1", kill=crash))

    with pytest.raises(Crashed):
        asyncio.run(crashing.process_batch([record]))

    entry = ledger_entry(p, 1, record.partition)
    assert entry is not None
    assert not p.results()  # no result emitted, so Kafka redelivers the record
    if point == AFTER_PENDING:
        assert entry.status is LedgerStatus.PENDING
        assert provider.sends == [] and provider.delivered() == 0
    elif point == AFTER_ACCEPT:
        assert entry.status is LedgerStatus.PENDING
        assert provider.sends == [entry.key] and provider.delivered() == 1
    else:
        assert point == AFTER_SENT
        assert entry.status is LedgerStatus.SENT
        assert provider.sends == [entry.key] and provider.delivered() == 1

    # The restarted worker gets the same record again: offsets were not committed.
    asyncio.run(worker(p).process_batch([record]))

    assert provider.delivered() == 1
    # Only the after-pending crash never reached the provider; its restart proves
    # that with a definitive lookup and makes the one send.
    assert len(provider.sends) == 1
    [result] = p.results()
    assert result["outcome"] == "SENT" and result["intent_offset"] == record.offset
    settled = ledger_entry(p, 1, record.partition)
    assert settled is not None and settled.status is LedgerStatus.SENT
    assert settled.reconciled == (point == AFTER_ACCEPT)


def test_the_nth_time_a_worker_reaches_a_point_is_the_one_that_kills_it(tmp_path: Path) -> None:
    provider = CountingOutbox(tmp_path / "outbox")
    p = InMemoryPipeline(provider)
    crashing = worker(p, CrashPoints("after-sent:2", kill=crash))
    first, second = p.intent_record(intent(1)), p.intent_record(intent(2))

    asyncio.run(crashing.process_batch([first]))
    assert [r["outcome"] for r in p.results()] == ["SENT"]
    with pytest.raises(Crashed):
        asyncio.run(crashing.process_batch([second]))
    entry = ledger_entry(p, 2, second.partition)
    assert entry is not None and entry.status is LedgerStatus.SENT
    assert len(p.results()) == 1


def test_the_worker_arms_crash_points_from_its_settings(tmp_path: Path) -> None:
    p = InMemoryPipeline(CountingOutbox(tmp_path / "outbox"))
    armed = IntentProcessor(
        Settings(crash_at="after-accept:4"), p.store, p.provider, p.sink, p.codec
    )
    assert armed._crash.point == AFTER_ACCEPT and armed._crash.nth == 4
    assert not worker(p)._crash.armed


@pytest.mark.parametrize("point", [PENDING_PRODUCED, AFTER_PENDING, AFTER_ACCEPT, AFTER_SENT])
def test_a_worker_pauses_at_each_point_in_its_moment_and_goes_on_when_resumed(
    point: str, tmp_path: Path
) -> None:
    # The stop function stands in for SIGSTOP: it sees the state the frozen worker
    # would leave, and returning from it is the SIGCONT.
    provider = CountingOutbox(tmp_path / "outbox")
    p = InMemoryPipeline(provider)
    record = p.intent_record(intent(1))
    seen: list[tuple[LedgerStatus | None, int]] = []

    def stop() -> None:
        entry = ledger_entry(p, 1, record.partition)
        seen.append((None if entry is None else entry.status, len(provider.sends)))

    asyncio.run(
        worker(p, pause_points=PausePoints(f"{point}:1", stop=stop)).process_batch([record])
    )

    expected = {
        # Handed to the store, not yet durable: no entry stored, provider not called.
        PENDING_PRODUCED: (None, 0),
        AFTER_PENDING: (LedgerStatus.PENDING, 0),
        AFTER_ACCEPT: (LedgerStatus.PENDING, 1),
        AFTER_SENT: (LedgerStatus.SENT, 1),
    }
    assert seen == [expected[point]]
    # Resumed, the drive finishes as if nothing happened.
    assert [r["outcome"] for r in p.results()] == ["SENT"]
    assert provider.sends == [key_of(1)] and provider.delivered() == 1


def test_the_worker_arms_pause_points_from_its_settings(tmp_path: Path) -> None:
    p = InMemoryPipeline(CountingOutbox(tmp_path / "outbox"))
    armed = IntentProcessor(
        Settings(pause_at="pending-produced:2"), p.store, p.provider, p.sink, p.codec
    )
    assert armed._pause.point == PENDING_PRODUCED and armed._pause.nth == 2
    assert not worker(p)._pause.armed
