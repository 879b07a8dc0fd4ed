"""The torture harness's cluster options: the schedule of leader kills, the summary line
and the command line (no broker, no workers)."""

from __future__ import annotations

import argparse
import random

import pytest

from sendonce.dev.chaos import ChaosReport, _schedule, add_cli


def _events(leader_kills: int) -> list[tuple[float, str, int, str]]:
    rng = random.Random(7)
    events = _schedule(
        rng, 10, 30.0, kills=3, rebalances=1, broker_restarts=1, leader_kills=leader_kills
    )
    return [(e.at, e.action, e.arg, e.crash_at) for e in events]


def test_leader_kills_add_kill_restart_pairs_and_leave_the_seeds_schedule_alone() -> None:
    plain = _events(0)
    with_kills = _events(2)

    assert [e for e in with_kills if not e[1].startswith("leader-")] == plain
    kills = [e[0] for e in with_kills if e[1] == "leader-kill"]
    restarts = [e[0] for e in with_kills if e[1] == "leader-restart"]
    assert len(kills) == len(restarts) == 2
    for at in kills:
        assert 3.0 <= at <= 24.0  # within the bursts, not at the very start
    # Every victim comes back 2-5 s after its kill.
    assert all(any(2.0 <= r - k <= 5.0 for r in restarts) for k in kills)


def test_summary_names_the_cluster_only_for_a_cluster_run() -> None:
    single = ChaosReport(seed=1)
    cluster = ChaosReport(seed=1, brokers=3, leader_kills=2)

    assert single.summary().endswith("seed=1")
    assert cluster.summary().endswith("seed=1 brokers=3 leader_kills=2")


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sendonce dev")
    add_cli(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_cli_options_and_leader_kills_without_a_cluster_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    default = _parse(["chaos"])
    assert (default.brokers, default.leader_kills) == (1, 0)
    args = _parse(["chaos", "--brokers", "3", "--leader-kills", "2"])
    assert (args.brokers, args.leader_kills) == (3, 2)

    refused = _parse(["chaos", "--leader-kills", "1"])
    assert refused.func(refused) == 2
    assert "--leader-kills needs a cluster" in capsys.readouterr().err
