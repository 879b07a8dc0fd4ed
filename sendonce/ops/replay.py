"""Replay: re-drive historical intent records through the ledger.

A replay re-publishes each selected intent record of the intents topic (its original
key, value and headers) to the intents topic, on the same partition, with two more
headers: ``sendonce-replay`` (this replay's id) and ``sendonce-replayed-from``
(``topic:partition:offset`` of the record it copies). The worker then treats each copy
as a new record: every key the ledger already settled resolves against its entry
(DUPLICATE, the original FAILED or AMBIGUOUS, CONFLICT), so a replay of handled
history costs zero emails.

``--dry-run`` publishes nothing: it reads the ledger's latest entry for each selected
key from its compacted changelog (the source of truth) and runs the same pure state
machine the worker runs (:func:`streams.ledger.decide`) over the selected intents in
order, which predicts per outcome what the real replay would report. A real replay
waits for the results of exactly the records it published and prints the same table,
so the two can be compared.

Records the worker could not accept (tombstones, undecodable bytes, another schema,
an invalid intent, a key or partition that does not match the intent) are not
re-published: the worker dead-lettered them once already. They are counted as
``skipped (bad input)``.

Nothing here reports a body, a recipient or a secret: only counts, topics and offsets.

This module is the library (:func:`run_replay`, used by the ``sendonce replay``
command, the demo and the tests); the command line, its table and its exit messages
are :mod:`sendonce.cli.replay`. Kafka clients are imported inside the functions that
use them so that importing this module stays cheap.
"""

from __future__ import annotations

import collections
import dataclasses
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, TextIO

from sendonce.ops.progress import Progress
from sendonce.settings import Settings
from sendonce.streams.ledger import (
    CallProvider,
    Emit,
    IntentArrived,
    IntentFacts,
    IntentRef,
    LedgerEntry,
    LedgerStatus,
    Reconcile,
    ResultOutcome,
    WaitForRetry,
    decide,
    replace,
)

if TYPE_CHECKING:
    from confluent_kafka import KafkaError, Message

    from sendonce.ops.history import StoredRecord, TopicReader
    from sendonce.schemas.codec import SchemaCodec

__all__ = [
    "EARLIEST",
    "LATEST",
    "OUTCOMES",
    "REPLAYED_FROM_HEADER",
    "REPLAY_HEADER",
    "Bound",
    "RangeError",
    "ReplayError",
    "ReplayOptions",
    "ReplayReport",
    "classify",
    "count_outcomes",
    "parse_bound",
    "resolve_range",
    "run_replay",
    "simulate",
]

#: Header naming the replay a record was published by (a uuid).
REPLAY_HEADER = "sendonce-replay"
#: Header naming the record a replayed record copies: ``topic:partition:offset``.
REPLAYED_FROM_HEADER = "sendonce-replayed-from"

#: The outcomes in the order the report's table prints them.
OUTCOMES: tuple[ResultOutcome, ...] = (
    ResultOutcome.SENT,
    ResultOutcome.DUPLICATE,
    ResultOutcome.CONFLICT,
    ResultOutcome.FAILED,
    ResultOutcome.AMBIGUOUS,
)

#: The topic of the fresh refs a dry run gives replayed intents: never a real
#: record, so never the origin of a ledger entry.
DRY_RUN_TOPIC = "sendonce-replay-dry-run"


class RangeError(ValueError):
    """``--from``/``--to`` cannot be parsed or do not make a range (exit code 2)."""


# --- range -----------------------------------------------------------------


BoundKind = Literal["earliest", "latest", "time", "offsets"]


@dataclass(frozen=True)
class Bound:
    """One end of the range as the operator wrote it."""

    kind: BoundKind
    text: str
    #: ``time``: milliseconds since the epoch (UTC).
    time_ms: int | None = None
    #: ``offsets``: (partition, offset) pairs, as given.
    offsets: tuple[tuple[int, int], ...] = ()


EARLIEST = Bound("earliest", "earliest")
LATEST = Bound("latest", "latest")

_RELATIVE = re.compile(r"^-(\d+)([smhdw])$")
_OFFSETS = re.compile(r"^\d+:\d+(,\d+:\d+)*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_bound(text: str, now_ms: int) -> Bound:
    """Parse ``--from``/``--to``: ISO-8601 time, ``-7d``/``-2h``/``-30m``, ``earliest``,
    ``latest`` or ``P:O[,P:O...]``. A time without a zone is UTC."""
    raw = text.strip()
    lowered = raw.lower()
    if lowered in ("earliest", "latest"):
        return EARLIEST if lowered == "earliest" else LATEST
    relative = _RELATIVE.match(lowered)
    if relative:
        amount, unit = int(relative.group(1)), relative.group(2)
        return Bound("time", raw, time_ms=now_ms - amount * _UNIT_S[unit] * 1000)
    if _OFFSETS.match(raw):
        pairs: list[tuple[int, int]] = []
        seen: set[int] = set()
        for item in raw.split(","):
            partition, offset = (int(x) for x in item.split(":"))
            if partition in seen:
                raise RangeError(f"{raw!r}: partition {partition} is named twice")
            seen.add(partition)
            pairs.append((partition, offset))
        return Bound("offsets", raw, offsets=tuple(pairs))
    try:
        when = datetime.fromisoformat(raw)
    except ValueError:
        raise RangeError(
            f"{raw!r} is not a time or offsets: use an ISO-8601 time "
            "(2026-11-23T10:00:00Z, 2026-11-23), a relative time (-7d, -2h, -30m), "
            "earliest, latest, or offsets P:O[,P:O...]"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return Bound("time", raw, time_ms=int(when.timestamp() * 1000))


def resolve_range(
    start: Bound,
    end: Bound | None,
    watermarks: Mapping[int, tuple[int, int]],
    offsets_for_time: Callable[[int], Mapping[int, int]],
    now_ms: int,
) -> dict[int, tuple[int, int]]:
    """Per partition, the offsets ``[first, stop)`` to replay.

    ``watermarks`` are the partitions' ``(low, high)`` taken when the command started:
    ``--to`` never reaches past ``high``, so a replay never chases its own records.
    ``offsets_for_time(ms)`` gives, per partition, the first offset at or after ``ms``
    (the high watermark when there is none). Partitions ``--from`` does not name start
    at their first stored offset; partitions ``--to`` does not name end at ``high``.
    Raises :class:`RangeError` for a range that makes no sense.
    """
    if start.kind == "time" and start.time_ms is not None and start.time_ms > now_ms:
        raise RangeError(f"--from {start.text} is in the future")
    if (
        end is not None
        and start.kind == "time"
        and end.kind == "time"
        and start.time_ms is not None
        and end.time_ms is not None
        and start.time_ms >= end.time_ms
    ):
        raise RangeError(f"--from {start.text} is not before --to {end.text}")
    firsts = _offsets(start, "--from", watermarks, offsets_for_time, at_low=True)
    stops = _offsets(end or LATEST, "--to", watermarks, offsets_for_time, at_low=False)
    ranges: dict[int, tuple[int, int]] = {}
    for partition in sorted(watermarks):
        first, stop = firsts[partition], stops[partition]
        if first > stop:
            raise RangeError(
                f"--from is after --to on partition {partition} "
                f"(offset {first} > {stop}); check the bounds"
            )
        ranges[partition] = (first, stop)
    return ranges


def _offsets(
    bound: Bound,
    flag: str,
    watermarks: Mapping[int, tuple[int, int]],
    offsets_for_time: Callable[[int], Mapping[int, int]],
    *,
    at_low: bool,
) -> dict[int, int]:
    if bound.kind == "earliest":
        return {p: low for p, (low, _) in watermarks.items()}
    if bound.kind == "latest":
        return {p: high for p, (_, high) in watermarks.items()}
    if bound.kind == "time":
        assert bound.time_ms is not None
        found = offsets_for_time(bound.time_ms)
        # Clamped into [low, high]: records written after the command started are
        # not part of the range.
        return {p: min(max(found.get(p, high), low), high) for p, (low, high) in watermarks.items()}
    chosen = {p: (low if at_low else high) for p, (low, high) in watermarks.items()}
    for partition, offset in bound.offsets:
        if partition not in watermarks:
            raise RangeError(
                f"{flag} {bound.text}: partition {partition} does not exist "
                f"(the topic has partitions 0-{max(watermarks)})"
            )
        low, high = watermarks[partition]
        if at_low and offset > high:
            raise RangeError(
                f"{flag} {bound.text}: partition {partition} ends at offset {high} "
                f"(its next record); {offset} is beyond it"
            )
        # Below ``low`` retention deleted the records; past ``high`` (for --to) the
        # records are newer than the command.
        chosen[partition] = min(max(offset, low), high)
    return chosen


# --- selection -------------------------------------------------------------


def classify(record: StoredRecord, codec: SchemaCodec, settings: Settings) -> IntentFacts | str:
    """The record's ledger facts, or why the worker rejects it (its dead-letter type).

    The worker's own rule (:func:`streams.processor.accept_intent`).
    """
    from sendonce.streams.processor import BadIntent, accept_intent

    try:
        return accept_intent(record, codec, settings)[1]
    except BadIntent as bad:
        return bad.error_type


# --- the dry run's prediction ---------------------------------------------


def simulate(
    entries: Mapping[str, LedgerEntry],
    intents: Iterable[IntentFacts],
    now_ms: int,
    *,
    worker: str = "replay-dry-run",
) -> list[ResultOutcome]:
    """The outcome the worker would report for each replayed intent, in order; pure.

    ``entries`` are the ledger's latest entries of the intents' keys. Each intent is
    decided by :func:`streams.ledger.decide` as a record at a fresh position (a copy
    is never the origin of an entry). As the worker would: no entry writes PENDING
    and calls the provider, predicted SENT (and the key is SENT for the intents after
    it); an entry left PENDING or DRAFTED is looked up at the provider, predicted
    AMBIGUOUS; an entry the worker must wait for (a retry's backoff, a draft create's
    grace) is predicted as decided once the wait is over; otherwise the result the
    decision emits (DUPLICATE, FAILED, AMBIGUOUS, CONFLICT).
    """
    ledger = dict(entries)
    outcomes: list[ResultOutcome] = []
    for n, facts in enumerate(intents):
        fresh = dataclasses.replace(facts, ref=IntentRef(DRY_RUN_TOPIC, facts.ref.partition, n))
        decision = decide(ledger.get(facts.key), IntentArrived(fresh, now_ms, worker))
        wait = next((e for e in decision.effects if isinstance(e, WaitForRetry)), None)
        if wait is not None:
            # The worker waits (a retry's backoff, a draft create's grace), then decides
            # the record again: predict that decision.
            later = IntentArrived(fresh, max(now_ms, wait.until_ms), worker)
            decision = decide(ledger.get(facts.key), later)
        effects = decision.effects
        if any(isinstance(e, CallProvider) for e in effects):
            assert decision.entry is not None
            ledger[facts.key] = replace(decision.entry, status=LedgerStatus.SENT)
            outcomes.append(ResultOutcome.SENT)
        elif any(isinstance(e, Reconcile) for e in effects):
            outcomes.append(ResultOutcome.AMBIGUOUS)
        else:
            emitted = [e.result.outcome for e in effects if isinstance(e, Emit)]
            if len(emitted) != 1:
                raise AssertionError(f"unexpected decision for an intent: {effects!r}")
            outcomes.append(emitted[0])
    return outcomes


def count_outcomes(outcomes: Iterable[ResultOutcome | str]) -> dict[str, int]:
    """Outcome counts with every outcome present, in table order."""
    counts = collections.Counter(o.value if isinstance(o, ResultOutcome) else o for o in outcomes)
    return {o.value: counts.get(o.value, 0) for o in OUTCOMES}


# --- running a replay ------------------------------------------------------


@dataclass(frozen=True)
class ReplayOptions:
    """What to replay and how."""

    start: Bound
    end: Bound | None = None
    tenants: frozenset[str] = frozenset()
    dry_run: bool = False
    #: Seconds to wait for the results of the published records; ``None``: do not wait.
    wait_s: float | None = 300.0
    replay_id: str = field(default_factory=lambda: str(uuid.uuid4()))


@dataclass
class ReplayReport:
    """What a replay (or its dry run) found and did."""

    replay_id: str
    dry_run: bool
    topic: str
    ranges: dict[int, tuple[int, int]] = field(default_factory=dict)
    records_read: int = 0
    selected: int = 0
    skipped_bad_input: int = 0
    skipped_by_reason: dict[str, int] = field(default_factory=dict)
    filtered_other_tenant: int = 0
    #: Per outcome: predicted (dry run) or reported by the worker (a replay that waited).
    outcomes: dict[str, int] | None = None
    published: int = 0
    delivery_failures: int = 0
    waited: bool = False
    results_missing: int = 0

    @property
    def records_in_range(self) -> int:
        """Offsets covered by the range (compaction or markers can leave gaps)."""
        return sum(stop - first for first, stop in self.ranges.values())

    def exit_code(self) -> int:
        """0, or 1 when a delivery failed or results are missing."""
        return 1 if self.delivery_failures or self.results_missing else 0

    def to_json(self) -> dict[str, Any]:
        """The counts as one JSON-able object."""
        return {
            "replay_id": self.replay_id,
            "dry_run": self.dry_run,
            "topic": self.topic,
            "ranges": {str(p): [first, stop] for p, (first, stop) in self.ranges.items()},
            "records_in_range": self.records_in_range,
            "records_read": self.records_read,
            "selected": self.selected,
            "skipped_bad_input": self.skipped_bad_input,
            "skipped_by_reason": dict(sorted(self.skipped_by_reason.items())),
            "filtered_other_tenant": self.filtered_other_tenant,
            "outcomes": self.outcomes,
            "published": self.published,
            "delivery_failures": self.delivery_failures,
            "waited": self.waited,
            "results_missing": self.results_missing,
        }


class ReplayError(RuntimeError):
    """Kafka could not answer or refused the replay (exit code 1)."""


def run_replay(
    settings: Settings,
    options: ReplayOptions,
    *,
    progress: TextIO | None = None,
    clock: Callable[[], float] = time.monotonic,
    now_ms: int | None = None,
    alive: Callable[[], bool] | None = None,
) -> ReplayReport:
    """Replay (or dry-run) ``options``' range of the intents topic.

    ``progress`` receives progress lines (``None``: quiet). ``alive`` lets a caller
    that runs the worker itself stop waiting for results when it died. Raises
    :class:`RangeError` for a bad range and :class:`ReplayError` when Kafka cannot
    answer.
    """
    from confluent_kafka import KafkaException

    from sendonce.kafka.follower import MissingTopicsError
    from sendonce.ops.history import HistoryError, TopicReader
    from sendonce.schemas.registry import codec_for_settings

    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    topic = settings.topics.intents
    report = ReplayReport(options.replay_id, options.dry_run, topic)
    # Intents in the registry's wire format are decoded by their schema ids.
    codec = codec_for_settings(settings)
    try:
        with TopicReader(settings.bootstrap_servers) as reader:
            partitions = reader.partitions(topic)
            if len(partitions) != settings.partitions:
                raise RangeError(
                    f"{topic} has {len(partitions)} partitions but SENDONCE_PARTITIONS is "
                    f"{settings.partitions}: every record would look misrouted; "
                    "run with the workers' settings"
                )
            watermarks = {p: reader.watermarks(topic, p) for p in partitions}
            report.ranges = resolve_range(
                options.start,
                options.end,
                watermarks,
                lambda ms: reader.offsets_for_time(topic, ms),
                now_ms,
            )
            run = _Run(reader, settings, options, report, codec, progress, clock)
            if options.dry_run:
                _dry_run(run, now_ms)
            else:
                _replay(run, alive)
    except (HistoryError, KafkaException, MissingTopicsError) as exc:
        raise ReplayError(str(exc)) from exc
    return report


@dataclass(frozen=True)
class _Run:
    """What every phase of one replay (or dry run) reads from and reports to."""

    reader: TopicReader
    settings: Settings
    options: ReplayOptions
    report: ReplayReport
    codec: SchemaCodec
    #: Where progress lines go (``None``: quiet), timed by ``clock``.
    stream: TextIO | None
    clock: Callable[[], float]

    def progress(self, phase: str, total: int) -> Progress:
        """A progress report of one phase of this run."""
        return Progress(phase, total, self.stream, clock=self.clock)


def _select(run: _Run, progress: Progress) -> Iterable[tuple[StoredRecord, IntentFacts]]:
    """The selected records of the range with their facts, counting the others."""
    report, options = run.report, run.options
    skipped: collections.Counter[str] = collections.Counter()

    def seen(_offset: int) -> None:
        report.records_read += 1
        progress.advance()

    for partition, (first, stop) in report.ranges.items():
        if first >= stop:
            continue
        for record in run.reader.scan(report.topic, partition, first, stop, on_record=seen):
            facts = classify(record, run.codec, run.settings)
            if isinstance(facts, str):
                report.skipped_bad_input += 1
                skipped[facts] += 1
                report.skipped_by_reason = dict(skipped)
                continue
            if options.tenants and facts.tenant_id not in options.tenants:
                report.filtered_other_tenant += 1
                continue
            report.selected += 1
            yield record, facts
    progress.finish()


def _dry_run(run: _Run, now_ms: int) -> None:
    from sendonce.ops.history import ledger_entries
    from sendonce.streams.processor import partition_for_key

    report, settings = run.report, run.settings
    scanning = run.progress(f"reading {report.topic}", report.records_in_range)
    intents = [facts for _, facts in _select(run, scanning)]
    keys = {facts.key for facts in intents}
    changelog = settings.ledger_changelog_topic
    ledger_partitions = {partition_for_key(k.encode(), settings.partitions) for k in keys}
    total = 0
    for partition in ledger_partitions:
        low, high = run.reader.watermarks(changelog, partition)
        total += high - low
    reading = run.progress(f"reading {changelog}", total)
    entries = ledger_entries(
        run.reader, settings, keys=keys, on_record=lambda _o: reading.advance()
    )
    reading.finish()
    report.outcomes = count_outcomes(simulate(entries, intents, now_ms))


def _replay(run: _Run, alive: Callable[[], bool] | None) -> None:
    report, options = run.report, run.options
    collector = _ResultCollector(run.settings, run.reader) if options.wait_s is not None else None
    try:
        publisher = _Republisher(run.settings, options.replay_id)
        scanning = run.progress(f"replaying {report.topic}", report.records_in_range)
        for record, _facts in _select(run, scanning):
            publisher.publish(record)
        published, failures = publisher.finish()
        report.published = len(published)
        report.delivery_failures = failures
        if collector is None or options.wait_s is None:
            return
        report.waited = True
        outcomes = collector.collect(set(published), options.wait_s, run.stream, run.clock, alive)
        report.results_missing = len(published) - len(outcomes)
        report.outcomes = count_outcomes(outcomes.values())
    finally:
        if collector is not None:
            collector.close()


class _Republisher:
    """Produces copies of intent records, acks=all and idempotent, checking every report."""

    def __init__(self, settings: Settings, replay_id: str) -> None:
        from confluent_kafka import Producer

        from sendonce.kafka.clients import producer_config

        self._replay_id = replay_id.encode()
        self._topic = settings.topics.intents
        # Every copy names its partition (the original's): the partitioner never picks.
        self._producer = Producer(
            producer_config(settings.bootstrap_servers, logger="sendonce.kafka.replay")
        )
        self._published: list[IntentRef] = []
        self._failures = 0
        self._enqueued = 0

    def publish(self, record: StoredRecord) -> None:
        """Enqueue a copy of ``record`` on its own partition."""
        headers: list[tuple[str, str | bytes | None]] = [
            (k, v) for k, v in record.headers if k not in (REPLAY_HEADER, REPLAYED_FROM_HEADER)
        ]
        headers.append((REPLAY_HEADER, self._replay_id))
        headers.append(
            (REPLAYED_FROM_HEADER, f"{record.topic}:{record.partition}:{record.offset}".encode())
        )
        while True:
            try:
                self._producer.produce(
                    self._topic,
                    value=record.value,
                    key=record.key,
                    partition=record.partition,
                    headers=headers,
                    on_delivery=self._on_delivery,
                )
                break
            except BufferError:
                self._producer.poll(0.1)
        self._enqueued += 1
        self._producer.poll(0)

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._failures += 1
            return
        self._published.append(
            IntentRef(msg.topic() or self._topic, msg.partition() or 0, msg.offset() or 0)
        )

    def finish(self, timeout_s: float = 120.0) -> tuple[list[IntentRef], int]:
        """Wait for every delivery report: the records published, and how many failed."""
        self._producer.flush(timeout_s)
        # A record without a report by now (flush timed out) counts as failed.
        unreported = self._enqueued - len(self._published) - self._failures
        return list(self._published), self._failures + unreported


class _ResultCollector:
    """Reads the result topics from their ends as of its creation (before publishing)."""

    def __init__(self, settings: Settings, reader: TopicReader) -> None:
        from sendonce.kafka.follower import TopicFollower
        from sendonce.schemas.registry import codec_for_settings

        self._codec = codec_for_settings(settings)
        self._follower = TopicFollower(
            settings.bootstrap_servers,
            settings.topics.results(),
            group="sendonce-replay",
            # Only results of what this replay is about to publish: from the ends now.
            start_at=lambda topic, partition: reader.watermarks(topic, partition)[1],
            logger="sendonce.kafka.replay",
        )

    def collect(
        self,
        wanted: set[IntentRef],
        timeout_s: float,
        stream: TextIO | None,
        clock: Callable[[], float],
        alive: Callable[[], bool] | None = None,
    ) -> dict[IntentRef, str]:
        """The first outcome reported for each record of ``wanted``, until all or timeout.

        Results are told apart by ``result_id`` (a repeat after a crash has the same
        id); a reconciliation may later report a second outcome for the same record,
        and the first one counts.
        """
        from sendonce.schemas.errors import CodecError

        outcomes: dict[IntentRef, str] = {}
        seen_ids: set[str] = set()
        waiting = Progress("awaiting results", len(wanted), stream, unit="results", clock=clock)
        deadline = clock() + timeout_s
        while len(outcomes) < len(wanted) and clock() < deadline:
            if alive is not None and not alive():
                break
            for msg in self._follower.consume(1000, 0.5):
                raw = msg.value()
                if msg.error() is not None or raw is None:
                    continue
                try:
                    result = self._codec.decode(raw, expect="EmailResult")
                except CodecError:
                    continue
                if result["result_id"] in seen_ids:
                    continue
                seen_ids.add(result["result_id"])
                ref = IntentRef(
                    result["intent_topic"], result["intent_partition"], result["intent_offset"]
                )
                if ref in wanted and ref not in outcomes:
                    outcomes[ref] = result["outcome"]
            waiting.update(len(outcomes))
        waiting.finish(len(outcomes))
        return outcomes

    def close(self) -> None:
        """Leave (nothing was committed)."""
        self._follower.close()
