"""A package-wide log capture that must end with no secret in it (for Graph tests).

Used by the conftest.py of each test package that drives the Graph emulator (the Graph
connector's and the emulator's). All loggers (sendonce, MSAL, aiohttp, the emulator's
threads) are captured at DEBUG for the whole package. When the package finishes, every
client secret, access token and message body any emulator saw, plus private keys and
bearer headers, is searched for in every formatted record, tracebacks included.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

import pytest

from sendonce.emulator import GraphEmulator

GENERIC_MARKERS = ("PRIVATE KEY-----", "Bearer ey", "Authorization: Bearer", "client_secret=")


class _Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def find_leaks(lines: Iterable[str], sensitive: Iterable[str]) -> list[str]:
    """Which sensitive values (or generic secret markers) occur in which lines."""
    values = [v for v in sensitive if len(v) >= 8]
    leaks = []
    for line in lines:
        for value in (*values, *GENERIC_MARKERS):
            if value in line:
                leaks.append(f"{value[:6]}... in: {line[:120]}")
    return leaks


@pytest.fixture(scope="package", autouse=True)
def no_secrets_in_logs() -> Iterator[None]:
    emulators: list[GraphEmulator] = []
    original_init = GraphEmulator.__init__

    def recording_init(self: GraphEmulator, *args: object, **kwargs: object) -> None:
        original_init(self, *args, **kwargs)  # type: ignore[arg-type]
        emulators.append(self)

    recorder = _Recorder()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(recorder)
    root.setLevel(logging.DEBUG)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(GraphEmulator, "__init__", recording_init)
        yield
    root.removeHandler(recorder)
    root.setLevel(old_level)
    sensitive: set[str] = {"secret body text that must never be logged"}
    for emulator in emulators:
        sensitive |= emulator.sensitive_values()
    assert recorder.lines, "no log records were captured at all"
    assert len(sensitive) > len(emulators), "no tokens or bodies were recorded"
    leaks = find_leaks(recorder.lines, sensitive)
    assert not leaks, "secrets in logs:\n" + "\n".join(leaks[:10])
