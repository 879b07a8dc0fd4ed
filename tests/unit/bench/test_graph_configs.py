"""The benchmark's Graph configurations: both modes, at both latencies."""

from __future__ import annotations

from sendonce.bench.intents import graph_latency_ms, graph_mode
from sendonce.bench.options import GRAPH_CONFIGS, selected


def test_each_graph_configuration_names_its_latency_and_mode() -> None:
    seen = {(graph_mode(c), graph_latency_ms(c)) for c in GRAPH_CONFIGS}
    assert seen == {(m, ms) for m in ("sendmail", "draft-send") for ms in (0.0, 150.0)}


def test_only_graph_selects_both_modes() -> None:
    configs, memory = selected(["graph"])
    assert configs == list(GRAPH_CONFIGS) and not memory
