"""Unit tests for locating and resolving the broker jars (no JVM; Maven is faked)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sendonce.dev import kafka_jars
from sendonce.dev.kafka_jars import LocalKafkaError, ensure_jars, find_repo_root, run_maven

REPO = Path(__file__).resolve().parents[3]


def test_find_repo_root_walks_up(tmp_path: Path) -> None:
    (tmp_path / "deploy" / "local-kafka").mkdir(parents=True)
    (tmp_path / "deploy" / "local-kafka" / "pom.xml").write_text("<project/>")
    nested = tmp_path / "a" / "b" / "c"
    nested.mkdir(parents=True)

    assert find_repo_root(nested) == tmp_path.resolve()
    assert find_repo_root(tmp_path) == tmp_path.resolve()


def test_find_repo_root_none_without_pom(tmp_path: Path) -> None:
    (tmp_path / "deploy" / "local-kafka").mkdir(parents=True)  # folder but no pom

    assert find_repo_root(tmp_path) is None


def test_find_repo_root_default_is_this_checkout() -> None:
    assert find_repo_root() == REPO
    assert (REPO / "deploy" / "local-kafka" / "pom.xml").is_file()


def test_ensure_jars_uses_existing_lib(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "kafka_2.13-4.1.1.jar").write_bytes(b"")

    def no_mvn(*args: object, **kwargs: object) -> None:
        raise AssertionError("mvn must not run when the jars are present")

    monkeypatch.setattr(kafka_jars, "run_maven", no_mvn)
    told: list[int] = []
    assert ensure_jars(tmp_path, told.append) == tmp_path
    assert told == []  # nothing to resolve, nothing announced


def test_ensure_jars_explains_missing_mvn(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name: None if name == "mvn" else real_which(name))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    if real_which("java") is None:
        pytest.skip("needs java on PATH to reach the mvn check")

    with pytest.raises(LocalKafkaError, match=r"`mvn` not found.*apt-get install maven"):
        ensure_jars(tmp_path / "lib")
    assert not (tmp_path / "lib").exists()


def test_ensure_jars_explains_missing_java(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.delenv("JAVA_HOME", raising=False)

    with pytest.raises(LocalKafkaError, match=r"`java` not found.*openjdk-17"):
        ensure_jars(tmp_path / "lib")


def test_ensure_jars_refuses_foreign_files(tmp_path: Path) -> None:
    if shutil.which("mvn") is None or shutil.which("java") is None:
        pytest.skip("needs mvn and java on PATH to reach this check")
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "notes.txt").write_text("mine")

    with pytest.raises(LocalKafkaError, match=r"holds no kafka_2\.13"):
        ensure_jars(tmp_path / "lib")
    assert (tmp_path / "lib" / "notes.txt").read_text() == "mine"


def test_ensure_jars_cleans_abandoned_resolve_and_renames_into_place(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    if shutil.which("mvn") is None or shutil.which("java") is None:
        pytest.skip("needs mvn and java on PATH to reach this step")
    dead = subprocess.Popen(["true"])
    dead.wait()
    abandoned = tmp_path / f".lib.resolving-{dead.pid}-x"
    (abandoned / "half").mkdir(parents=True)
    calls: list[list[str]] = []

    def fake_mvn(cmd: list[str], progress: object = None) -> tuple[int, list[str]]:
        # Stand-in for Maven: fill the output folder it was given.
        calls.append(cmd)
        out = Path(next(a for a in cmd if a.startswith("-DoutputDirectory=")).split("=", 1)[1])
        assert out.parent == tmp_path  # same filesystem as lib, so the rename is atomic
        assert not (tmp_path / "lib").exists()  # lib only appears when complete
        (out / "kafka_2.13-4.1.1.jar").write_bytes(b"")
        return 0, []

    monkeypatch.setattr(kafka_jars, "run_maven", fake_mvn)
    told: list[int] = []

    assert ensure_jars(tmp_path / "lib", told.append) == tmp_path / "lib"
    assert told == [0]  # the resolve was announced
    assert (tmp_path / "lib" / "kafka_2.13-4.1.1.jar").exists()
    assert len(calls) == 1
    assert "dependency:copy-dependencies" in calls[0]
    assert not abandoned.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["lib"]


def test_ensure_jars_failed_resolve_leaves_no_lib(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    if shutil.which("mvn") is None or shutil.which("java") is None:
        pytest.skip("needs mvn and java on PATH to reach this step")

    def failing_mvn(cmd: list[str], progress: object = None) -> tuple[int, list[str]]:
        out = Path(next(a for a in cmd if a.startswith("-DoutputDirectory=")).split("=", 1)[1])
        (out / "some-dep.jar").write_bytes(b"")  # partial output
        return 1, ["Could not resolve dependencies"]

    monkeypatch.setattr(kafka_jars, "run_maven", failing_mvn)

    with pytest.raises(LocalKafkaError, match="Could not resolve dependencies"):
        ensure_jars(tmp_path / "lib")
    assert list(tmp_path.iterdir()) == []


def test_run_maven_counts_downloads_as_they_arrive() -> None:
    # A stand-in for Maven's batch-mode output: two downloads among other lines.
    script = (
        "import sys\n"
        "print('[INFO] Scanning for projects...', flush=True)\n"
        "print('[INFO] Downloading from central: https://repo/a.pom', flush=True)\n"
        "print('[INFO] Downloaded from central: https://repo/a.pom (2 kB at 9 kB/s)', flush=True)\n"
        "print('[INFO] Downloaded from central: https://repo/b.jar (1 MB at 2 MB/s)', flush=True)\n"
        "print('[ERROR] the end', file=sys.stderr)\n"
        "sys.exit(3)\n"
    )
    told: list[int] = []

    code, tail = run_maven([sys.executable, "-c", script], told.append)

    assert told == [1, 2]
    assert code == 3
    assert tail[0] == "[INFO] Scanning for projects..."
    assert tail[-1] == "[ERROR] the end"
