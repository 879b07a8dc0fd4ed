"""A batch is acked only after the loop body finished with it; never when it raised."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from sendonce.settings import Settings
from sendonce.streams.lanes import acked_batches


class FakeStream:
    """Faust's stream surface acked_batches uses: noack_take and ack."""

    def __init__(self, batches: list[list[str]]) -> None:
        self.batches = batches
        self.acked: list[str] = []

    async def noack_take(self, max_: int, within: float) -> AsyncIterator[list[str]]:
        for batch in self.batches:
            yield list(batch)

    async def ack(self, event: Any) -> bool:
        self.acked.append(event)
        return True


def test_batches_are_acked_after_the_body_finished() -> None:
    stream = FakeStream([["a", "b"], ["c"]])

    async def consume() -> list[list[str]]:
        seen = []
        async for events in acked_batches(stream, Settings()):
            assert stream.acked == [e for b in seen for e in b]  # not before the body ran
            seen.append(events)
        return seen

    asyncio.run(consume())
    assert stream.acked == ["a", "b", "c"]


@pytest.mark.parametrize("failure", [RuntimeError("broker gone"), asyncio.CancelledError()])
def test_a_batch_whose_body_raised_is_never_acked(failure: BaseException) -> None:
    stream = FakeStream([["a", "b"], ["c", "d"]])

    async def consume() -> None:
        batches = acked_batches(stream, Settings())
        try:
            async for events in batches:
                if events == ["c", "d"]:
                    raise failure
        finally:
            await batches.aclose()  # what the event loop's finalizer does

    with pytest.raises(type(failure)):
        asyncio.run(consume())
    assert stream.acked == ["a", "b"]  # the failed batch stays unacked: redelivered
