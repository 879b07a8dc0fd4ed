"""Torture runs in the default test run: real broker, Graph emulator, workers, kills.

``test_ci_torture_run`` is the CI variant of issue 5 (a few thousand intents, several
kills including the three exact crash points, a rebalance) and of issue 15 (two pauses
beyond the session timeout: one at a pause point, one at a random moment). Its seed comes from
``SENDONCE_CHAOS_SEED`` (to replay a failure) or is drawn fresh, and is printed in the
summary line either way. The long variant is a command (``make torture``; README).

``test_seed_5_schedule`` replays the schedule that exposed intents committed without
a result after rebalances (Faust acking records it skipped; fixed by committing
source offsets ourselves, see ``streams/offsets.py``).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from tests.chaos.harness import ChaosReport, plan_workload, run_chaos

pytestmark = [pytest.mark.integration, pytest.mark.chaos]


def test_workload_plan_is_seeded_and_has_the_promised_mix() -> None:
    plan = plan_workload(600, seed=5, bursts=8)
    assert plan == plan_workload(600, seed=5, bursts=8)
    kinds = [r.kind for burst in plan for r in burst]
    assert len(kinds) == 600
    assert kinds.count("repeat") >= 0.3 * 600
    assert kinds.count("reuse") >= 2
    assert kinds.count("bad") >= 2
    for rare in ("oversize", "poison-deferred", "poison-command"):
        assert kinds.count(rare) >= 1, rare


def _assert_guarantee(report: ChaosReport) -> None:
    print(report.summary())
    print(report.details())
    assert report.delivered_twice == 0, (report.summary(), report.delivered_twice_keys)
    assert report.lost == 0, (report.summary(), report.lost_records)
    assert report.stranded == 0, (report.summary(), report.stranded_keys)
    assert report.poison_dead_lettered == report.poison, report.summary()
    assert report.poison_delivered == 0, report.summary()
    assert report.drained, report.details()


@pytest.mark.timeout(1200)
def test_ci_torture_run(tmp_path: Path) -> None:
    seed = int(os.environ.get("SENDONCE_CHAOS_SEED") or random.SystemRandom().randrange(1, 2**31))
    report = run_chaos(
        2000,
        2,
        seed,
        kills=4,
        rebalances=1,
        pauses=2,
        duration=40.0,
        drain_timeout=300.0,
        root=tmp_path / "chaos",
        keep=True,
        # As `make torture` runs: draft creates are faulted too, and every ambiguous
        # answer is settled through the draft (seed 5 below keeps sendmail covered).
        graph_mode="draft-send",
    )
    assert report.kills == 4, report.summary()
    # The pause at a random moment always happens; the pause point may not be reached.
    assert report.pauses >= 1, report.details()
    _assert_guarantee(report)


@pytest.mark.timeout(900)
def test_seed_5_schedule(tmp_path: Path) -> None:
    report = run_chaos(
        300,
        2,
        5,
        kills=1,
        rebalances=1,
        duration=20.0,
        drain_timeout=200.0,
        root=tmp_path / "chaos",
        keep=True,
        crash_points=False,
    )
    _assert_guarantee(report)
