"""Every Graph test runs under a log capture that must end with no secret in it.

The check itself (:func:`tests.unit.log_leaks.no_secrets_in_logs`) is shared with the
emulator's tests, which run under the same rule.
"""

from __future__ import annotations

from tests.unit.log_leaks import no_secrets_in_logs

__all__ = ["no_secrets_in_logs"]
