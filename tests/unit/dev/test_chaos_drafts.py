"""The torture harness in draft-send mode: the report, the faults, the command line."""

from __future__ import annotations

import argparse
import random

from sendonce.dev.chaos import ChaosReport, _ambiguous_state, add_cli, burst_faults


def test_the_mode_and_the_causes_of_open_ambiguity_are_reported() -> None:
    sendmail = ChaosReport(seed=1)
    drafts = ChaosReport(
        seed=1, graph_mode="draft-send", ambiguous_causes={"ambiguous:draft_gone": 2}
    )
    assert sendmail.summary().endswith("seed=1")
    assert drafts.summary().endswith("seed=1 graph_mode=draft-send")
    assert "ambiguous_open_by_cause=ambiguous:draft_gone:2 graph_mode=draft-send" in (
        drafts.details()
    )
    assert "ambiguous_open_by_cause=- graph_mode=sendmail" in sendmail.details()


def test_an_ambiguous_key_settled_failed_is_not_open() -> None:
    # A draft proven unsent past the retry budget ends FAILED: settled, not for review.
    records = [
        {"idempotency_key": "k1", "outcome": "AMBIGUOUS"},
        {"idempotency_key": "k1", "outcome": "FAILED"},
        {"idempotency_key": "k2", "outcome": "AMBIGUOUS"},
        {"idempotency_key": "k3", "outcome": "AMBIGUOUS"},
        {"idempotency_key": "k3", "outcome": "SENT", "reconciled": True},
    ]
    ambiguous, sent, reconciled, failed = _ambiguous_state(records)
    assert ambiguous - sent - failed == {"k2"}
    assert reconciled == {"k3"}


def test_faults_hit_draft_creates_and_the_seed_draws_the_same_rules() -> None:
    rules = burst_faults(random.Random(5))
    again = burst_faults(random.Random(5))
    assert rules == again
    calls = [r for r in rules if r["kind"] in ("throttle", "unavailable", "reset", "timeout")]
    assert calls and all("createMessage" in r["operations"] for r in calls)


def test_the_command_line_takes_the_graph_mode() -> None:
    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers())
    args = parser.parse_args(["chaos", "--graph-mode", "draft-send"])
    assert args.graph_mode == "draft-send"
    assert parser.parse_args(["chaos"]).graph_mode == "sendmail"
