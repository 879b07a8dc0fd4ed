"""DeadLetter records: the original bytes, where they came from, and why; never too large.

Every lane (intents, deferred, commands, webhooks) gives up on a record the same way:
the record goes to the dead-letter topic whole, with a readable reason, and the lane
goes on. A letter must itself fit the topic, or librdkafka refuses it with
MSG_SIZE_TOO_LARGE, the batch fails, and every owner of the partition crash-loops on
the same record; so a record too large to be wrapped whole keeps its beginning and a
SHA-256 of the whole value instead (``oversize``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any, Protocol

from sendonce.settings import Settings


class TopicRecord(Protocol):
    """A record as read from a topic: where it sits and what it holds."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def timestamp_ms(self) -> int | None: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> tuple[tuple[str, bytes | None], ...]: ...


#: Room a DeadLetter needs beside the original key, value and headers (its other
#: fields, the reason, Avro and Kafka framing).
DEAD_LETTER_OVERHEAD_BYTES = 16 * 1024
#: How much of an oversize record's value (and of each header value) a DeadLetter keeps.
OVERSIZE_PREFIX_BYTES = 4 * 1024
_HEADER_PREFIX_BYTES = 256


def record_bytes(key: bytes | None, value: bytes | None, headers: Iterable[Any]) -> int:
    """What a record weighs against a size limit: key, value, header names and values."""
    return len(key or b"") + len(value or b"") + sum(len(k) + len(v or b"") for k, v in headers)


def dead_letter(
    record: TopicRecord, reason: str, error_type: str, now_ms: int, settings: Settings
) -> dict[str, Any]:
    """A DeadLetter record: the original bytes, where they came from, and why.

    A record too large to be wrapped whole within ``SENDONCE_MAX_RECORD_BYTES``
    (librdkafka would refuse the letter, the batch would fail and every owner of the
    partition would crash-loop on it) becomes an ``oversize`` letter: the original
    key and headers, the value's first bytes, and the whole value's size and SHA-256
    in the reason, so the record can still be found and matched.
    """
    key, value = record.key, record.value
    headers = [(k, v) for k, v in record.headers]

    def letter_bytes() -> int:
        # The key twice: the letter's own Kafka key and its original_key field.
        return record_bytes(key, value, headers) + len(key or b"") + DEAD_LETTER_OVERHEAD_BYTES

    size = record_bytes(key, value, headers)
    if letter_bytes() > settings.max_record_bytes:
        whole = value or b""
        value = whole[:OVERSIZE_PREFIX_BYTES]
        cut = ""
        if letter_bytes() > settings.max_record_bytes:
            # The key or the headers themselves are the bulk: keep their beginnings.
            key = key[:OVERSIZE_PREFIX_BYTES] if key is not None else None
            headers = [(k, v[:_HEADER_PREFIX_BYTES] if v else v) for k, v in headers]
            cut = f"; key and header values cut to {OVERSIZE_PREFIX_BYTES} and "
            cut += f"{_HEADER_PREFIX_BYTES} bytes"
        reason = (
            f"record of {size} bytes is too large to dead-letter whole "
            f"(SENDONCE_MAX_RECORD_BYTES={settings.max_record_bytes}): original_value holds "
            f"the first {len(value)} of its {len(whole)} value bytes, value sha256 "
            f"{hashlib.sha256(whole).hexdigest()}{cut}; {error_type}: {reason[:1000]}"
        )
        error_type = "oversize"
    return {
        "source_topic": record.topic,
        "source_partition": record.partition,
        "source_offset": record.offset,
        "source_timestamp": record.timestamp_ms,
        "original_key": key,
        "original_value": value,
        "original_headers": [{"key": k, "value": v} for k, v in headers],
        "reason": reason,
        "error_type": error_type,
        "failed_at": now_ms,
        "worker": settings.worker_id,
    }
