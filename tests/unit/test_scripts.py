"""The operator scripts' command lines: --help for each, and a mistake named before anything
is touched (these checks run before the scripts talk to Docker)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
NAMES = ["backup", "ca-cert", "credentials", "gc", "restore", "status", "swarm", "upgrade",
         "users", "workers"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPTS / args[0]), *args[1:]], capture_output=True, text=True,
                          timeout=30, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("name", NAMES)
def test_each_script_explains_itself(name):
    result = run(name, "--help")
    assert result.returncode == 0
    assert result.stdout.startswith(f"Usage: scripts/{name}")
    assert len(result.stdout.splitlines()) >= 3


def test_every_script_is_listed_here():
    assert sorted(p.name for p in SCRIPTS.iterdir() if p.name != "lib.sh") == NAMES


@pytest.mark.parametrize("args, message", [
    (("backup", "--keep", "0"), "must be a whole number >= 1"),
    (("backup", "--frobnicate"), "unknown argument '--frobnicate'"),
    (("gc", "--older-than-days", "soon"), "must be a number of days, got 'soon'"),
    (("restore", "/nonexistent/backup"), "no such folder: /nonexistent/backup"),
    (("status", "extra"), "unknown argument 'extra'"),
    (("upgrade", "--fast"), "unknown argument '--fast'"),
    (("swarm", "launch"), "unknown command 'launch'"),
])
def test_a_mistake_is_named(args, message):
    result = run(*args)
    assert result.returncode == 1 and message in result.stderr, result.stderr


def test_restore_checks_a_folder_is_a_complete_backup(tmp_path):
    (tmp_path / "manifest.txt").write_text("created=x\n")
    result = run("restore", str(tmp_path))
    assert result.returncode == 1 and "not a complete backup: mlflow.pgdump is missing" \
        in result.stderr


@pytest.mark.parametrize("fake_docker, message", [
    (None, "docker is not installed"),
    ("#!/bin/sh\nexit 1\n", "the Docker engine does not answer"),
    ('#!/bin/sh\n[ "$1 $2" = "compose version" ] && { echo v2.12.2; exit 0; }\nexit 0\n',
     "Docker Compose 2.12.2 is too old: 2.17 or newer is needed"),
])
def test_a_missing_or_old_tool_is_named_before_anything_runs(tmp_path, fake_docker, message):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("dirname", "sed", "sort", "head", "cat", "cut", "tail"):
        (bin_dir / tool).symlink_to(subprocess.run(["sh", "-c", f"command -v {tool}"],
                                                   capture_output=True, text=True).stdout.strip())
    if fake_docker:
        (bin_dir / "docker").write_text(fake_docker)
        (bin_dir / "docker").chmod(0o755)
    result = subprocess.run(["/bin/bash", str(SCRIPTS / "status")], capture_output=True,
                            text=True, timeout=30, env={"PATH": str(bin_dir)})
    assert result.returncode == 1 and message in result.stderr, result.stderr
