"""Which Kafka a command talks to, and whether it is there, before the command starts.

Every command that talks to Kafka builds its settings with :func:`cluster_from_options`:

* the address comes from ``--bootstrap``, else ``SENDONCE_BOOTSTRAP_SERVERS``, else the
  live local broker ``sendonce dev kafka start`` recorded (said in one line on stderr,
  because a new shell would otherwise talk to ``127.0.0.1:9092`` and find nothing),
  else the default;
* :meth:`Cluster.require` then asks the cluster once (:func:`sendonce.kafka.probe.
  probe_cluster`, a few seconds at most) and turns "nobody answers" or "that topic does
  not exist" into a :class:`CommandError`: one line naming the address, where it came
  from and what to do, and exit code 2, instead of a minute of librdkafka retries and a
  traceback.

The discovery lives here, not in :mod:`sendonce.settings`: reading a broker record of
the development tools is the command line's convenience, settings stay a pure reading
of the environment.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from sendonce.dev.kafka import recorded_broker
from sendonce.kafka.probe import BrokerUnreachable, TopicMissing, probe_cluster
from sendonce.options import settings_from_options
from sendonce.settings import SETTINGS_DOC, Settings

__all__ = ["Cluster", "CommandError", "cluster_from_options"]

_VARIABLE = SETTINGS_DOC["bootstrap_servers"][0]


class CommandError(Exception):
    """A mistake or a missing prerequisite the user can fix: one line, an exit code.

    ``main`` prints ``sendonce: <message>`` on stderr and exits with ``exit_code``;
    no traceback, since there is no bug to show.
    """

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class Cluster:
    """A command's settings and where its Kafka address came from."""

    settings: Settings
    #: How the address was chosen, for the error line: "--bootstrap", the variable, ...
    source: str

    def require(self, *topics: str) -> None:
        """Return once a broker answers and ``topics`` exist; else :class:`CommandError`."""
        try:
            probe_cluster(self.settings.bootstrap_servers, topics)
        except BrokerUnreachable as exc:
            raise CommandError(f"{exc} ({self.source})") from exc
        except TopicMissing as exc:
            raise CommandError(f"{exc} (create the topics with: sendonce topics create)") from exc


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def cluster_from_options(args: argparse.Namespace, **overrides: object) -> Cluster:
    """:func:`~sendonce.options.settings_from_options`, with the local broker found.

    When neither ``--bootstrap`` nor ``SENDONCE_BOOTSTRAP_SERVERS`` is given and
    ``sendonce dev kafka start`` recorded a broker that is alive, its address is used
    and one line on stderr says so.
    """
    start_hint = "start one with: sendonce dev kafka start"
    if getattr(args, "bootstrap", None):
        return Cluster(settings_from_options(args, **overrides), "--bootstrap")
    if os.environ.get(_VARIABLE):
        return Cluster(settings_from_options(args, **overrides), f"{_VARIABLE}; {start_hint}")
    recorded = recorded_broker()
    if recorded is None:
        settings = settings_from_options(args, **overrides)
        return Cluster(settings, f"the default; set {_VARIABLE}, or {start_hint}")
    bootstrap, record = recorded
    settings = settings_from_options(args, **overrides, bootstrap_servers=bootstrap)
    print(
        f"sendonce: using the local broker at {bootstrap} (from {_display(record)}; "
        f"set {_VARIABLE} to override)",
        file=sys.stderr,
    )
    return Cluster(settings, f"recorded in {_display(record)}; see: sendonce dev kafka status")
