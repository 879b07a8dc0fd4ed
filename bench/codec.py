"""Micro measurement of SchemaCodec.encode / decode, in µs per record (not a test).

Run it by hand on an otherwise idle machine::

    .venv/bin/python -m bench.codec

It times the codec's public encode / decode next to the avro-library reference path
(``_reference_encode`` / ``_reference_decode``, the code before fastavro) in the same
process, for the sample EmailIntent and EmailResult. The "worker" rows are what the
processor does per intent: decode one EmailIntent, encode one EmailResult.

Deliberately not collected by pytest: a timing assertion would be flaky on shared CI
runners, and the numbers only mean something next to each other on one machine.
"""

from __future__ import annotations

import argparse
import timeit
from collections.abc import Callable
from typing import Any

from sendonce.schemas.codec import SchemaCodec

# The measured records: an order receipt as a publisher sends it and the worker's SENT
# result for it. The benchmark's own, since bench imports nothing from tests/; what the
# figures depend on is their shape (field count, union fields, collections), not values.
INTENT: dict[str, Any] = {
    "tenant_id": "bench",
    "source_event_id": "order-2002:shipped",
    "action_type": "receipt",
    "sender": "orders@bench.example",
    "to": ["erin@example.com", "Frank <frank@example.net>"],
    "cc": ["grace@example.org"],
    "bcc": [],
    "subject": "Your order 2002 has shipped",
    "text_body": "Hi Erin,\nyour order is packed and on its way to you.",
    "html_body": "<p>Hi Erin,</p><p>your order is packed and on its way to you.</p>",
    "template_id": None,
    "template_params": {},
    "idempotency_key": None,
    "headers": {"In-Reply-To": "<order-2002@bench.example>"},
    "created_at": 1_710_000_000_000,
}

RESULT: dict[str, Any] = {
    "result_id": "r-bench:0a1b2c3d4e5f6071-0-2002-SENT",
    "outcome": "SENT",
    "idempotency_key": "bench:0a1b2c3d4e5f60718293a4b5c6d7e8f9",
    "tenant_id": "bench",
    "source_event_id": "order-2002:shipped",
    "action_type": "receipt",
    "provider": "graph",
    "provider_request_id": "9c1e7a52-0000-4000-8000-000000002002",
    "provider_message_id": None,
    "internet_message_id": "<bench.0a1b2c3d4e5f6071@sendonce>",
    "attempt_id": "att-2002",
    "attempt_count": 1,
    "intent_topic": "email.intents",
    "intent_partition": 5,
    "intent_offset": 2002,
    "original_result_id": None,
    "original_intent_partition": None,
    "original_intent_offset": None,
    "accepted_at": 1_710_000_000_400,
    "decided_at": 1_710_000_000_900,
    "error_code": None,
    "error_message": None,
    "reconciled": False,
    "worker": "worker-0/1",
}


def best_us(call: Callable[[], object], number: int, repeat: int) -> float:
    """Best of ``repeat`` runs of ``number`` calls, in µs per call (least disturbed run)."""
    return min(timeit.repeat(call, number=number, repeat=repeat)) / number * 1e6


def cases(codec: SchemaCodec, reference: bool) -> dict[str, Callable[[], object]]:
    """The measured operations, on the reference path or the public one."""
    encode: Callable[[str, dict[str, Any]], bytes] = (
        codec._reference_encode if reference else codec.encode
    )
    decode: Callable[..., dict[str, Any]] = codec._reference_decode if reference else codec.decode
    intent_bytes = codec.encode("EmailIntent", INTENT)
    result_bytes = codec.encode("EmailResult", RESULT)
    return {
        "EmailIntent encode": lambda: encode("EmailIntent", INTENT),
        "EmailIntent decode": lambda: decode(intent_bytes, expect="EmailIntent"),
        "EmailIntent encode+decode": lambda: decode(
            encode("EmailIntent", INTENT), expect="EmailIntent"
        ),
        "EmailResult encode": lambda: encode("EmailResult", RESULT),
        "EmailResult decode": lambda: decode(result_bytes, expect="EmailResult"),
        "EmailResult encode+decode": lambda: decode(
            encode("EmailResult", RESULT), expect="EmailResult"
        ),
        "worker: decode intent + encode result": lambda: (
            decode(intent_bytes, expect="EmailIntent"),
            encode("EmailResult", RESULT),
        ),
    }


def main() -> None:
    """Print µs per record for the reference (avro) path and the public (fastavro) one."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--number", type=int, default=5000, help="calls per run")
    parser.add_argument("--repeat", type=int, default=7, help="runs; the best one counts")
    args = parser.parse_args()

    codec = SchemaCodec()
    for data, name in ((codec.encode("EmailIntent", INTENT), "EmailIntent"),):
        assert codec.decode(data) == codec._reference_decode(data), name
    assert codec.encode("EmailResult", RESULT) == codec._reference_encode("EmailResult", RESULT)

    reference = cases(codec, reference=True)
    public = cases(codec, reference=False)
    print(f"{'µs per record (best of runs)':<40} {'avro ref':>9} {'codec':>9} {'speed-up':>9}")
    for label in reference:
        before = best_us(reference[label], args.number, args.repeat)
        after = best_us(public[label], args.number, args.repeat)
        print(f"{label:<40} {before:9.2f} {after:9.2f} {before / after:8.1f}x")
    print(f"reproduce: python -m bench.codec --number {args.number} --repeat {args.repeat}")


if __name__ == "__main__":
    main()
