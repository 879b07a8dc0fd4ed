"""A Microsoft Graph + Entra ID emulator for tests, demos and users' staging.

The real MSAL and a real Graph client work against it unpatched (over HTTPS with a test
CA), with fault injection and an admin API that records every delivery; see
:mod:`sendonce.emulator.server`. It is a product feature, not a test helper: it ships in
the wheel and runs as ``sendonce dev graph-emulator``. It sits above the worker and the
connectors; nothing below it may import it, so production code never depends on a double.
"""

from sendonce.emulator.credentials import ClientCertificate
from sendonce.emulator.faults import Fault, FaultBook
from sendonce.emulator.server import CA_FILE, CA_KEY_FILE, EmulatorThread, GraphEmulator
from sendonce.emulator.state import DEFAULT_CLIENT_ID, DEFAULT_KEY_PROPERTY_NAME, DEFAULT_TENANT

__all__ = [
    "CA_FILE",
    "CA_KEY_FILE",
    "DEFAULT_CLIENT_ID",
    "DEFAULT_KEY_PROPERTY_NAME",
    "DEFAULT_TENANT",
    "ClientCertificate",
    "EmulatorThread",
    "Fault",
    "FaultBook",
    "GraphEmulator",
]
