"""A job's TensorBoard files reach TensorBoard through the worker, regular files only.

A job writes its event files into a folder of its own; TensorBoard reads another one, written
by the worker alone, which copies what the job wrote every few seconds and once at the end.
Why not let TensorBoard read the job's folder: stock TensorBoard follows symbolic links, and
a job could link to another experiment's folder and have its curves shown to its own
experiment's readers. The copy opens every folder and file relative to its parent without
following links (os.fwalk, O_NOFOLLOW), so a link, a FIFO or a folder swapped for a link
mid-walk is skipped, never read. Event files only grow: each pass copies the new bytes.
What a job may fill the shared volume with is bounded: at most `max_bytes` in all
(TRAINER_MAX_TENSORBOARD_MB), and sparse files (a terabyte of holes costs the job nothing and
the copy everything) are not copied.
"""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

_CHUNK = 1 << 20


class Publisher:
    def __init__(self, source: Path, target: Path, every_s: float = 2.0,
                 max_bytes: int = 2 << 30):
        self.source, self.target, self.every_s = source, target, every_s
        self.max_bytes = max_bytes
        self._copied: dict[str, int] = {}  # relative path -> bytes copied
        self._told: set[str] = set()  # what was said about skipped files, said once
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tb-publish", daemon=True)

    def start(self) -> Publisher:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the periodic copy and copy once more: what the job wrote last."""
        self._stop.set()
        self._thread.join()
        try:
            self.publish_once()
        except OSError as exc:  # the job's own files are at stake, not its outcome
            print(f"[worker] copying TensorBoard files failed: {exc}", flush=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.publish_once()
            except OSError as exc:  # e.g. a full disk: the next pass tries again
                print(f"[worker] copying TensorBoard files failed: {exc}", flush=True)

    def publish_once(self) -> int:
        """One pass; returns how many files got new bytes."""
        try:
            root = os.open(self.source, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            return 0  # gone, or not the job's folder any more
        changed = 0
        try:
            for dirpath, _, filenames, dirfd in os.fwalk(".", dir_fd=root, follow_symlinks=False):
                relative_dir = os.path.normpath(dirpath)
                (self.target / relative_dir).mkdir(mode=0o750, parents=True, exist_ok=True)
                for name in sorted(filenames):  # the same order every pass
                    changed += self._copy(dirfd, name, os.path.join(relative_dir, name))
        finally:
            os.close(root)
        return changed

    def _copy(self, dirfd: int, name: str, relative: str) -> int:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dirfd)
        except OSError:
            return 0  # a link (ELOOP), or a file the job made unreadable: not copied
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return 0
            done = self._copied.get(relative, 0)
            if st.st_size == done:
                return 0
            if st.st_size > (1 << 20) and st.st_blocks * 512 < st.st_size // 2:
                return self._skip(relative, "a sparse file")
            if st.st_size < done:  # rewritten: copy it whole
                done = 0
            total = sum(self._copied.values()) - self._copied.get(relative, 0) + st.st_size
            if total > self.max_bytes:
                return self._skip(relative, f"over the {self.max_bytes >> 20} MB the job's "
                                            "TensorBoard files may take")
            flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_APPEND if done else os.O_TRUNC)
            out = os.open(self.target / relative, flags, 0o640)
            try:
                os.lseek(fd, done, os.SEEK_SET)
                while done < st.st_size:
                    data = os.read(fd, min(_CHUNK, st.st_size - done))
                    if not data:
                        break
                    os.write(out, data)
                    done += len(data)
            finally:
                os.close(out)
            self._copied[relative] = done
            return 1
        finally:
            os.close(fd)

    def _skip(self, relative: str, why: str) -> int:
        if relative not in self._told:
            self._told.add(relative)
            print(f"[worker] TensorBoard file {relative} not shown: {why}", flush=True)
        return 0
