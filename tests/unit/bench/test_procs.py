"""bench.procs: a process of the baseline checkout runs that checkout's code."""

from __future__ import annotations

from pathlib import Path

import pytest

from sendonce.bench.procs import start


def test_a_baseline_process_runs_the_baseline_code_whatever_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    here, there = tmp_path / "here", tmp_path / "there"
    for checkout in (here, there):
        checkout.mkdir()
        (checkout / "which_checkout.py").write_text(f"print({checkout.name!r})\n")
    # The benchmark is often started from inside a checkout: `python -m` would put
    # that directory ahead of PYTHONPATH (the bug: a "baseline" that ran new code).
    monkeypatch.chdir(here)
    log = tmp_path / "out.log"
    proc = start("probe", ["-m", "which_checkout"], {}, log, root=there)
    assert proc.process.wait(timeout=60) == 0
    assert log.read_text().strip() == "there"
