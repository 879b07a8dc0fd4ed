"""``sendonce dev graph-emulator``: run the Microsoft Graph emulator in the foreground.

Prints where it listens as ``key=value`` lines on stdout (``graph_url``, ``authority``,
``ca_bundle``, ``tenant``, ``client_id``, ``admin_url``, and ``client_secret`` when the
secret was generated), then serves until SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import signal
import sys
from pathlib import Path
from typing import Any

from sendonce.emulator import (
    DEFAULT_CLIENT_ID,
    DEFAULT_TENANT,
    Fault,
    GraphEmulator,
)
from sendonce.options import Subparsers

__all__ = ["SECRET_ENV", "add_cli", "build_emulator", "run"]

# Read when --client-secret is absent, so the secret need not appear in `ps` output.
SECRET_ENV = "SENDONCE_GRAPH_EMULATOR_CLIENT_SECRET"


def add_cli(subparsers: Subparsers) -> None:
    """Register ``graph-emulator`` on ``subparsers``; its ``func(args)`` returns the exit code."""
    p = subparsers.add_parser(
        "graph-emulator",
        help="run the Microsoft Graph + Entra ID emulator (HTTPS, test CA)",
        description=(
            "Serve a Microsoft Graph mail + Entra ID app-only auth emulator over HTTPS with a "
            "generated test CA, with fault injection through its /_admin API. Prints "
            "graph_url=, authority=, ca_bundle= lines, then serves until SIGINT/SIGTERM."
        ),
    )
    p.add_argument("--host", default="127.0.0.1", help="listen address (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="listen port (default: 0 = a free port)")
    p.add_argument("--tenant", default=DEFAULT_TENANT, help="tenant id (default: %(default)s)")
    p.add_argument("--client-id", default=DEFAULT_CLIENT_ID, help="app id (default: %(default)s)")
    p.add_argument(
        "--client-secret",
        default=None,
        help=f"the app's secret (default: ${SECRET_ENV}, else generated and printed)",
    )
    p.add_argument(
        "--client-cert",
        type=Path,
        default=None,
        help="certificate PEM registered on the app (certificate auth; no secret then "
        "unless --client-secret is given too)",
    )
    p.add_argument(
        "--ca-dir",
        type=Path,
        default=None,
        help="directory for the test CA (PEM + key, reused on restart; default: a temp dir)",
    )
    p.add_argument(
        "--tls-name",
        action="append",
        default=[],
        help="extra host name for the server certificate (repeatable)",
    )
    p.add_argument(
        "--mailbox",
        action="append",
        default=None,
        help="known mailbox (repeatable; default: every mailbox exists)",
    )
    p.add_argument("--token-lifetime", type=int, default=3599, help="expires_in (seconds)")
    p.add_argument("--max-concurrency", type=int, default=4, help="concurrent requests per mailbox")
    p.add_argument(
        "--sends-per-minute",
        type=int,
        default=30,
        help="messages per mailbox in any 60 s, over it 429 (Exchange Online: 30; 0 = no cap)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the fault RNG")
    p.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="JSON",
        help='fault rule as JSON, e.g. \'{"kind": "throttle", "count": 1}\' (repeatable)',
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log every request")
    p.set_defaults(func=run)


def build_emulator(args: argparse.Namespace) -> tuple[GraphEmulator, str | None]:
    """The emulator ``args`` describe, and the client secret if one was generated."""
    secret = args.client_secret or os.environ.get(SECRET_ENV)
    generated: str | None = None
    if secret is None and args.client_cert is None:
        secret = generated = secrets.token_urlsafe(24)
    faults: list[Fault] = []
    for text in args.fault:
        data: Any = json.loads(text)
        items = data if isinstance(data, list) else [data]
        faults.extend(Fault.from_dict(item) for item in items)
    emulator = GraphEmulator(
        tenant=args.tenant,
        client_secrets={args.client_id: secret} if secret is not None else None,
        client_certificates=(
            {args.client_id: args.client_cert.read_bytes()} if args.client_cert else None
        ),
        mailboxes=args.mailbox,
        token_lifetime=args.token_lifetime,
        max_concurrency=args.max_concurrency,
        sends_per_minute=args.sends_per_minute,
        faults=faults,
        seed=args.seed,
        ca_dir=args.ca_dir,
        tls_names=args.tls_name,
    )
    return emulator, generated


async def _serve(emulator: GraphEmulator, args: argparse.Namespace, generated: str | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await emulator.start(args.host, args.port)
    try:
        lines = [
            f"graph_url={emulator.graph_url}",
            f"authority={emulator.authority()}",
            f"ca_bundle={emulator.ca_bundle_path}",
            f"tenant={emulator.tenant}",
            f"client_id={args.client_id}",
            f"admin_url={emulator.base_url}/_admin",
        ]
        if generated is not None:
            # Printed only when generated: otherwise the caller already knows it.
            lines.append(f"client_secret={generated}")
        print("\n".join(lines), flush=True)
        await stop.wait()
    finally:
        await emulator.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def run(args: argparse.Namespace) -> int:
    """Run the emulator until SIGINT/SIGTERM; exit code 0, or 2 on bad options."""
    if args.verbose:
        logging.getLogger("sendonce.emulator").setLevel(logging.DEBUG)
    try:
        emulator, generated = build_emulator(args)
    except (ValueError, OSError) as exc:
        print(f"graph-emulator: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_serve(emulator, args, generated))
    except OSError as exc:  # e.g. the port is taken
        print(f"graph-emulator: {exc}", file=sys.stderr)
        return 2
    return 0
