"""The worker's count of its group's members (streams.app.GroupMembers), on a fake admin.

The count decides each worker's share of the mailboxes' limits; a lookup that fails
must leave the share alone rather than guess.
"""

from __future__ import annotations

from concurrent.futures import Future
from types import SimpleNamespace
from typing import Any

from sendonce.streams.app import GroupMembers


class FakeAdmin:
    def __init__(self, members: int | None = None, error: Exception | None = None) -> None:
        self.members = members
        self.error = error
        self.asked: list[tuple[list[str], float]] = []

    def describe_consumer_groups(
        self, group_ids: list[str], request_timeout: float
    ) -> dict[str, Future[Any]]:
        self.asked.append((group_ids, request_timeout))
        fut: Future[Any] = Future()
        if self.error is not None:
            fut.set_exception(self.error)
        else:
            fut.set_result(SimpleNamespace(members=[object()] * (self.members or 0)))
        return {group_ids[0]: fut}


def test_counts_the_members_the_coordinator_names() -> None:
    admin = FakeAdmin(members=3)
    group = GroupMembers("unused:9092", "sendonce-app", admin=admin, timeout_s=2.0)
    assert group.count() == 3
    assert admin.asked == [(["sendonce-app"], 2.0)]


def test_an_empty_or_failed_answer_says_nothing() -> None:
    assert GroupMembers("x:9092", "g", admin=FakeAdmin(members=0)).count() is None
    failing = FakeAdmin(error=RuntimeError("coordinator not available"))
    assert GroupMembers("x:9092", "g", admin=failing).count() is None
