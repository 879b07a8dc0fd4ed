"""The progress reporter with a fake clock and a StringIO."""

from __future__ import annotations

import io

import pytest

from sendonce.ops.progress import Progress, format_duration


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (42.4, "42s"), (60, "1m00s"), (185, "3m05s"), (7620, "2h07m"), (-3, "0s")],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_not_a_tty_writes_a_plain_line_every_interval() -> None:
    clock, out = FakeClock(), io.StringIO()
    progress = Progress("replaying", 1000, out, clock=clock, tty=False, interval_s=5.0)
    for _ in range(4):
        clock.now += 1.0
        progress.advance(50)
    assert out.getvalue() == ""  # not yet 5 s
    clock.now += 1.0
    progress.advance(50)  # 5 s, 250 done
    assert out.getvalue() == "replaying: 250/1,000 records (25%), 50/s, ETA 15s\n"
    clock.now += 1.0
    progress.advance(50)
    assert out.getvalue().count("\n") == 1  # the next line is due 5 s later
    clock.now += 4.0
    progress.update(900)
    assert out.getvalue().splitlines()[-1] == "replaying: 900/1,000 records (90%), 90/s, ETA 1s"
    clock.now += 1.0
    progress.finish(1000)
    lines = out.getvalue().splitlines()
    assert lines[-1] == "replaying: 1,000/1,000 records (100%), 91/s, done in 11s"
    assert "\r" not in out.getvalue()


def test_tty_redraws_one_line_in_place() -> None:
    clock, out = FakeClock(), io.StringIO()
    progress = Progress("scan", 10, out, clock=clock, tty=True, redraw_s=0.2)
    clock.now += 0.1
    progress.advance()
    assert out.getvalue() == ""  # redraws are throttled
    clock.now += 0.1
    progress.advance(9999)  # a long count: a longer line
    clock.now += 0.2
    progress.update(5)  # a shorter line pads over the longer one
    text = out.getvalue()
    assert text.count("\r") == 2
    assert "\n" not in text
    first, second = text.split("\r")[1:]
    assert len(second) == len(first)
    assert second.startswith("scan: 5/10 records (50%), 12/s, ETA 0s")
    progress.finish()
    assert out.getvalue().endswith("done in 0s\n")


def test_isatty_decides_by_default() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    clock = FakeClock()
    out = Terminal()
    progress = Progress("x", 2, out, clock=clock)
    clock.now += 1
    progress.advance()
    assert out.getvalue().startswith("\rx: 1/2 records")


def test_unknown_total_and_quiet_and_finish_once() -> None:
    clock, out = FakeClock(), io.StringIO()
    progress = Progress("awaiting", None, out, unit="results", clock=clock, tty=False)
    clock.now += 10
    progress.advance(3)
    assert out.getvalue() == "awaiting: 3 results, 0.3/s\n"
    progress.finish()
    progress.finish()
    progress.advance()
    assert out.getvalue().count("\n") == 2
    quiet = Progress("x", 5, None, clock=clock)
    quiet.advance(5)
    quiet.finish()
    assert quiet.done == 5


def test_nothing_to_do_is_100_percent() -> None:
    clock, out = FakeClock(), io.StringIO()
    progress = Progress("x", 0, out, clock=clock, tty=False)
    progress.finish()
    assert out.getvalue() == "x: 0/0 records (100%), done in 0s\n"
