"""A provider that accepts everything instantly and keeps nothing.

For benchmarks: it isolates the cost of the ledger protocol from any provider.
Its lookups cannot prove anything, so reconciliation leaves a key AMBIGUOUS.
"""

from __future__ import annotations

import time

from sendonce.connectors.base import (
    LookupResult,
    LookupStatus,
    OutgoingEmail,
    SendOutcome,
    SendStatus,
)
from sendonce.settings import Settings


class NullProvider:
    """Accepts every message at once."""

    name = "null"

    def __init__(self) -> None:
        self.accepted = 0

    async def send(self, outgoing: OutgoingEmail) -> SendOutcome:
        """Accept immediately."""
        self.accepted += 1
        return SendOutcome(
            SendStatus.ACCEPTED,
            self.name,
            provider_request_id=outgoing.attempt_id,
            provider_message_id=outgoing.message_id,
            internet_message_id=f"<{outgoing.message_id}>",
            accepted_at_ms=int(time.time() * 1000),
        )

    async def lookup(self, idempotency_key: str, message_id: str, sender: str) -> LookupResult:
        """Nothing is kept, so nothing can be proven."""
        return LookupResult(LookupStatus.UNKNOWN, self.name, detail="null provider keeps no record")

    async def close(self) -> None:
        """Nothing to release."""


def from_settings(settings: Settings) -> NullProvider:
    """The null provider (``SENDONCE_PROVIDER=null``): no setting applies to it.

    Registered in :data:`sendonce.providers.PROVIDERS`.
    """
    return NullProvider()
