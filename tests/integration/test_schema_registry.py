"""A worker with SENDONCE_SCHEMA_REGISTRY_URL against the real broker.

The registry is the FAKE of sendonce/dev/registry.py served over HTTP on loopback (no
real schema registry could be had from the package registries reachable here): this
proves the worker's side, i.e. that results are written in the Confluent wire format
with the registered id, and that intents are accepted in both framings, including one
written with a version registered after the worker started (resolved off the loop).
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from sendonce.cli.main import main
from sendonce.dev.registry import FakeSchemaRegistry
from sendonce.keys import complete_intent, idempotency_key_for
from sendonce.ops.publish import IntentPublisher
from sendonce.schemas.codec import SchemaCodec, default_codec
from sendonce.schemas.registry import SchemaRegistryClient, local_schema_texts, registry_codec
from tests.integration.harness import Pipeline, intent

TOOL = (sys.executable, "-m", "sendonce.cli")

pytestmark = pytest.mark.integration


class _Recording:
    """Decodes like the codec and keeps each value's raw bytes."""

    def __init__(self, codec: SchemaCodec) -> None:
        self.codec = codec
        self.raw: list[bytes] = []

    def decode(self, data: bytes, expect: str | None = None) -> dict[str, Any]:
        self.raw.append(bytes(data))
        return self.codec.decode(data, expect)


def test_worker_writes_wire_format_and_reads_both(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = pipeline.settings
    with FakeSchemaRegistry() as registry:
        client = SchemaRegistryClient(registry.url)
        with monkeypatch.context() as env:
            env.setenv("SENDONCE_SCHEMA_REGISTRY_URL", registry.url)
            env.setenv("SENDONCE_TOPIC_PREFIX", s.topic_prefix)
            assert main(["schemas", "register"]) == 0
        codec = registry_codec(client, prefix=s.topic_prefix)
        result_id = codec.registry_id("EmailResult")
        assert result_id is not None

        worker = pipeline.start_worker(SENDONCE_SCHEMA_REGISTRY_URL=registry.url)
        framed = [intent(n) for n in range(3)]
        single = [intent(n) for n in range(3, 6)]
        with IntentPublisher(s.bootstrap_servers, s.topics.intents, codec) as publisher:
            for i in framed:
                publisher.publish(i)
        with IntentPublisher(s.bootstrap_servers, s.topics.intents, default_codec()) as p2:
            for i in single:
                p2.publish(i)
            # A newer EmailIntent version, registered after the worker started.
            newer = json.loads(local_schema_texts()["EmailIntent"])
            newer["fields"].append({"name": "priority", "type": "string", "default": "normal"})
            new_text = json.dumps(newer)
            new_id = client.register(f"{s.topic_prefix}email.intents-value", new_text)
            writer = SchemaCodec(None)
            writer.register_id(new_id, new_text)
            writer.use_registry_id("EmailIntent", new_id)
            late = complete_intent(intent(6))
            p2.publish_raw(
                idempotency_key_for(late).value.encode(),
                writer.encode("EmailIntent", {**late, "priority": "high"}),
            )

        recording = _Recording(codec)
        pipeline.watcher.codec = recording  # type: ignore[assignment]
        results = pipeline.wait_results(7, timeout=180)
        assert worker.alive(), worker.log()
        outcomes = sorted(str(r.value.get("outcome", r.value.get("error_type"))) for r in results)
        assert outcomes == ["SENT"] * 7, [r.value for r in results]
        assert recording.raw
        for raw in recording.raw:
            assert raw[0] == 0, raw[:10].hex()
            assert int.from_bytes(raw[1:5], "big") == result_id
        # Decodable by id alone: a tool codec that knows nothing fetches the schema.
        tool = SchemaCodec()
        tool.id_resolver = SchemaRegistryClient(registry.url).schema
        tool.fetch_on_decode = True
        assert tool.decode(recording.raw[0], expect="EmailResult")["outcome"] == "SENT"

        # The operator tools read both framings too: a dry-run replay of the whole
        # topic (three framings' worth of intents, one written with a schema id the
        # tool has never seen) resolves every intent against the ledger.
        dry = subprocess.run(
            [*TOOL, "replay", "--from", "earliest", "--dry-run", "--json"],
            env=pipeline.env(SENDONCE_SCHEMA_REGISTRY_URL=registry.url),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert dry.returncode == 0, dry.stderr
        counts = json.loads(dry.stdout)
        assert counts["selected"] == 7, counts
        assert counts["outcomes"]["DUPLICATE"] == 7, counts
