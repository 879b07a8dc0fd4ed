"""Unit tests for ``sendonce dev kafka``: its subcommands and exit codes (no broker runs)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from sendonce.cli.dev_kafka import add_cli


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sendonce dev")
    add_cli(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_cli_registers_subcommands(tmp_path: Path) -> None:
    for sub in ("fetch", "start", "stop", "status"):
        extra = [] if sub == "fetch" else ["--home", str(tmp_path)]
        args = _parse(["kafka", sub, *extra])
        assert callable(args.func), sub

    start = _parse(["kafka", "start", "--home", str(tmp_path)])
    assert start.foreground is False  # detached by default
    assert _parse(["kafka", "start", "--foreground"]).foreground is True


def test_cli_status_exit_code_when_not_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = _parse(["kafka", "status", "--home", str(tmp_path)])

    assert args.func(args) == 1
    assert "no Kafka broker running" in capsys.readouterr().err


def test_cli_start_brokers_option(tmp_path: Path) -> None:
    assert _parse(["kafka", "start", "--home", str(tmp_path)]).brokers == 1
    assert _parse(["kafka", "start", "--brokers", "3"]).brokers == 3
    with pytest.raises(SystemExit):
        _parse(["kafka", "start", "--brokers", "0"])


def test_cli_started_lines_one_node_and_cluster(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sendonce.cli.dev_kafka import _print_started

    _print_started("127.0.0.1:1", [11], tmp_path, "started (detached)")
    one = capsys.readouterr()
    # One node: the lines scripts have always read.
    assert one.out == "bootstrap=127.0.0.1:1\npid=11\n"
    assert f"(pid 11, home {tmp_path})" in one.err

    _print_started("127.0.0.1:1,127.0.0.1:3", [11, 12, 13], tmp_path, "started (detached)")
    three = capsys.readouterr()
    assert three.out == "bootstrap=127.0.0.1:1,127.0.0.1:3\npid=11,12,13\n"
    assert "3 nodes, pids 11,12,13" in three.err
