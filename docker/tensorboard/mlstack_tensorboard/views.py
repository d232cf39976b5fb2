"""View directories: what one TensorBoard's --logdir holds. Pure filesystem logic.

A view is a directory of symlinks, one per run folder of the selected experiments' active
runs, pointing into the read-only tb-logs volume. Stock TensorBoard follows them. Runs that
are deleted in MLflow (or not tracked by it at all) have no symlink, so they are not shown.

Layout of the volume: <tb root>/<experiment id>/<sanitised run name>-<32 hex run id>/...
Single experiment view: <view>/<run folder>; several: <view>/<experiment id>/<run folder>.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

RUN_FOLDER = re.compile(r".*-([0-9a-f]{32})", re.DOTALL)


def run_folders(tb_root: Path, experiment_id: int) -> dict[str, list[str]]:
    """run id -> names of its folders under <tb root>/<experiment id> (usually one).

    Only real directories count: a symlink planted in the volume could otherwise point the
    view outside the experiment. Names without a run id (.mlstack-permissions-v1, stray
    folders) are ignored; a name may start with '.' (a run named '.x' is sanitised to '.x-<id>').
    """
    found: dict[str, list[str]] = {}
    try:
        entries = list(os.scandir(tb_root / str(experiment_id)))
    except (FileNotFoundError, NotADirectoryError):
        return found  # no run of this experiment has logged to TensorBoard yet
    for entry in entries:
        match = RUN_FOLDER.fullmatch(entry.name)
        if not match or not _safe_name(entry.name):
            continue
        try:
            if not entry.is_dir(follow_symlinks=False):
                continue
        except OSError:
            continue
        found.setdefault(match.group(1), []).append(entry.name)
    return found


def _safe_name(name: str) -> bool:
    """One plain path component: never '', '.', '..', nor anything with a separator or NUL."""
    return name not in ("", ".", "..") and "/" not in name and "\0" not in name


def desired_links(tb_root: Path, runs: Mapping[int, frozenset[str] | set[str]],
                  nested: bool) -> dict[str, Path]:
    """Relative link path in the view -> the run folder it points to."""
    links: dict[str, Path] = {}
    for experiment_id in sorted(runs):
        active = runs[experiment_id]
        for run_id, names in run_folders(tb_root, experiment_id).items():
            if run_id not in active:
                continue
            for name in names:
                rel = f"{experiment_id}/{name}" if nested else name
                links[rel] = tb_root / str(experiment_id) / name
    return links


@dataclass(frozen=True)
class Changes:
    added: tuple[str, ...]
    removed: tuple[str, ...]


def sync(view_dir: Path, links: Mapping[str, Path]) -> Changes:
    """Make view_dir hold exactly these symlinks. Only ever deletes symlinks and empty folders.

    Anything else found there (which the router never creates) is left alone rather than
    deleted: the view root is a configurable path, and a mistake in it must not wipe data.
    """
    view_dir.mkdir(parents=True, exist_ok=True)
    root = os.path.realpath(view_dir)
    existing: dict[str, str] = {}
    subdirs: list[Path] = []
    for entry in os.scandir(view_dir):
        if entry.is_symlink():
            existing[entry.name] = os.readlink(entry.path)
        elif entry.is_dir(follow_symlinks=False):
            subdirs.append(Path(entry.path))
            for inner in os.scandir(entry.path):
                if inner.is_symlink():
                    existing[f"{entry.name}/{inner.name}"] = os.readlink(inner.path)

    removed = []
    for rel, target in sorted(existing.items()):
        if rel not in links or str(links[rel]) != target:
            os.unlink(view_dir / rel)
            if rel in links:
                existing.pop(rel)
            else:
                removed.append(rel)
    added = []
    for rel, target in sorted(links.items()):
        if rel in existing and existing[rel] == str(target):
            continue
        path = view_dir / rel
        # Belt and braces: names come from scandir so cannot hold '/', but a link must never
        # be created anywhere except directly in the view (or one <experiment id>/ below it).
        parts = rel.split("/")
        if not all(_safe_name(p) for p in parts) or len(parts) > 2 \
                or os.path.commonpath([root, os.path.realpath(path.parent)]) != root:
            continue
        path.parent.mkdir(exist_ok=True)
        os.symlink(target, path, target_is_directory=True)
        added.append(rel)
    for sub in subdirs:
        try:
            sub.rmdir()  # only succeeds when empty: an experiment with no runs left
        except OSError:
            pass
    return Changes(tuple(added), tuple(removed))


def remove(view_dir: Path) -> None:
    """Remove a view: its symlinks, then its (now empty) folders; never anything else."""
    if view_dir.is_dir() and not view_dir.is_symlink():
        sync(view_dir, {})
        try:
            view_dir.rmdir()
        except OSError:
            pass  # something the router did not make: left alone
