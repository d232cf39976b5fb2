"""The operator scripts' command lines: --help for each, and a mistake named before anything
is touched (these checks run before the scripts talk to Docker)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
NAMES = ["backup", "ca-cert", "credentials", "gc", "restore", "status", "upgrade", "users"]


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
])
def test_a_mistake_is_named(args, message):
    result = run(*args)
    assert result.returncode == 1 and message in result.stderr, result.stderr


def test_restore_checks_a_folder_is_a_complete_backup(tmp_path):
    (tmp_path / "manifest.txt").write_text("created=x\n")
    result = run("restore", str(tmp_path))
    assert result.returncode == 1 and "not a complete backup: mlflow.pgdump is missing" \
        in result.stderr
