"""Every emulator test runs under a log capture that must end with no secret in it.

The emulator must never log a token, secret or message body; the check
(:func:`tests.unit.log_leaks.no_secrets_in_logs`) is the Graph connector tests' own.
"""

from __future__ import annotations

from tests.unit.log_leaks import no_secrets_in_logs

__all__ = ["no_secrets_in_logs"]
