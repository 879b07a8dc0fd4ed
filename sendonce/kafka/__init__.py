"""Kafka plumbing shared by every floor above the foundation: topics, clients, readers.

Imports only the foundation (:mod:`sendonce.settings`, :mod:`sendonce.logs`).
"""
