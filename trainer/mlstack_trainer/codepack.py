"""Pack a code directory for `mlstack submit --code DIR`, and describe its git state.

The list of files follows .gitignore: inside a git checkout git itself decides (so nested
.gitignore files, .git/info/exclude and the global excludes all apply); elsewhere DIR/.gitignore
is read with simple patterns. Whatever the list says, caches, virtualenvs and .git never travel:
they are large, machine specific and useless to the worker.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit, urlunsplit

ALWAYS_LEFT_OUT_DIRS = {".git", "__pycache__", ".venv", "venv", ".tox", "node_modules"}
# Packs above this size go to a temporary file rather than memory.
SPOOL_BYTES = 32 * 1024 * 1024


class PackError(Exception):
    """Something about DIR that the user must fix; the message is one line."""


@dataclass
class Packed:
    archive: IO[bytes]  # the tar.gz, positioned at its start
    size: int  # bytes of the tar.gz
    files: list[tuple[str, int]]  # (path relative to DIR, size in bytes), sorted by path


@dataclass
class TooLarge(Exception):
    """The packed code passed `limit` bytes; `files` lets the caller name the biggest."""

    limit: int
    packed_at_least: int
    files: list[tuple[str, int]] = field(default_factory=list)

    def biggest(self, n: int = 5) -> list[tuple[str, int]]:
        return sorted(self.files, key=lambda f: (-f[1], f[0]))[:n]


def _git(root: Path, *args: str) -> str | None:
    """Output of a git command run in `root`, or None when git is missing or the command fails."""
    if shutil.which("git") is None:
        return None
    try:
        # GIT_OPTIONAL_LOCKS=0: `git status` must not take index.lock and trip up the user's git.
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, timeout=60,
                              env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"})
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.decode("utf-8", "surrogateescape") if done.returncode == 0 else None


def in_git_checkout(root: Path) -> bool:
    return (_git(root, "rev-parse", "--is-inside-work-tree") or "").strip() == "true"


def _is_venv(path: Path) -> bool:
    return path.name in ALWAYS_LEFT_OUT_DIRS or (path / "pyvenv.cfg").is_file()


def _always_left_out(root: Path, rel: str, venv_dirs: dict[str, bool]) -> bool:
    """True for .git, caches and anything inside a virtualenv (also when git tracks them);
    venv_dirs remembers the answer per directory, as many files share each one."""
    parts = rel.split("/")
    if parts[-1].endswith(".pyc") or ".git" in parts:  # .git is a file in worktrees/submodules
        return True
    for i in range(1, len(parts)):
        prefix = "/".join(parts[:i])
        if prefix not in venv_dirs:
            venv_dirs[prefix] = _is_venv(root / prefix)
        if venv_dirs[prefix]:
            return True
    return False


class GitIgnore:
    """DIR/.gitignore with the common patterns: `name`, `dir/`, `*.ext`, `/anchored`, `a/b*`.

    Left out on purpose, as this is only the fallback without git: `!negation` lines (ignored),
    `**` beyond what fnmatch's `*` already matches, nested .gitignore files and escapes.
    """

    def __init__(self, text: str) -> None:
        self.patterns: list[tuple[str, bool, bool]] = []  # (pattern, anchored, directories only)
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#") or line.startswith("!"):
                continue
            dir_only = line.endswith("/")
            line = line.rstrip("/")
            # As in git, a slash at the start or in the middle ties the pattern to DIR.
            anchored = "/" in line
            self.patterns.append((line.lstrip("/"), anchored, dir_only))

    def ignored(self, rel: str, is_dir: bool) -> bool:
        name = rel.rsplit("/", 1)[-1]
        for pattern, anchored, dir_only in self.patterns:
            if dir_only and not is_dir:
                continue
            if fnmatch.fnmatchcase(rel if anchored else name, pattern):
                return True
        return False


def _walk(root: Path) -> list[str]:
    """Files under root that DIR/.gitignore does not exclude (no git available)."""
    gitignore = root / ".gitignore"
    rules = GitIgnore(gitignore.read_text(encoding="utf-8", errors="replace")
                      if gitignore.is_file() else "")
    found: list[str] = []
    for here, dirs, files in os.walk(root):  # does not descend into symlinked directories
        base = Path(here).relative_to(root).as_posix()
        prefix = "" if base == "." else base + "/"
        # Pruning here keeps os.walk out of .git, venvs and ignored trees altogether.
        dirs[:] = [d for d in dirs if not _is_venv(Path(here, d))
                   and not rules.ignored(prefix + d, is_dir=True)]
        found += [prefix + f for f in files if not rules.ignored(prefix + f, is_dir=False)]
    return found


def list_files(root: Path) -> list[str]:
    """Paths relative to root, '/'-separated, of the files to pack."""
    root = root.resolve()
    listed = None
    if in_git_checkout(root):
        # Relative to cwd and limited to it; -z: no quoting of unusual names.
        listed = _git(root, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
    names = [n for n in listed.split("\0") if n] if listed is not None else _walk(root)
    venv_dirs: dict[str, bool] = {}
    return sorted({n for n in names if not _always_left_out(root, n, venv_dirs)})


def _inside(root: Path, rel: str) -> Path | None:
    """The regular file to store for `rel`, or None: gone (deleted but still in git's index),
    a directory (a git submodule, a symlink to a directory), or a symlink leading out of root."""
    if rel.startswith("/") or ".." in rel.split("/"):
        return None
    try:
        target = (root / rel).resolve()
    except (OSError, RuntimeError):  # a symlink loop
        return None
    if not target.is_relative_to(root) or not target.is_file():
        return None
    return target


def pack(directory: Path, limit: int | None = None) -> Packed:
    """tar.gz of the files in `directory`; raises TooLarge as soon as it passes `limit` bytes,
    so a forgotten data set is not compressed in full just to be refused."""
    root = directory.resolve()
    if not root.is_dir():
        raise PackError(f"code directory {directory} not found")
    chosen = [(rel, path) for rel in list_files(root) if (path := _inside(root, rel))]
    files = [(rel, path.stat().st_size) for rel, path in chosen]
    if not files:
        raise PackError(f"no files to pack in {directory} (all ignored?)")
    out = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)
    try:
        with tarfile.open(fileobj=out, mode="w:gz") as tar:
            for rel, path in chosen:
                info = tar.gettarinfo(str(path), arcname=rel)  # resolved: a symlink -> its file
                info.uid = info.gid = 0
                info.uname = info.gname = ""  # the user's account names stay on their machine
                with open(path, "rb") as f:
                    tar.addfile(info, f)
                if limit is not None and out.tell() > limit:
                    raise TooLarge(limit, out.tell(), files)
        size = out.tell()
        if limit is not None and size > limit:  # the gzip trailer can tip it over
            raise TooLarge(limit, size, files)
    except BaseException:
        out.close()  # a temporary file on disk once past SPOOL_BYTES
        raise
    out.seek(0)
    return Packed(out, size, files)


def _without_password(url: str) -> str:
    """The remote URL without credentials: https://user:token@host/x -> https://host/x."""
    if "://" not in url:
        return url  # scp-like git@host:path carries no secret
    parts = urlsplit(url)
    if parts.password is None and parts.scheme not in ("http", "https"):
        return url  # ssh://git@host/x: a user name only
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    netloc += f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=netloc))


def git_source(directory: Path) -> dict[str, str | bool]:
    """Commit, dirty flag, branch and remote of the checkout holding `directory`: only known keys."""
    root = directory.resolve()
    if not in_git_checkout(root):
        return {}
    source: dict[str, str | bool] = {}
    commit = _git(root, "rev-parse", "--verify", "-q", "HEAD")
    if commit:  # a fresh repository has no commit yet
        source["git_commit"] = commit.strip()
        # Uncommitted changes to tracked files under DIR: the commit alone would not give this code.
        status = _git(root, "status", "--porcelain", "--untracked-files=no", "--", ".")
        if status is not None:
            source["git_dirty"] = bool(status.strip())
    branch = (_git(root, "symbolic-ref", "--short", "-q", "HEAD") or "").strip()
    if branch:  # detached HEAD: no branch
        source["git_branch"] = branch
    remotes = (_git(root, "remote") or "").split()
    if remotes:
        name = "origin" if "origin" in remotes else remotes[0]
        url = (_git(root, "remote", "get-url", name) or "").strip()
        if url:
            source["git_remote"] = _without_password(url)
    return source
