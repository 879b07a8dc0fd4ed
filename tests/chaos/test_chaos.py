"""A short torture run: real broker, Graph emulator, two workers, kills and a rebalance.

Not in the default run (marker ``chaos``); run it with ``pytest -m chaos tests/chaos``.
The seed comes from ``SENDONCE_CHAOS_SEED`` (to replay a failure) or is drawn fresh, and
is printed in the summary line either way.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from tests.chaos.harness import plan_workload, run_chaos

pytestmark = pytest.mark.chaos


def test_workload_plan_is_seeded_and_has_the_promised_mix() -> None:
    plan = plan_workload(600, seed=5, bursts=8)
    assert plan == plan_workload(600, seed=5, bursts=8)
    kinds = [r.kind for burst in plan for r in burst]
    assert len(kinds) == 600
    assert kinds.count("repeat") >= 0.3 * 600
    assert kinds.count("reuse") >= 2
    assert kinds.count("bad") >= 2


@pytest.mark.timeout(900)
def test_short_chaos_run_sends_each_key_at_most_once_and_loses_nothing(tmp_path: Path) -> None:
    seed = int(os.environ.get("SENDONCE_CHAOS_SEED") or random.SystemRandom().randrange(1, 2**31))
    report = run_chaos(
        600,
        2,
        seed,
        kills=3,
        rebalances=1,
        duration=30.0,
        root=tmp_path / "chaos",
        keep=True,
    )
    print(report.summary())
    print(report.details())
    assert report.kills == 3, report.summary()
    assert report.delivered_twice == 0, (report.summary(), report.delivered_twice_keys)
    assert report.lost == 0, (report.summary(), report.lost_records)
    assert report.drained, report.details()
