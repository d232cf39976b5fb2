"""The TensorBoard volume's layout: `<experiment id>/<sanitised run name>-<run id>/`, keyed by
ids so that an experiment's name (a `/`, a `..`, a rename) can never move or mix data.

Releases before it kept `<experiment name>/<job name>-<run id>/`. `migrate` moves such folders
to their experiment's id, once, on upgrade or restore (scripts/upgrade, scripts/restore run it
as root with the run -> experiment map from MLflow's database on standard input).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

LINK_TAG = "mlstack.tensorboard_url"  # on each run: its TensorBoard link
RUN_FOLDER = re.compile(r"-(?P<run>[0-9a-f]{32})$")
READERS_GID = 10001
EXPERIMENT_DIR_MODE = 0o771  # jobs pass through; group mlstack (trainer, janitor) adds runs


def run_folder(run_name: str, run_id: str) -> str:
    """A run's folder below its experiment's: the name helps a reader, the id is what counts.
    (docker/platform/mlstack_platform/tensorboard_sync.py names runs trained elsewhere alike.)"""
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in run_name)[:100] or "run"
    return f"{safe}-{run_id}"


def link(public_url: str, experiment_id: str, run_id: str) -> str:
    """The run in its experiment's TensorBoard, filtered to it (TensorBoard 2.21 reads the
    filter from the query, not from the fragment)."""
    return f"{public_url}/tensorboard/{experiment_id}/?runFilter={run_id}#timeseries"


def _old_run_folders(top: Path):
    """Run folders below a top-level folder, at any depth (an old experiment name with `/`
    made nested folders), not descending into a run folder."""
    for dirpath, dirnames, _ in os.walk(top):
        for name in list(dirnames):
            path = Path(dirpath, name)
            if RUN_FOLDER.search(name) and not path.is_symlink():
                dirnames.remove(name)
                yield path


def migrate(tb_root: Path, experiment_of: dict[str, str]) -> list[tuple[str, str]]:
    """Move every run folder that is not under its run's experiment id there. Returns the
    (old, new) paths relative to the root. Runs MLflow does not know, and folders whose new
    place is taken, stay where they are (and are reported on stderr)."""
    moves = []
    for top in sorted(p for p in tb_root.iterdir()
                      if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")):
        for folder in sorted(_old_run_folders(top)):
            run_id = RUN_FOLDER.search(folder.name)["run"]
            experiment_id = experiment_of.get(run_id)
            if experiment_id is None or folder.parent == tb_root / experiment_id:
                continue
            parent = tb_root / experiment_id
            if not parent.exists():
                parent.mkdir()
                os.chown(parent, 0, READERS_GID)
                os.chmod(parent, EXPERIMENT_DIR_MODE)
            target = parent / folder.name
            if target.exists():
                print(f"kept {folder.relative_to(tb_root)}: {target.relative_to(tb_root)} exists",
                      file=sys.stderr)
                continue
            os.rename(folder, target)
            moves.append((str(folder.relative_to(tb_root)), str(target.relative_to(tb_root))))
        _remove_empty(top, tb_root)
    return moves


def _remove_empty(top: Path, tb_root: Path) -> None:
    """The old experiment-name folders the moves emptied (bottom up); never an id's folder."""
    if top.name.isdigit():
        return
    for dirpath, _, _ in sorted(os.walk(top), key=lambda w: -len(w[0])):
        try:
            os.rmdir(dirpath)
        except OSError:
            pass  # not empty: something else lives there


def main(lines) -> int:
    """`RUN_ID<TAB>EXPERIMENT_ID` lines in, one line per move out."""
    experiment_of = {}
    for line in lines:
        fields = line.strip().split("\t")
        if len(fields) == 2:
            experiment_of[fields[0]] = fields[1]
    root = Path(os.environ.get("MLSTACK_TB_ROOT", "/var/lib/mlstack/tb-logs"))
    for old, new in migrate(root, experiment_of):
        print(f"moved {old} -> {new}")
    return 0
