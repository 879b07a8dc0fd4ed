"""The naive baseline: the simplest correct once-only sender, one message at a time.

Run as a process by the benchmark (``python -m bench.naive``). One consumer loop
(confluent-kafka, in a consumer group); per message:

1. decode the intent and compute its idempotency key;
2. claim the key in a SQLite ledger (``UNIQUE`` key, status PENDING) and commit;
   a key already there is a DUPLICATE (or AMBIGUOUS, when a crash left it PENDING);
3. call the provider (the null provider, as the sendonce null run uses);
4. record SENT and commit;
5. produce the EmailResult (acks=all) and flush;
6. commit the message's offset synchronously.

SQLite runs in WAL mode with ``synchronous=FULL``: each commit is durable, as the
ledger's acks=all writes are. Stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sqlite3
import sys
import time
from pathlib import Path
from types import FrameType

from confluent_kafka import Consumer, Producer

from sendonce.bench.options import add_pipe_arguments
from sendonce.connectors.base import OutgoingEmail
from sendonce.connectors.null import NullProvider
from sendonce.keys import fingerprint_for, idempotency_key_for
from sendonce.schemas.codec import default_codec
from sendonce.streams.ledger import IntentRef, ResultOutcome, ResultRecord, result_id_for

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger (
    key TEXT NOT NULL UNIQUE,
    fingerprint TEXT NOT NULL,
    status TEXT NOT NULL,
    intent_topic TEXT NOT NULL,
    intent_partition INTEGER NOT NULL,
    intent_offset INTEGER NOT NULL,
    provider_message_id TEXT,
    accepted_at_ms INTEGER
)
"""


def run(bootstrap: str, source: str, target: str, group: str, db_path: Path) -> None:
    """Process ``source`` one message at a time until SIGTERM."""
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    codec = default_codec()
    provider = NullProvider()
    loop = asyncio.new_event_loop()
    db = sqlite3.connect(db_path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute(_SCHEMA)
    db.commit()
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True})
    consumer.subscribe([source])
    try:
        while not stopping:
            msg = consumer.poll(0.2)
            if msg is None or msg.error():
                continue
            raw = msg.value()
            assert raw is not None
            intent = codec.decode(raw, expect="EmailIntent")
            key = idempotency_key_for(intent).value
            ref = IntentRef(msg.topic() or source, msg.partition() or 0, msg.offset() or 0)
            outcome = ResultOutcome.SENT
            try:
                with db:  # one transaction: committed (fsync) on leaving the block
                    db.execute(
                        "INSERT INTO ledger VALUES (?, ?, 'PENDING', ?, ?, ?, NULL, NULL)",
                        (key, fingerprint_for(intent), ref.topic, ref.partition, ref.offset),
                    )
            except sqlite3.IntegrityError:
                row = db.execute("SELECT status FROM ledger WHERE key = ?", (key,)).fetchone()
                outcome = ResultOutcome.DUPLICATE if row[0] == "SENT" else ResultOutcome.AMBIGUOUS
            accepted_at: int | None = None
            message_id: str | None = None
            if outcome is ResultOutcome.SENT:
                sent = loop.run_until_complete(
                    provider.send(
                        OutgoingEmail(
                            idempotency_key=key,
                            attempt_id=key,
                            tenant_id=intent["tenant_id"],
                            sender=intent["sender"],
                            to=tuple(intent["to"]),
                            subject=intent["subject"],
                            text_body=intent.get("text_body"),
                            message_id=f"naive.{key}",
                        )
                    )
                )
                accepted_at, message_id = sent.accepted_at_ms, sent.provider_message_id
                with db:
                    db.execute(
                        "UPDATE ledger SET status = 'SENT', provider_message_id = ?, "
                        "accepted_at_ms = ? WHERE key = ?",
                        (message_id, accepted_at, key),
                    )
            result = ResultRecord(
                result_id=result_id_for(key, ref, outcome),
                outcome=outcome,
                idempotency_key=key,
                tenant_id=intent["tenant_id"],
                source_event_id=intent["source_event_id"],
                action_type=intent["action_type"],
                intent=ref,
                decided_at_ms=int(time.time() * 1000),
                provider="null",
                provider_message_id=message_id,
                accepted_at_ms=accepted_at,
            )
            producer.produce(target, codec.encode("EmailResult", result.to_avro()), key.encode())
            producer.flush()
            consumer.commit(message=msg, asynchronous=False)
    finally:
        consumer.close()
        producer.flush(10)
        db.close()
        loop.close()


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m bench.naive``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_pipe_arguments(parser)
    parser.add_argument("--db", type=Path, required=True)
    args = parser.parse_args(argv)
    args.db.parent.mkdir(parents=True, exist_ok=True)
    run(args.bootstrap, args.source, args.target, args.group, args.db)
    return 0


if __name__ == "__main__":
    sys.exit(main())
