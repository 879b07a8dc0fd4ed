"""Sampling profiles of the worker during a burst (``python -m bench --profile``).

py-spy attaches to the running worker for the burst only (not the start-up, the
warm-up or the recovery), writes collapsed stacks, and :func:`summarize` turns
them into the table the README and the issue notes quote: the share of samples
in which each of our own functions, and each library, is on the stack.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

#: Samples per second; py-spy's default (100) is coarse for a 10 s burst.
RATE = 250

# Library buckets by path fragment, checked in order (first match wins).
_LIBRARIES = (
    ("faust", "faust/"),
    ("mode", "mode/"),
    ("aiokafka", "aiokafka/"),
    ("asyncio", "asyncio/"),
    ("fastavro", "fastavro/"),
    ("avro", "avro/"),
    ("rocksdict", "rocksdict"),
    ("json", "json/"),
    ("dataclasses", "dataclasses.py"),
    ("our code", "streams/"),
    ("our code", "sendonce/"),
    ("our code", "connectors/"),
    ("our code", "schemas/"),
)


def py_spy() -> str | None:
    """The py-spy executable beside this interpreter (or on PATH), if installed."""
    beside = Path(sys.executable).with_name("py-spy")
    if beside.exists():
        return str(beside)
    return shutil.which("py-spy")


@dataclass
class Recording:
    """A py-spy process recording one worker."""

    process: subprocess.Popen[bytes]
    path: Path

    def stop(self, timeout: float = 30.0) -> Path | None:
        """Stop sampling and wait for the output file; returns it if written."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        return self.path if self.path.exists() else None


def record(pid: int, path: Path) -> Recording | None:
    """Start sampling ``pid`` into ``path`` (collapsed stacks); None without py-spy."""
    exe = py_spy()
    if exe is None:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    argv = [exe, "record", "--pid", str(pid), "--format", "raw", "--rate", str(RATE)]
    argv += ["--output", str(path), "--nonblocking"]
    log = open(path.with_suffix(".log"), "wb")  # noqa: SIM115 - the child keeps it open
    with log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    return Recording(process, path)


def _frames(stack: str) -> list[tuple[str, str]]:
    """(function, file) per frame of one collapsed stack line, outermost first."""
    frames = []
    for frame in stack.split(";"):
        # "function (path/to/file.py:123)"; idle frames may lack the location.
        name, _, where = frame.partition(" (")
        frames.append((name.strip(), where.rsplit(":", 1)[0]))
    return frames


def _under(path: str, fragment: str) -> bool:
    # py-spy prints paths relative to sys.path entries ("faust/app/base.py"), or
    # absolute ones for scripts.
    return path.startswith(fragment) or f"/{fragment}" in path


def _bucket(name: str, path: str, ours: tuple[str, ...]) -> str | None:
    for root in ours:
        if _under(path, f"{root}/"):
            module = path.rsplit(f"{root}/", 1)[1].removesuffix(".py").replace("/", ".")
            return f"{root}.{module}.{name}"
    return None


def summarize(
    path: Path,
    top: int = 25,
    ours: tuple[str, ...] = ("streams", "sendonce", "connectors", "schemas"),
) -> list[tuple[str, float]]:
    """(label, share of samples) rows: libraries by self time, our functions inclusive."""
    total = 0
    libraries: Counter[str] = Counter()
    functions: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = _frames(stack)
        leaf_path = frames[-1][1] if frames else ""
        library = next((lib for lib, frag in _LIBRARIES if _under(leaf_path, frag)), None)
        libraries[f"self in {library or 'other'}"] += count
        seen: set[str] = set()
        for name, where in frames:
            label = _bucket(name, where, ours)
            if label is not None and label not in seen:
                seen.add(label)
                functions[label] += count
    if not total:
        return []
    rows = [(label, n / total) for label, n in libraries.most_common()]
    rows += [(label, n / total) for label, n in functions.most_common(top)]
    return rows


def format_summary(rows: list[tuple[str, float]]) -> str:
    """The rows of :func:`summarize` as aligned text."""
    return "\n".join(f"  {share * 100:5.1f}%  {label}" for label, share in rows)
