"""The outbox provider: each accepted email becomes one RFC 5322 ``.eml`` file.

It is the embedded default (the demo and the tests use it) and it behaves like a
provider with native idempotency: the file name is derived from the idempotency
key and created with ``link(2)``, which fails if the name exists, so at most one
file per key can ever appear, and :meth:`OutboxProvider.lookup` is definitive.

Outcome classification:

* recipient domain ending in ``.invalid`` (RFC 2606) -> REJECTED
  (lets demos and tests show a permanent failure);
* the folder cannot be written (disk full, permissions) -> NOT_SENT_RETRYABLE,
  since no file for the key exists;
* file written -> ACCEPTED; file already present -> ACCEPTED with the first
  acceptance's ids (an earlier attempt landed).
"""

from __future__ import annotations

import asyncio
import email.policy
import hashlib
import os
import signal
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from email.utils import format_datetime, parsedate_to_datetime
from pathlib import Path

from sendonce.connectors.base import (
    LookupResult,
    LookupStatus,
    OutgoingEmail,
    SendOutcome,
    SendStatus,
)
from sendonce.settings import Settings

KEY_HEADER = "X-Sendonce-Idempotency-Key"
ATTEMPT_HEADER = "X-Sendonce-Attempt-Id"


@dataclass(frozen=True)
class OutboxFault:
    """Test hook: SIGKILL this process right after the Nth accepted send.

    Parsed from ``kill-after-accept:N``. The kill lands after the ``.eml`` file
    is durable and before the worker can record SENT, which is exactly the
    "provider accepted, worker died" row of design.md's failure table.
    """

    kill_after_accept: int

    @classmethod
    def parse(cls, spec: str) -> OutboxFault | None:
        """Parse a fault spec; empty means no fault."""
        spec = spec.strip()
        if not spec:
            return None
        kind, _, arg = spec.partition(":")
        if kind != "kill-after-accept" or not arg.isdigit() or int(arg) < 1:
            raise ValueError(
                f"unknown outbox fault {spec!r}; expected kill-after-accept:N with N >= 1"
            )
        return cls(int(arg))


def from_settings(settings: Settings) -> OutboxProvider:
    """The outbox provider for ``settings`` (``SENDONCE_PROVIDER=outbox``), with its test fault.

    Registered in :data:`sendonce.providers.PROVIDERS`.
    """
    return OutboxProvider(settings.outbox_dir, OutboxFault.parse(settings.outbox_fault))


def eml_name(idempotency_key: str) -> str:
    """File name of the key's message: a hash, so any key is a safe file name."""
    return hashlib.sha256(idempotency_key.encode()).hexdigest()[:40] + ".eml"


class OutboxProvider:
    """Writes accepted emails into a folder as ``.eml`` files."""

    name = "outbox"

    def __init__(self, directory: Path, fault: OutboxFault | None = None) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._tmp = self.directory / ".tmp"
        self._tmp.mkdir(exist_ok=True)
        self._fault = fault
        self._accepted = 0

    async def send(self, outgoing: OutgoingEmail) -> SendOutcome:
        """Write the message file, or report why not."""
        for addr in (*outgoing.to, *outgoing.cc, *outgoing.bcc):
            if addr.rsplit("@", 1)[-1].lower().endswith(".invalid"):
                return SendOutcome(
                    SendStatus.REJECTED,
                    self.name,
                    provider_request_id=outgoing.attempt_id,
                    error_code="recipient_domain_invalid",
                    error_message="a recipient's domain does not exist (.invalid)",
                )
        try:
            outcome = await asyncio.to_thread(self._write, outgoing)
        except OSError as exc:
            return SendOutcome(
                SendStatus.NOT_SENT_RETRYABLE,
                self.name,
                provider_request_id=outgoing.attempt_id,
                error_code="outbox_unwritable",
                error_message=f"{type(exc).__name__}: {exc.strerror or 'I/O error'}",
            )
        self._accepted += 1
        if self._fault and self._accepted == self._fault.kill_after_accept:
            os.kill(os.getpid(), signal.SIGKILL)
        return outcome

    def _write(self, outgoing: OutgoingEmail) -> SendOutcome:
        final = self.directory / eml_name(outgoing.idempotency_key)
        now = time.time()
        data = render_eml(outgoing, now)
        tmp = self._tmp / f"{final.name}.{outgoing.attempt_id}.{os.getpid()}"
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, final)
        except FileExistsError:
            # An earlier attempt landed; native idempotency answers with its ids.
            return self._accepted_from_file(final)
        finally:
            tmp.unlink(missing_ok=True)
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return SendOutcome(
            SendStatus.ACCEPTED,
            self.name,
            provider_request_id=outgoing.attempt_id,
            provider_message_id=final.name,
            internet_message_id=f"<{outgoing.message_id}>",
            accepted_at_ms=int(now * 1000),
            evidence={"path": str(final)},
        )

    def _accepted_from_file(self, path: Path) -> SendOutcome:
        found = self._read(path)
        return SendOutcome(
            SendStatus.ACCEPTED,
            self.name,
            provider_request_id=found.provider_request_id,
            provider_message_id=found.provider_message_id,
            internet_message_id=found.internet_message_id,
            accepted_at_ms=found.accepted_at_ms,
            evidence={"path": str(path), "already_present": "true"},
        )

    def _read(self, path: Path) -> LookupResult:
        with open(path, "rb") as fh:
            headers = BytesHeaderParser(policy=email.policy.default).parse(fh)
        accepted_at_ms = None
        if headers["Date"]:
            accepted_at_ms = int(parsedate_to_datetime(str(headers["Date"])).timestamp() * 1000)
        return LookupResult(
            LookupStatus.FOUND,
            self.name,
            provider_request_id=str(headers[ATTEMPT_HEADER] or "") or None,
            provider_message_id=path.name,
            internet_message_id=str(headers["Message-ID"] or "") or None,
            accepted_at_ms=accepted_at_ms,
            detail=f"found {path.name}",
        )

    async def lookup(self, idempotency_key: str, message_id: str, sender: str = "") -> LookupResult:
        """Definitive: the file for the key exists or no attempt ever landed."""
        path = self.directory / eml_name(idempotency_key)
        if not path.exists():
            return LookupResult(
                LookupStatus.NOT_FOUND_DEFINITIVE, self.name, detail=f"no {path.name}"
            )
        return await asyncio.to_thread(self._read, path)

    async def close(self) -> None:
        """Nothing to release."""


def render_eml(outgoing: OutgoingEmail, now: float) -> bytes:
    """Render the RFC 5322 message the outbox stores for ``outgoing``."""
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = outgoing.sender
    msg["To"] = ", ".join(outgoing.to)
    if outgoing.cc:
        msg["Cc"] = ", ".join(outgoing.cc)
    if outgoing.bcc:
        # Kept in the stored copy, as a sent-items copy keeps it; an MTA would strip it.
        msg["Bcc"] = ", ".join(outgoing.bcc)
    msg["Subject"] = outgoing.subject
    msg["Date"] = format_datetime(datetime.fromtimestamp(now, tz=UTC))
    msg["Message-ID"] = f"<{outgoing.message_id}>"
    msg[KEY_HEADER] = outgoing.idempotency_key
    msg[ATTEMPT_HEADER] = outgoing.attempt_id
    for name, value in outgoing.headers:
        if name.lower().startswith("x-"):
            msg[name] = value
    text = outgoing.text_body
    if outgoing.template_id is not None:
        params = "\n".join(f"{k}: {v}" for k, v in outgoing.template_params)
        text = f"[template {outgoing.template_id}]\n{params}\n"
    if text is not None:
        msg.set_content(text)
    if outgoing.html_body:  # an empty one is none, as for Graph and the fingerprint
        if text is None:
            msg.set_content(outgoing.html_body, subtype="html")
        else:
            msg.add_alternative(outgoing.html_body, subtype="html")
    return msg.as_bytes()
