"""Running real worker processes against the session broker, isolated per test."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from sendonce.dev.procs import stop_process
from sendonce.kafka.topics import create_topics
from sendonce.ops.publish import IntentPublisher
from sendonce.ops.results import ReadRecord, ResultWatcher
from sendonce.settings import Settings


@dataclass
class WorkerProcess:
    """A ``sendonce worker`` subprocess."""

    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait_exit(self, timeout: float = 120) -> int:
        return self.process.wait(timeout)

    def stop(self, timeout: float = 30) -> None:
        stop_process(self.process, timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


@dataclass
class Pipeline:
    """One test's own topics, consumer group, ledger and outbox on the shared broker."""

    settings: Settings
    root: Path
    workers: list[WorkerProcess] = field(default_factory=list)
    _watcher: ResultWatcher | None = None

    @property
    def outbox(self) -> Path:
        return self.settings.outbox_dir

    def eml_files(self) -> list[Path]:
        return sorted(self.outbox.glob("*.eml"))

    def env(self, **extra: str) -> dict[str, str]:
        s = self.settings
        # A SIGKILLed worker's partitions move after 8 s, not after 30 s.
        # Several workers share this host: no metrics endpoint unless a test asks.
        return {
            **os.environ,
            **s.to_env(),
            "SENDONCE_SESSION_TIMEOUT_S": "8",
            "SENDONCE_METRICS_PORT": "0",
            **extra,
        }

    def start_worker(self, **extra_env: str) -> WorkerProcess:
        n = len(self.workers)
        log_path = self.root / f"worker-{n}.log"
        env = self.env(**extra_env)
        env.setdefault("SENDONCE_WORKER_ID", f"worker-{n}")
        process = subprocess.Popen(
            [sys.executable, "-m", "sendonce.cli", "worker"],
            env=env,
            stdout=open(log_path, "wb"),  # noqa: SIM115 - owned by the child
            stderr=subprocess.STDOUT,
        )
        worker = WorkerProcess(process, log_path)
        self.workers.append(worker)
        return worker

    def publisher(self) -> IntentPublisher:
        return IntentPublisher(self.settings.bootstrap_servers, self.settings.topics.intents)

    def publish(self, intents: list[Mapping[str, Any]]) -> list[str]:
        with self.publisher() as publisher:
            return [publisher.publish(i).value for i in intents]

    @property
    def watcher(self) -> ResultWatcher:
        if self._watcher is None:
            topics = [*self.settings.topics.results(), self.settings.topics.dlq]
            self._watcher = ResultWatcher(self.settings.bootstrap_servers, topics)
        return self._watcher

    def wait_results(self, count: int, timeout: float = 180) -> list[ReadRecord]:
        """Wait for ``count`` distinct results/dead letters; fail early if a worker died."""
        return self.watcher.wait_for_distinct(count, timeout, alive=self._any_worker_alive)

    def _any_worker_alive(self) -> bool:
        return any(w.alive() for w in self.workers)

    def close(self) -> None:
        for w in self.workers:
            w.stop()
        if self._watcher is not None:
            self._watcher.close()


def make_pipeline(bootstrap: str, root: Path, partitions: int = 6) -> Pipeline:
    tag = uuid.uuid4().hex[:8]
    settings = Settings(
        bootstrap_servers=bootstrap,
        app_id=f"sendonce-test-{tag}",
        topic_prefix=f"t{tag}.",
        partitions=partitions,
        data_dir=root / "worker",
        outbox_dir=root / "outbox",
    )
    create_topics(settings)
    return Pipeline(settings, root)


def pipeline_fixture(bootstrap: str, root: Path) -> Iterator[Pipeline]:
    pipeline = make_pipeline(bootstrap, root)
    try:
        yield pipeline
    finally:
        pipeline.close()


def intent(n: int, tenant: str = "acme", **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "tenant_id": tenant,
        "source_event_id": f"evt-{n}",
        "action_type": "receipt",
        "sender": overrides.pop("sender", f"orders@{tenant}.example"),
        "to": [f"user{n}@example.com"],
        "subject": f"Receipt {n}",
        "text_body": f"Thanks for order {n}.",
    }
    base.update(overrides)
    return base


#: Prometheus samples by (name, sorted labels).
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def free_port() -> int:
    """A TCP port free on loopback right now (for a worker's metrics endpoint)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str) -> tuple[int, str]:
    """Status and body of a GET, errors included."""
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()


def scrape(base: str) -> Samples:
    """The samples of a worker's ``/metrics``."""
    status, text = get(base + "/metrics")
    assert status == 200
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples
