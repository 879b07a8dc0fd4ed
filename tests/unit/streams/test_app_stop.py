"""The worker's stop when the broker is gone, and its own partition lines (streams.app)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from typing import Any

from aiokafka.consumer.fetcher import Fetcher
from faust.types import TP

from sendonce.streams.app import _partitions, close_fetcher_quietly


async def _fetch_backing_off(failed: asyncio.Event) -> bool:
    # What aiokafka's _proc_fetch_request does when a fetch fails: sleep its backoff.
    try:
        raise ConnectionError("Connection at 127.0.0.1:9092 closed")
    except ConnectionError:
        failed.set()
        await asyncio.sleep(60)
        return False


class _FetcherState:
    """The attributes Fetcher.close uses, around one fetch sleeping its backoff."""

    def __init__(self, pending: asyncio.Task[Any]) -> None:
        self._closed = False
        self._fetch_task: asyncio.Task[None] = asyncio.ensure_future(asyncio.sleep(60))
        self._fetch_waiters: set[asyncio.Future[Any]] = set()
        self._pending_tasks = {pending}

    def _notify(self, future: asyncio.Future[Any]) -> None:
        future.set_result(None)


def test_closing_the_consumer_while_a_fetch_backs_off_does_not_raise() -> None:
    # aiokafka's own close re-raises the backing-off fetch's cancellation, which killed
    # Faust's consumer thread and held the stop for mode's 60 s shutdown timeout.
    close_fetcher_quietly()

    async def scenario() -> bool:
        failed = asyncio.Event()
        pending = asyncio.ensure_future(_fetch_backing_off(failed))
        await failed.wait()
        state = _FetcherState(pending)
        await Fetcher.close(state)
        return state._closed and pending.cancelled()

    assert asyncio.run(scenario())


def test_partition_lines_name_the_lanes_topics_with_ranges_and_counts() -> None:
    tps = {TP(t, p) for p in (0, 1, 2, 5, 7, 8) for t in ("in", "cmd")} | {TP("changelog", 0)}
    assert _partitions(tps, ["in", "deferred", "cmd"]) == (
        "0-2,5,7-8 (6) of in, cmd; none (0) of deferred"
    )


def test_a_stop_that_outlives_its_bound_ends_the_process_with_exit_code_1() -> None:
    # The last resort behind STOP_BOUND_S: whatever still waits (here: a sleep that
    # would outlast the test), the process ends once the bound has passed.
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            "import time; from sendonce.streams.app import _exit_after\n"
            "_exit_after(1.0)\ntime.sleep(60)",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert child.returncode == 1
    assert "stop not finished 1 s after the batches in flight; exiting now" in child.stderr
