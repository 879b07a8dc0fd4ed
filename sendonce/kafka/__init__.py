"""Kafka plumbing shared by every floor above the foundation: topics, clients, readers.

* :mod:`sendonce.kafka.clients`: librdkafka configurations (producers, readers).
* :mod:`sendonce.kafka.producer`: the awaited producer of the worker and the receiver.
* :mod:`sendonce.kafka.follower`: following topics as records arrive (results).
* :mod:`sendonce.kafka.topics`: the topics and their creation.
* :mod:`sendonce.kafka.probe`: is a broker there, are the topics? (tools ask first).

Imports only the foundation (:mod:`sendonce.settings`, :mod:`sendonce.logs`).
"""
