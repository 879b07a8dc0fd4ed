"""Producers' and operators' tools: publish intents, read results, replay, trace, review.

They read the topics and the ledger's changelog with short-lived Kafka clients, and run
the worker's own decisions (:mod:`sendonce.streams`) where they need one, never a copy.
"""
