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
from tests.unit.schemas.samples import INTENT, RESULT


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
