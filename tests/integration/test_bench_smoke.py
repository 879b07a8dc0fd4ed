"""A tiny run of the intents benchmark (``python -m bench``), so it cannot rot.

Every configuration and the memory/restore measurement run once with a handful of
intents and keys against the session broker. Only that each produced figures and
that the JSON and the chart were written is checked; no target is asserted.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sendonce.bench.intents import run_benchmark
from sendonce.bench.options import CONFIGS, build_parser

pytestmark = pytest.mark.integration


@pytest.mark.timeout(900)
def test_every_configuration_produces_figures(kafka_bootstrap: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = build_parser().parse_args(
        [
            "--bootstrap",
            kafka_bootstrap,
            "--rounds",
            "1",
            "--intents",
            "40",
            "--naive-intents",
            "10",
            "--warmup",
            "4",
            "--rate",
            "20",
            "--paced-seconds",
            "0.5",
            "--keys",
            "200,500",
            "--partitions",
            "3",
            "--mailboxes",
            "4",
            "--out",
            str(out),
        ]
    )
    doc = run_benchmark(args, progress=lambda _line: None)

    failed = [(r["config"], r["error"]) for r in doc["runs"] if r["error"]]
    assert not failed
    assert doc["memory"]["error"] is None
    for config in CONFIGS:
        summary = doc["configs"][config]
        assert summary["rounds_ok"] == 1, config
        assert summary["intents_per_s"]["median"] > 0, config
        assert summary["latency"]["p99_ms"] is not None, config
    assert doc["configs"]["sendonce-null"]["produced_to_provider_called"]["p99_ms"] is not None
    assert [m["keys"] for m in doc["memory"]["sizes"]] == [200, 500]
    for size in doc["memory"]["sizes"]:
        assert size["rss_mb"] > 0
        assert size["restore_keys_per_s"] > 0
    assert {t["status"] for t in doc["targets"]} <= {"met", "missed", "not measured"}
    assert json.loads((out / "bench.json").read_text())["command"].startswith("python -m bench")
    assert (out / "bench.png").read_bytes().startswith(b"\x89PNG")
