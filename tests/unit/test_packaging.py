"""The wheel installs one import package, ``sendonce``, and nothing named after our folders.

``streams``, ``schemas`` and ``connectors`` are folders of the repository (the product's
map), not import packages: installed as top-level names they would overwrite other
distributions' files. Builds the wheel the way a user's ``pip install`` does (an isolated
build, so it runs setuptools as pinned by pyproject.toml) and installs it, without
dependencies, into a fresh virtual environment.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # From a copy of what the wheel is built from: setuptools writes build/ beside it.
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("sendonce", "streams", "schemas", "connectors", "bench"):
        shutil.copytree(
            ROOT / name,
            source / name,
            symlinks=True,
            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
        )
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert build.returncode == 0, build.stderr
    # pip's build leaves no warning behind (issue 14: license as an SPDX string).
    assert "Warning" not in build.stderr, build.stderr
    [built] = out.glob("sendonce-*.whl")
    return built


def test_the_wheel_holds_one_top_level_package(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/", 1)[0] for name in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"sendonce"}
    assert "sendonce/streams/ledger.py" in names
    assert "sendonce/schemas/EmailIntent.avsc" in names
    assert "sendonce/connectors/graph/provider.py" in names
    # Benchmarks run from a checkout; they are not part of what users install.
    assert not [n for n in names if n.startswith("sendonce/bench/")]


def test_a_fresh_environment_with_the_wheel_has_no_streams_package(
    wheel: Path, tmp_path: Path
) -> None:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    # Without the caller's PYTHONPATH: neither pip nor the checks may see the checkout.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-deps", str(wheel)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert install.returncode == 0, install.stderr

    def run(code: str) -> subprocess.CompletedProcess[str]:
        # From an empty folder, so the checkout is not on sys.path either.
        return subprocess.run(
            [str(python), "-c", code],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    for name in ("streams", "schemas", "connectors", "bench"):
        missing = run(f"import {name}")
        assert missing.returncode != 0
        assert "ModuleNotFoundError" in missing.stderr
    # The foundation needs no third-party package, so it imports without dependencies.
    found = run("import sendonce.keys; print(sendonce.keys.__file__)")
    assert found.returncode == 0, found.stderr
    assert str(env_dir) in found.stdout
