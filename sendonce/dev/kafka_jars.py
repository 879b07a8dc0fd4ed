"""The Apache Kafka broker's jars for the local broker: where they are, and fetching them.

The broker runs from the jars that ``deploy/local-kafka/pom.xml`` pins (Kafka
:data:`KAFKA_VERSION`); ``mvn dependency:copy-dependencies`` resolves them from Maven
Central into one *lib* folder (``$SENDONCE_KAFKA_LIB``, else
``<repo>/deploy/local-kafka/lib``).  This module finds the checkout (by that pom), the
default broker home and lib folders, the ``java`` runtime and the broker's log4j
config, and fills an empty lib folder atomically.  It is apart from the broker runner
(:mod:`sendonce.dev.kafka`) because locating and resolving jars is a build step with
its own failure modes (no ``mvn``, no checkout, a half-resolved folder) that the
benchmarks and the demo also use on their own.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import tempfile
from collections import deque
from collections.abc import Callable
from pathlib import Path

from sendonce.dev.procs import pid_alive

__all__ = [
    "KAFKA_VERSION",
    "LocalKafkaError",
    "default_home",
    "default_lib",
    "ensure_jars",
    "find_repo_root",
    "java_executable",
    "log4j_config",
    "run_maven",
]

KAFKA_VERSION = "4.1.1"

# Marker file that identifies the repository root (and the pom we resolve jars from).
_POM_RELATIVE = Path("deploy") / "local-kafka" / "pom.xml"
# How much of Maven's output a failed resolve quotes.
_MAVEN_OUTPUT_LINES = 40


class LocalKafkaError(RuntimeError):
    """Anything that keeps the local broker from being fetched, started or stopped."""


def find_repo_root(start: Path | None = None) -> Path | None:
    """Return the nearest directory at or above ``start`` containing the broker pom.

    ``start`` defaults to this file's directory, which finds the checkout for an
    editable install.  Returns None when there is none (e.g. a wheel install).
    """
    here = (start or Path(__file__).parent).resolve()
    for candidate in (here, *here.parents):
        if (candidate / _POM_RELATIVE).is_file():
            return candidate
    return None


def _repo_root() -> Path | None:
    # Prefer the checkout this module lives in; fall back to the working directory so a
    # non-editable install still works when run from the repository.
    return find_repo_root() or find_repo_root(Path.cwd())


def default_home() -> Path:
    """``$SENDONCE_KAFKA_HOME``, else ``<repo>/.sendonce/kafka``."""
    env = os.environ.get("SENDONCE_KAFKA_HOME")
    if env:
        return Path(env).expanduser().resolve()
    root = _repo_root()
    if root is None:
        raise LocalKafkaError(
            "cannot find the sendonce checkout (deploy/local-kafka/pom.xml); "
            "set SENDONCE_KAFKA_HOME or pass --home"
        )
    return root / ".sendonce" / "kafka"


def default_lib() -> Path:
    """``$SENDONCE_KAFKA_LIB``, else ``<repo>/deploy/local-kafka/lib``."""
    env = os.environ.get("SENDONCE_KAFKA_LIB")
    if env:
        return Path(env).expanduser().resolve()
    root = _repo_root()
    if root is None:
        raise LocalKafkaError(
            "cannot find the sendonce checkout (deploy/local-kafka/pom.xml); "
            "set SENDONCE_KAFKA_LIB to a folder holding the Kafka broker jars"
        )
    return root / _POM_RELATIVE.parent / "lib"


def log4j_config() -> Path | None:
    """The checkout's ``deploy/local-kafka/log4j2.properties`` (WARN level), or None."""
    root = _repo_root()
    log4j = root / _POM_RELATIVE.parent / "log4j2.properties" if root else None
    return log4j if log4j is not None and log4j.is_file() else None


def _has_broker_jar(lib: Path) -> bool:
    return any(lib.glob("kafka_2.13-*.jar"))


def java_executable() -> str:
    """The ``java`` that runs the broker: ``$JAVA_HOME/bin/java``, else the one on PATH."""
    # Honour JAVA_HOME like Kafka's own scripts do; otherwise whatever is on PATH.
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    found = shutil.which("java")
    if found is None:
        raise LocalKafkaError(
            "`java` not found: the local Kafka broker needs a Java 17+ runtime "
            "(e.g. `apt-get install openjdk-17-jre-headless`, or set JAVA_HOME)"
        )
    return found


JarProgress = Callable[[int], None]
"""Told ``0`` when a resolve starts, then the number of files Maven downloaded so far."""


def ensure_jars(lib: Path | None = None, progress: JarProgress | None = None) -> Path:
    """Make sure the broker jars are in ``lib`` (default :func:`default_lib`); return it.

    When the folder has no ``kafka_2.13-*.jar`` the jars are resolved from Maven Central
    with ``mvn`` into a sibling temp folder that is renamed into place only when
    complete, so an interrupted resolve never leaves a half-filled ``lib``. A first
    resolve downloads for a minute or more: ``progress`` hears of it (never when the
    jars are already there).
    """
    lib = lib or default_lib()
    if _has_broker_jar(lib):
        return lib
    java_executable()  # fail early with the clearer message if Java is missing too
    mvn = shutil.which("mvn")
    if mvn is None:
        raise LocalKafkaError(
            "`mvn` not found: the Kafka broker jars are fetched from Maven Central with "
            "Apache Maven (e.g. `apt-get install maven`), or point SENDONCE_KAFKA_LIB at "
            "a folder that already holds them"
        )
    root = _repo_root()
    if root is None:
        raise LocalKafkaError(
            f"no Kafka jars in {lib} and no deploy/local-kafka/pom.xml to resolve them from"
        )
    if lib.exists() and any(lib.iterdir()):
        # Never delete someone else's files; a half-filled lib cannot come from us.
        raise LocalKafkaError(f"{lib} exists but holds no kafka_2.13-*.jar; remove it and retry")
    lib.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_resolves(lib)
    # Same parent => same filesystem => the final rename is atomic.  The pid in the name
    # lets a later run recognise (and delete) the leftovers of a killed resolve.
    tmp = Path(tempfile.mkdtemp(prefix=f".{lib.name}.resolving-{os.getpid()}-", dir=lib.parent))
    try:
        if progress is not None:
            progress(0)
        cmd = [
            mvn,
            # Not -q: the "Downloaded from" lines are the progress.
            "-B",
            "-Dstyle.color=never",
            "-f",
            str(root / _POM_RELATIVE),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={tmp}",
            "-DincludeScope=runtime",
        ]
        returncode, output = run_maven(cmd, progress)
        if returncode != 0 or not _has_broker_jar(tmp):
            raise LocalKafkaError(
                f"resolving the Kafka broker with Maven failed (exit {returncode}):\n"
                f"  {' '.join(cmd)}\n" + "\n".join(output)
            )
        try:
            # rename(2) replaces an empty directory, so an empty pre-created lib is fine.
            tmp.rename(lib)
        except OSError as exc:
            # Another process won the race and already put a complete lib in place.
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not _has_broker_jar(lib):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return lib


def run_maven(cmd: list[str], progress: JarProgress | None = None) -> tuple[int, list[str]]:
    """Run ``cmd`` (Maven); its exit code and the last lines of its output.

    Each ``Downloaded from`` line Maven prints (one per file fetched) is counted
    to ``progress`` as it arrives.
    """
    tail: deque[str] = deque(maxlen=_MAVEN_OUTPUT_LINES)
    downloaded = 0
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            tail.append(line.rstrip("\n"))
            if "Downloaded from" in line and progress is not None:
                downloaded += 1
                progress(downloaded)
    return proc.returncode, list(tail)


def _remove_abandoned_resolves(lib: Path) -> None:
    """Delete temp folders of resolves whose process is gone (e.g. it was SIGKILLed)."""
    for tmp in lib.parent.glob(f".{lib.name}.resolving-*-*"):
        owner = tmp.name.removeprefix(f".{lib.name}.resolving-").split("-", 1)[0]
        if owner.isdigit() and not pid_alive(int(owner)):
            shutil.rmtree(tmp, ignore_errors=True)
