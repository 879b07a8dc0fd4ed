"""Inbound provider webhooks: the receiver that writes them to ``email.webhooks.raw``.

* :mod:`connectors.webhooks.receiver`: the aiohttp app (:class:`WebhookReceiver`),
  ``sendonce receiver`` (:func:`run_receiver`) and :class:`ReceiverThread`.
* :mod:`connectors.webhooks.graph`: Graph notifications, clientState, dedupe ids.
* :mod:`connectors.webhooks.signed`: Standard Webhooks style HMAC signatures.
* :mod:`connectors.webhooks.producer`: the receiver's Kafka sink (acks=all, awaited).
"""

from __future__ import annotations

from sendonce.connectors.webhooks.graph import ClientStateVerifier, dedupe_id, parse_notifications
from sendonce.connectors.webhooks.producer import EventSink, KafkaEventSink, ProduceError
from sendonce.connectors.webhooks.receiver import (
    ReceiverConfig,
    ReceiverThread,
    WebhookReceiver,
    build_app,
    run_receiver,
)
from sendonce.connectors.webhooks.signed import SignatureError, sign, verify_signature

__all__ = [
    "ClientStateVerifier",
    "EventSink",
    "KafkaEventSink",
    "ProduceError",
    "ReceiverConfig",
    "ReceiverThread",
    "SignatureError",
    "WebhookReceiver",
    "build_app",
    "dedupe_id",
    "parse_notifications",
    "run_receiver",
    "sign",
    "verify_signature",
]
