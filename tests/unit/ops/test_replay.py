"""``sendonce replay`` without a broker: range parsing, selection, the dry run's prediction."""

from __future__ import annotations

import asyncio
import collections
import io
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from sendonce.cli.replay import render_table, replay_main
from sendonce.connectors.base import (
    LookupResult,
    LookupStatus,
    OutgoingEmail,
    SendOutcome,
    SendStatus,
)
from sendonce.connectors.outbox import OutboxProvider
from sendonce.keys import complete_intent, identify_intent
from sendonce.ops.history import StoredRecord
from sendonce.ops.replay import (
    EARLIEST,
    LATEST,
    Bound,
    RangeError,
    ReplayReport,
    classify,
    count_outcomes,
    parse_bound,
    resolve_range,
    simulate,
)
from sendonce.schemas.codec import default_codec
from sendonce.settings import Settings
from sendonce.streams.ledger import (
    DraftFinished,
    IntentArrived,
    IntentFacts,
    IntentRef,
    LedgerEntry,
    LedgerStatus,
    ResultOutcome,
    SendFinished,
    decide,
)
from sendonce.streams.processor import partition_for_key
from sendonce.streams.testing import InMemoryPipeline

NOW_MS = int(datetime(2026, 11, 23, 12, 0, tzinfo=UTC).timestamp() * 1000)
SETTINGS = Settings(partitions=12, retry_base_delay_s=0.0, defer_after_s=0.0)
TOPIC = SETTINGS.topics.intents

SENT = ResultOutcome.SENT
DUPLICATE = ResultOutcome.DUPLICATE
CONFLICT = ResultOutcome.CONFLICT
FAILED = ResultOutcome.FAILED
AMBIGUOUS = ResultOutcome.AMBIGUOUS


def intent(n: int, **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "tenant_id": "acme",
        "source_event_id": f"evt-{n}",
        "action_type": "receipt",
        "sender": "orders@acme.example",
        "to": [f"user{n}@example.com"],
        "subject": f"Receipt {n}",
        "text_body": f"Thanks for order {n}.",
    }
    base.update(overrides)
    return complete_intent(base, now_ms=0)


# --- parsing the bounds -----------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-23T10:00:00Z", datetime(2026, 11, 23, 10, tzinfo=UTC)),
        ("2026-11-23T10:00:00+01:00", datetime(2026, 11, 23, 9, tzinfo=UTC)),
        ("2026-11-23T10:00", datetime(2026, 11, 23, 10, tzinfo=UTC)),  # no zone: UTC
        ("2026-11-23", datetime(2026, 11, 23, tzinfo=UTC)),
    ],
)
def test_iso_times_are_parsed_as_utc_milliseconds(text: str, expected: datetime) -> None:
    bound = parse_bound(text, NOW_MS)
    assert bound.kind == "time"
    assert bound.time_ms == int(expected.timestamp() * 1000)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("-7d", 7 * 86400), ("-2h", 7200), ("-30m", 1800), ("-45s", 45), ("-1w", 7 * 86400)],
)
def test_relative_times_count_back_from_now(text: str, seconds: int) -> None:
    assert parse_bound(text, NOW_MS).time_ms == NOW_MS - seconds * 1000


def test_earliest_latest_and_offsets() -> None:
    assert parse_bound("earliest", NOW_MS) == EARLIEST
    assert parse_bound("LATEST", NOW_MS) == LATEST
    bound = parse_bound("0:10,3:7", NOW_MS)
    assert bound.kind == "offsets"
    assert bound.offsets == ((0, 10), (3, 7))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("yesterday", "not a time or offsets"),
        ("7d", "not a time or offsets"),
        ("-7y", "not a time or offsets"),
        ("0:1,0:2", "partition 0 is named twice"),
        ("0:-1", "not a time or offsets"),
        ("2026-13-01", "not a time or offsets"),
        ("", "not a time or offsets"),
    ],
)
def test_bad_bounds_are_rejected_with_a_clear_message(text: str, message: str) -> None:
    with pytest.raises(RangeError, match=message):
        parse_bound(text, NOW_MS)


# --- resolving the range ----------------------------------------------------

MARKS = {0: (0, 10), 1: (5, 20), 2: (0, 0)}


def by_time(table: Mapping[int, Mapping[int, int]]) -> Any:
    def lookup(ms: int) -> Mapping[int, int]:
        return table[ms]

    return lookup


def no_time(ms: int) -> Mapping[int, int]:
    raise AssertionError("no time lookup expected")


def test_earliest_to_the_default_end_covers_every_stored_record() -> None:
    assert resolve_range(EARLIEST, None, MARKS, no_time, NOW_MS) == {
        0: (0, 10),
        1: (5, 20),
        2: (0, 0),
    }


def test_times_map_through_offsets_for_times_and_stay_below_the_start_watermarks() -> None:
    start, end = Bound("time", "-2h", time_ms=100), Bound("time", "-1h", time_ms=200)
    # The broker answered for 200 with partition 1's watermark *now* (25), past the
    # high watermark the command started with (20): the replay never chases its own.
    lookup = by_time({100: {0: 3, 1: 8, 2: 0}, 200: {0: 6, 1: 25, 2: 0}})
    assert resolve_range(start, end, MARKS, lookup, NOW_MS) == {0: (3, 6), 1: (8, 20), 2: (0, 0)}


def test_offsets_name_some_partitions_the_others_take_the_defaults() -> None:
    start = parse_bound("0:4", NOW_MS)
    end = parse_bound("1:12", NOW_MS)
    assert resolve_range(start, end, MARKS, no_time, NOW_MS) == {
        0: (4, 10),
        1: (5, 12),
        2: (0, 0),
    }


def test_offsets_below_retention_or_past_the_end_are_clamped() -> None:
    start = parse_bound("1:0", NOW_MS)  # partition 1's records below 5 are deleted
    end = parse_bound("0:99", NOW_MS)  # past the end: up to the end as of the start
    assert resolve_range(start, end, MARKS, no_time, NOW_MS)[0] == (0, 10)
    assert resolve_range(start, end, MARKS, no_time, NOW_MS)[1] == (5, 20)


def test_latest_selects_nothing() -> None:
    assert all(f == s for f, s in resolve_range(LATEST, None, MARKS, no_time, NOW_MS).values())


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [
        ("0:11", None, "partition 0 ends at offset 10"),
        ("7:0", None, "partition 7 does not exist"),
        ("earliest", "9:1", "partition 9 does not exist"),
        ("0:8", "0:4", "--from is after --to on partition 0"),
        ("-1h", "-2h", "is not before --to"),
        ("2026-11-23T12:00:00Z", "2026-11-23T12:00:00Z", "is not before --to"),
        ("2026-12-01", None, "in the future"),
    ],
)
def test_bad_ranges_are_rejected(start: str, end: str | None, message: str) -> None:
    lookup = by_time(collections.defaultdict(lambda: {0: 0, 1: 5, 2: 0}))
    with pytest.raises(RangeError, match=message):
        resolve_range(
            parse_bound(start, NOW_MS),
            parse_bound(end, NOW_MS) if end else None,
            MARKS,
            lookup,
            NOW_MS,
        )


def test_a_bad_range_exits_2_before_touching_kafka() -> None:
    err = io.StringIO()
    # Nothing listens on port 1: a connection attempt would fail differently.
    settings = SETTINGS.with_overrides(bootstrap_servers="127.0.0.1:1")
    assert replay_main(settings, start="next tuesday", err=err, out=io.StringIO()) == 2
    assert "bad range" in err.getvalue()
    assert replay_main(settings, start="-1h", wait_s=0, err=err, out=io.StringIO()) == 2


# --- selection ----------------------------------------------------------------


def record(key: bytes | None, value: bytes | None, partition: int | None = None) -> StoredRecord:
    if partition is None:
        partition = partition_for_key(key, SETTINGS.partitions) if key else 0
    return StoredRecord(TOPIC, partition, 42, None, key, value)


def keyed(full: dict[str, Any]) -> tuple[bytes, bytes]:
    key = identify_intent(full).key.value.encode()
    return key, default_codec().encode("EmailIntent", full)


def test_classify_accepts_what_the_worker_accepts() -> None:
    full = intent(1)
    key, value = keyed(full)
    facts = classify(record(key, value), default_codec(), SETTINGS)
    assert isinstance(facts, IntentFacts)
    assert facts.key == key.decode()
    assert facts.tenant_id == "acme"
    assert facts.ref == IntentRef(TOPIC, partition_for_key(key, 12), 42)
    assert facts.content_fingerprint == identify_intent(full).fingerprint


def test_classify_names_why_the_worker_dead_lettered_a_record() -> None:
    codec = default_codec()
    key, value = keyed(intent(1))
    wrong_schema = codec.encode(
        "DeadLetter",
        {
            "source_topic": "x",
            "source_partition": 0,
            "source_offset": 0,
            "reason": "r",
            "error_type": "t",
            "failed_at": 0,
        },
    )
    invalid = codec.encode("EmailIntent", intent(2, to=["not an address"]))
    other_partition = (partition_for_key(key, 12) + 1) % 12
    cases = {
        "tombstone": (record(key, None), "undecodable"),
        "garbage": (record(b"acme:x", b"\x00\x01 not avro"), "undecodable"),
        "wrong schema": (record(b"acme:x", wrong_schema), "wrong_schema"),
        "invalid": (record(b"acme:x", invalid), "invalid_intent"),
        "other key": (record(b"acme:not-its-key", value), "misrouted"),
        "other partition": (record(key, value, other_partition), "misrouted"),
    }
    for name, (rec, reason) in cases.items():
        assert classify(rec, codec, SETTINGS) == reason, name


# --- the dry run's prediction -------------------------------------------------


def facts(n: int, *, key: str | None = None, offset: int = 0, **overrides: Any) -> IntentFacts:
    full = intent(n, **overrides)
    identity = identify_intent(full)
    k = key or identity.key.value
    return IntentFacts(
        key=k,
        tenant_id=full["tenant_id"],
        source_event_id=full["source_event_id"],
        action_type=full["action_type"],
        content_fingerprint=identity.fingerprint,
        ref=IntentRef(TOPIC, partition_for_key(k.encode(), 12), offset),
        sender=identity.sender,
    )


def settled(f: IntentFacts, status: SendStatus) -> LedgerEntry:
    """The entry the worker keeps after sending ``f`` with the provider answering ``status``."""
    pending = decide(None, IntentArrived(f, 1, "w")).entry
    assert pending is not None
    outcome = SendOutcome(status, "outbox", provider_message_id="m-1")
    entry = decide(pending, SendFinished(f, pending.attempt_id, outcome, 2)).entry
    assert entry is not None
    return entry


def pending(f: IntentFacts) -> LedgerEntry:
    entry = decide(None, IntentArrived(f, 1, "w")).entry
    assert entry is not None and entry.status is LedgerStatus.PENDING
    return entry


def test_simulation_outcome_per_ledger_state() -> None:
    new, sent, failed, ambiguous, crashed = (facts(n) for n in range(5))
    entries = {
        sent.key: settled(sent, SendStatus.ACCEPTED),
        failed.key: settled(failed, SendStatus.REJECTED),
        ambiguous.key: settled(ambiguous, SendStatus.AMBIGUOUS),
        crashed.key: pending(crashed),
    }
    assert entries[ambiguous.key].status is LedgerStatus.AMBIGUOUS
    got = simulate(entries, [new, sent, failed, ambiguous, crashed], NOW_MS)
    assert got == [SENT, DUPLICATE, FAILED, AMBIGUOUS, AMBIGUOUS]


def test_replaying_the_origin_record_itself_is_a_duplicate_never_a_send() -> None:
    # The selected record is the very record that created the entry: its copy sits
    # at a new offset, so the ledger answers DUPLICATE (FAILED for a failed key).
    sent, failed = facts(1), facts(2)
    entries = {
        sent.key: settled(sent, SendStatus.ACCEPTED),
        failed.key: settled(failed, SendStatus.REJECTED),
    }
    assert entries[sent.key].origin == sent.ref
    assert simulate(entries, [sent, failed], NOW_MS) == [DUPLICATE, FAILED]


def test_repeats_within_the_range_send_once() -> None:
    a, b = facts(1), facts(2)
    again = facts(1, offset=9, to=["User 1 <USER1@Example.com>"])  # same key, same content
    assert again.key == a.key
    got = simulate({}, [a, b, again, a, b], NOW_MS)
    assert got == [SENT, SENT, DUPLICATE, DUPLICATE, DUPLICATE]
    assert count_outcomes(got) == {
        "SENT": 2,
        "DUPLICATE": 3,
        "CONFLICT": 0,
        "FAILED": 0,
        "AMBIGUOUS": 0,
    }


def test_conflicts_against_the_ledger_and_within_the_range() -> None:
    first = facts(1, idempotency_key="ticket-7")
    regenerated = facts(1, idempotency_key="ticket-7", text_body="regenerated")
    assert first.key == regenerated.key
    assert first.content_fingerprint != regenerated.content_fingerprint
    entries = {first.key: settled(first, SendStatus.ACCEPTED)}
    assert simulate(entries, [first, regenerated], NOW_MS) == [DUPLICATE, CONFLICT]
    # Not handled yet: the first in the range would send, the other conflicts with it.
    assert simulate({}, [regenerated, first, regenerated], NOW_MS) == [
        SENT,
        CONFLICT,
        DUPLICATE,
    ]
    # A conflict with a failed or pending entry is still a conflict.
    assert simulate({first.key: pending(first)}, [regenerated], NOW_MS) == [CONFLICT]


def test_simulation_does_not_change_the_entries_it_is_given() -> None:
    a = facts(1)
    entries: dict[str, LedgerEntry] = {}
    simulate(entries, [a], NOW_MS)
    assert entries == {}


# --- the prediction against the real worker, in memory ------------------------


class ScriptedProvider:
    """The outbox, but subjects containing "ambiguous" time out after acceptance."""

    name = "scripted"

    def __init__(self, directory: Path) -> None:
        self.outbox = OutboxProvider(directory)
        self.sends = 0

    async def send(self, email: OutgoingEmail) -> SendOutcome:
        self.sends += 1
        if "ambiguous" in email.subject:
            return SendOutcome(SendStatus.AMBIGUOUS, "scripted", error_code="timeout")
        return await self.outbox.send(email)

    async def lookup(self, idempotency_key: str, message_id: str, sender: str) -> LookupResult:
        return LookupResult(LookupStatus.UNKNOWN, "scripted")

    async def close(self) -> None:
        await self.outbox.close()


def test_dry_run_prediction_equals_what_the_worker_reports_for_the_copies(
    tmp_path: Path,
) -> None:
    provider = ScriptedProvider(tmp_path / "outbox")
    p = InMemoryPipeline(provider, SETTINGS)
    handled = [
        intent(1),
        intent(2),
        intent(1, to=["User 1 <user1@EXAMPLE.com>"]),
        intent(3, idempotency_key="t-3"),
        intent(3, idempotency_key="t-3", text_body="regenerated"),
        intent(4, to=["nobody@nowhere.invalid"]),
        intent(5, subject="ambiguous 5"),
    ]
    first = [p.intent_record(i) for i in handled]
    asyncio.run(p.run(first))
    never_processed = [p.intent_record(i) for i in (intent(6), intent(7), intent(6))]
    codec = default_codec()

    def as_stored(r: Any) -> StoredRecord:
        return StoredRecord(r.topic, r.partition, r.offset, None, r.key, r.value)

    selected = [as_stored(r) for r in [*first, *never_processed]]
    all_facts = [classify(r, codec, SETTINGS) for r in selected]
    assert all(isinstance(f, IntentFacts) for f in all_facts)
    entries = {key: entry for (_, key), entry in p.store.entries.items()}
    predicted = simulate(entries, [f for f in all_facts if isinstance(f, IntentFacts)], NOW_MS)

    # The replay: copies of every selected record at new offsets, through the worker.
    sends_before = provider.sends
    results_before = len(p.results())
    copies = [p.record(r.key, r.value, r.partition) for r in selected]
    asyncio.run(p.run(copies))
    reported = {
        (r["intent_partition"], r["intent_offset"]): r["outcome"]
        for r in p.results()[results_before:]
    }
    actual = [reported[(c.partition, c.offset)] for c in copies]

    assert [o.value for o in predicted] == actual
    assert count_outcomes(predicted) == {
        "SENT": 2,
        "DUPLICATE": 5,
        "CONFLICT": 1,
        "FAILED": 1,
        "AMBIGUOUS": 1,
    }
    assert provider.sends - sends_before == 2  # only the never-processed keys


# --- output ---------------------------------------------------------------------


def report() -> ReplayReport:
    return ReplayReport(
        replay_id="r-1",
        dry_run=True,
        topic=TOPIC,
        ranges={0: (0, 10), 1: (3, 3)},
        records_read=10,
        selected=7,
        skipped_bad_input=2,
        skipped_by_reason={"undecodable": 1, "invalid_intent": 1},
        filtered_other_tenant=1,
        outcomes={"SENT": 1, "DUPLICATE": 4, "CONFLICT": 1, "FAILED": 1, "AMBIGUOUS": 0},
    )


def test_table_has_one_line_per_outcome_and_the_selection_counts() -> None:
    table = render_table(report())
    lines = {line.split("  ")[1].strip(): line for line in table.splitlines()[1:] if "  " in line}
    assert lines["SENT (new send)"].split()[-1] == "1"
    assert lines["DUPLICATE"].split()[-1] == "4"
    assert lines["AMBIGUOUS"].split()[-1] == "0"
    assert lines["selected"].split()[-1] == "7"
    assert "skipped (bad input)" in table and "invalid_intent 1" in table
    assert lines["filtered (other tenant)"].split()[-1] == "1"
    assert "10  records on 1 partition(s)" in table


def test_json_carries_every_count() -> None:
    data = json.loads(json.dumps(report().to_json()))
    assert data["outcomes"]["DUPLICATE"] == 4
    assert data["selected"] == 7
    assert data["skipped_bad_input"] == 2
    assert data["filtered_other_tenant"] == 1
    assert data["records_in_range"] == 10
    assert data["ranges"] == {"0": [0, 10], "1": [3, 3]}
    assert report().exit_code() == 0
    missing = report()
    missing.results_missing = 2
    assert missing.exit_code() == 1


def test_the_command_line_takes_relative_times_as_values() -> None:
    from sendonce.cli.main import build_parser

    args = build_parser().parse_args(
        ["replay", "--from", "-7d", "--to", "-2h", "--tenant", "a", "--tenant", "b", "--dry-run"]
    )
    assert (args.start, args.end, args.tenant, args.dry_run) == ("-7d", "-2h", ["a", "b"], True)
    assert (args.wait, args.no_wait) == (300.0, False)
    assert build_parser().parse_args(["replay", "--from", "0:5,1:2", "--no-wait"]).no_wait
    with pytest.raises(SystemExit):
        build_parser().parse_args(["replay", "--from", "-7d", "--wait", "5", "--no-wait"])


def test_entries_that_make_the_worker_wait_are_predicted_after_the_wait() -> None:
    # A retry waiting for its backoff, and a draft create of unknown outcome (its
    # draft is looked for after the grace): the worker waits, then decides again.
    waiting, creating = facts(1), facts(2)
    first = decide(None, IntentArrived(waiting, 1, "w")).entry
    assert first is not None
    refused = SendOutcome(SendStatus.NOT_SENT_RETRYABLE, "graph", retry_after_s=3600)
    retry = decide(first, SendFinished(waiting, first.attempt_id, refused, NOW_MS)).entry
    assert retry is not None and retry.retry_at_ms is not None
    drafting = decide(None, IntentArrived(creating, 1, "w"), drafts=True).entry
    assert drafting is not None
    unclear = SendOutcome(SendStatus.AMBIGUOUS, "graph", error_code="timeout")
    found_out = decide(
        drafting, DraftFinished(creating, drafting.attempt_id, unclear, NOW_MS), drafts=True
    ).entry
    assert found_out is not None and found_out.next_lookup_at_ms is not None
    entries = {waiting.key: retry, creating.key: found_out}
    # Before the fix: AssertionError "unexpected decision for an intent" (no result).
    assert simulate(entries, [waiting, creating], NOW_MS) == [SENT, AMBIGUOUS]
