"""A job's uploaded code: a gzip-compressed tar, checked when it is submitted and unpacked by the
job itself (under the job's own uid, never the worker's).

Only regular files and folders are taken, at relative paths that stay inside the folder; links,
devices and anything else are refused when the job is submitted. (tarfile's "data" filter does
this too, but only from Python 3.11.4; Debian bookworm ships 3.11.2.)
"""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path, PurePosixPath


class ArchiveError(ValueError):
    """The upload is not a usable code archive; the message says why."""


def _relative(member: tarfile.TarInfo) -> PurePosixPath:
    path = PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts:
        raise ArchiveError(f"code: {member.name!r} points outside the code folder")
    if not (member.isfile() or member.isdir()):
        raise ArchiveError(f"code: {member.name!r} is not a regular file or folder (links and "
                           "devices are not accepted; `mlstack submit --code` stores the files "
                           "links point to)")
    return PurePosixPath(*[p for p in path.parts if p != "."])


MAX_MEMBERS = 100_000


def member_names(data: bytes, max_unpacked: int = 1 << 30) -> set[str]:
    """The regular files in the archive (normalised relative paths); raises ArchiveError.
    Stops at the first header that takes the unpacked size past `max_unpacked`, before
    inflating its data (a small gzip can hold gigabytes of zeros)."""
    names: set[str] = set()
    unpacked = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for member in tar:
                relative = _relative(member)
                unpacked += member.size
                if unpacked > max_unpacked or len(names) >= MAX_MEMBERS:
                    raise ArchiveError(f"code: unpacks to more than {max_unpacked >> 20} MB or "
                                       f"{MAX_MEMBERS} files; leave data out of the code folder")
                if relative.parts and member.isfile():
                    names.add(str(relative))
            return names
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ArchiveError(f"code: not a gzip-compressed tar archive ({exc}); create it with "
                           "`tar -czf code.tar.gz -C DIR .` or `mlstack submit --code DIR`")


def check_entrypoint(names: set[str], kind: str, target: str) -> None:
    """The entrypoint must name something that is in the upload."""
    if kind == "script" and target not in names:
        raise ArchiveError(f"entrypoint: script {target!r} is not in the uploaded code")
    if kind == "project":
        directory = target.split(":")[0] or "."
        mlproject = str(PurePosixPath(directory) / "MLproject")
        if mlproject not in names:
            raise ArchiveError(f"entrypoint: no MLproject file at {mlproject!r} in the uploaded "
                               "code")
    if kind == "module":
        module = target.split(":")[0].replace(".", "/")
        if f"{module}.py" not in names and f"{module}/__init__.py" not in names:
            raise ArchiveError(f"entrypoint: module {target.split(':')[0]!r} is not in the "
                               f"uploaded code (no {module}.py)")


def extract(archive: Path, destination: Path) -> None:
    """Folders and regular files only, with the job's own umask for their modes."""
    destination.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, mode="r:gz") as tar:
        for member in tar:
            relative = _relative(member)
            target = destination.joinpath(*relative.parts)
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(member)
            assert source is not None
            with source, open(target, "wb") as out:
                shutil.copyfileobj(source, out)
            if member.mode & 0o111:
                target.chmod(0o750)
