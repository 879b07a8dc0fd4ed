"""The Graph emulator's admin API: what it delivered and saw, and its fault rules.

For tests and chaos runs: plain JSON over HTTP without auth (``GET /_admin/deliveries``,
``GET /_admin/requests``, ``GET /_admin/concurrency``, ``GET|POST|DELETE /_admin/faults``,
``DELETE /_admin/faults/{id}``, ``POST /_admin/reset``, ``POST /_admin/expire-tokens``),
and the same as Python methods. A delivery is what a recipient would receive, so a test
counts duplicates here rather than trusting the client's view. No admin answer carries a
message body, token or secret.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from aiohttp import web

from sendonce.emulator.faults import Fault
from sendonce.emulator.state import EmulatorState
from sendonce.emulator.store import TokenRecord

__all__ = ["AdminApi"]


class AdminApi(EmulatorState):
    """Inspection and control of the emulator, as methods and as ``/_admin`` routes."""

    def deliveries(
        self, mailbox: str | None = None, key: str | None = None
    ) -> list[dict[str, Any]]:
        """Every delivery, oldest first, optionally for one mailbox and/or key."""
        with self._lock:
            out = [d.to_dict() for d in self._deliveries]
        if mailbox is not None:
            out = [d for d in out if d["mailbox"] == mailbox.lower()]
        if key is not None:
            out = [d for d in out if d["idempotency_key"] == key]
        return out

    def drafts(self, mailbox: str | None = None) -> list[dict[str, Any]]:
        """Messages still in a Drafts folder (never sent), oldest first, without bodies:
        mailbox, immutable id and extended properties (the idempotency key among them)."""
        with self._lock:
            found = [
                {
                    "mailbox": m.mailbox,
                    "immutable_id": m.immutable_id,
                    "extended_properties": {p["id"]: p["value"] for p in m.extended},
                }
                for box, messages in self._messages.items()
                if mailbox is None or box == mailbox.lower()
                for m in messages
                if m.folder == "drafts"
            ]
        return found

    def purge_message(self, mailbox: str, message_id: str) -> bool:
        """Delete a message for good (as a mailbox owner emptying Deleted Items, or a
        retention policy, does): later reads by any of its ids answer 404. Its
        deliveries stay recorded. Returns whether there was such a message."""
        with self._lock:
            messages = self._messages.get(mailbox.lower(), [])
            kept = [m for m in messages if not m.matches_id(message_id)]
            self._messages[mailbox.lower()] = kept
            return len(kept) < len(messages)

    def requests(self, kind: str = "graph", mailbox: str | None = None) -> list[dict[str, Any]]:
        """Request records of ``kind`` (graph, token, discovery or all), oldest first."""
        with self._lock:
            out = [r.to_dict() for r in self._requests if kind in ("all", r.kind)]
        if mailbox is not None:
            out = [r for r in out if r["mailbox"] == mailbox.lower()]
        return out

    def sensitive_values(self) -> set[str]:
        """Client secrets, issued access tokens and message bodies this emulator has seen.

        For leak tests: none of these may appear in any log record.
        """
        with self._lock:
            return set(self._sensitive)

    def concurrency(self) -> dict[str, Any]:
        """Observed maximum in-flight requests per mailbox and the 429s it caused.

        ``rate_throttled``: sends refused by the per-minute cap (``sends_per_minute``).
        """
        with self._lock:
            return {
                "limit": self.max_concurrency,
                "max_in_flight": dict(self._max_in_flight),
                "in_flight": {k: v for k, v in self._in_flight.items() if v},
                "throttled": dict(self._concurrency_throttled),
                "sends_per_minute": self.sends_per_minute,
                "rate_throttled": dict(self._rate_throttled),
            }

    def faults(self) -> list[dict[str, Any]]:
        """The fault rules with their remaining counts."""
        return [f.to_dict() for f in self._faults.list()]

    def add_fault(self, fault: Fault | Mapping[str, Any]) -> int:
        """Add a fault rule; returns its id."""
        return self._faults.add(Fault.coerce(fault))

    def set_faults(self, faults: Iterable[Fault | Mapping[str, Any]]) -> list[int]:
        """Replace every fault rule."""
        parsed = [Fault.coerce(f) for f in faults]
        self._faults.clear()
        return [self._faults.add(f) for f in parsed]

    def remove_fault(self, fault_id: int) -> bool:
        """Remove one fault rule."""
        return self._faults.remove(fault_id)

    def clear_faults(self) -> None:
        """Remove every fault rule."""
        self._faults.clear()

    def reset(self, seed: int | None = None) -> None:
        """Forget messages, deliveries, records, concurrency and send-rate stats, faults; reseed.

        Issued tokens stay valid: clients keep their cached tokens across test cases.
        """
        self._faults.clear()
        self._faults.reseed(self._seed if seed is None else seed)
        with self._lock:
            self._messages.clear()
            self._deliveries.clear()
            self._requests.clear()
            self._max_in_flight = {k: v for k, v in self._in_flight.items() if v}
            self._concurrency_throttled.clear()
            self._send_times.clear()
            self._rate_throttled.clear()

    def expire_tokens(self) -> int:
        """Make every issued access token invalid (Graph then answers 401); returns count."""
        with self._lock:
            live = {t: r for t, r in self._tokens.items() if r.expires_at > time.monotonic()}
            for token, record in live.items():
                # Kept (not dropped) so Graph answers "expired", as it does for an old token.
                self._tokens[token] = TokenRecord(record.client_id, expires_at=0.0)
        return len(live)

    # ------------------------------------------------------------------ admin (HTTP)

    def _add_admin_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/_admin/deliveries", self._admin_deliveries)
        r.add_get("/_admin/requests", self._admin_requests)
        r.add_get("/_admin/concurrency", self._admin_concurrency)
        r.add_get("/_admin/faults", self._admin_faults_get)
        r.add_post("/_admin/faults", self._admin_faults_post)
        r.add_delete("/_admin/faults", self._admin_faults_delete)
        r.add_delete("/_admin/faults/{id}", self._admin_fault_delete)
        r.add_post("/_admin/reset", self._admin_reset)
        r.add_post("/_admin/expire-tokens", self._admin_expire_tokens)

    async def _admin_deliveries(self, request: web.Request) -> web.Response:
        q = request.query
        return web.json_response(self.deliveries(q.get("mailbox"), q.get("key")))

    async def _admin_requests(self, request: web.Request) -> web.Response:
        q = request.query
        return web.json_response(self.requests(q.get("kind", "graph"), q.get("mailbox")))

    async def _admin_concurrency(self, request: web.Request) -> web.Response:
        return web.json_response(self.concurrency())

    async def _admin_faults_get(self, request: web.Request) -> web.Response:
        return web.json_response(self.faults())

    async def _admin_faults_post(self, request: web.Request) -> web.Response:
        """Body: one fault object, a list, or ``{"faults": [...]}``; ``?replace=1`` replaces."""
        try:
            data = await request.json()
            if isinstance(data, dict) and "faults" in data:
                data = data["faults"]
            items = data if isinstance(data, list) else [data]
            parsed = [Fault.from_dict(item) for item in items]
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        if request.query.get("replace", "").lower() in ("1", "true", "yes"):
            ids = self.set_faults(parsed)
        else:
            ids = [self.add_fault(f) for f in parsed]
        return web.json_response({"ids": ids})

    async def _admin_faults_delete(self, request: web.Request) -> web.Response:
        self.clear_faults()
        return web.json_response({"cleared": True})

    async def _admin_fault_delete(self, request: web.Request) -> web.Response:
        try:
            fault_id = int(request.match_info["id"])
        except ValueError:
            return web.json_response({"error": "fault id must be an integer"}, status=400)
        if not self.remove_fault(fault_id):
            return web.json_response({"error": "no such fault"}, status=404)
        return web.json_response({"removed": fault_id})

    async def _admin_reset(self, request: web.Request) -> web.Response:
        seed: int | None = None
        if request.can_read_body:
            try:
                data = await request.json()
                seed = None if data.get("seed") is None else int(data["seed"])
            except (ValueError, TypeError, AttributeError) as exc:
                return web.json_response({"error": str(exc)}, status=400)
        self.reset(seed)
        return web.json_response({"reset": True})

    async def _admin_expire_tokens(self, request: web.Request) -> web.Response:
        return web.json_response({"expired": self.expire_tokens()})
