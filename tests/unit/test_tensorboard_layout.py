"""Where TensorBoard data lives: folders keyed by experiment id and run id, whatever the names
(a `/`, a `..`, a rename), for jobs and for runs trained elsewhere alike, and the one-time move
of an older release's folders (keyed by experiment name) to that layout."""

from __future__ import annotations

import pytest

from mlstack_platform import tensorboard_sync
from mlstack_trainer import tb_layout

RUN = "0123456789abcdef0123456789abcdef"
OTHER = "fedcba9876543210fedcba9876543210"


@pytest.mark.parametrize(("name", "folder"), [
    ("digits-mlp", f"digits-mlp-{RUN}"),
    ("../../etc", f".._.._etc-{RUN}"),
    ("a/b", f"a_b-{RUN}"),
    ("..", f"..-{RUN}"),
    ("", f"run-{RUN}"),
    ("é x" * 80, f"{('é_x' * 80)[:100]}-{RUN}"),  # letters kept, length capped
])
def test_a_run_folder_is_one_path_component_ending_in_the_run_id(name, folder):
    for named in (tb_layout.run_folder(name, RUN), tensorboard_sync.run_folder_name(name, RUN)):
        assert named == folder
        assert "/" not in named and named not in (".", "..")
        assert tb_layout.RUN_FOLDER.search(named)["run"] == RUN


def test_both_kinds_of_runs_get_the_same_link():
    expected = f"https://ml.example/tensorboard/7/?runFilter={RUN}#timeseries"
    assert tb_layout.link("https://ml.example", "7", RUN) == expected
    assert tensorboard_sync.link("https://ml.example", "7", RUN) == expected


@pytest.mark.parametrize(("key", "expected"), [
    ("1/r/artifacts/tensorboard/train/events.out.tfevents.1", "train/events.out.tfevents.1"),
    ("1/r/artifacts/tensorboard/events", "events"),
    ("1/r/artifacts/tensorboard/../model/x", None),
    ("1/r/artifacts/tensorboard//x", None),
    ("1/r/artifacts/tensorboard/./x", None),
    ("1/r/artifacts/model/x", None),
])
def test_an_artifact_is_copied_only_from_below_the_runs_tensorboard_folder(key, expected):
    relative = tensorboard_sync.relative_target(key, "1/r/artifacts/tensorboard/")
    assert (str(relative) if relative else None) == expected


def test_only_uploads_below_a_runs_tensorboard_folder_are_queued():
    match = tensorboard_sync.UPLOAD_PATH.fullmatch
    assert match(f"/api/2.0/mlflow-artifacts/artifacts/3/{RUN}/artifacts/tensorboard/x")["run"] \
        == RUN
    assert match(f"/ajax-api/2.0/mlflow-artifacts/artifacts/3/{RUN}/artifacts/tensorboard/a/b")
    assert not match(f"/api/2.0/mlflow-artifacts/artifacts/3/{RUN}/artifacts/model/x")
    assert not match(f"/api/2.0/mlflow-artifacts/artifacts/3/{RUN}/artifacts/tensorboard/")


def write(path, text="events"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_an_older_releases_folders_move_to_their_experiment_id_once(tmp_path):
    # Old layout: <experiment name>/<job name>-<run id>; a name with `/` nested deeper.
    write(tmp_path / "digits" / f"job-{RUN}" / "train" / "events.1", "alice's curves")
    write(tmp_path / "team" / "nlp" / f"job-{OTHER}" / "events.2", "bob's curves")
    write(tmp_path / "digits" / "notes.txt", "not a run folder")  # stays, so does its folder
    write(tmp_path / "5" / f"already-{OTHER[::-1]}" / "events.3")  # unknown run: untouched
    experiment_of = {RUN: "5", OTHER: "12"}

    moves = tb_layout.migrate(tmp_path, experiment_of)

    assert sorted(moves) == [(f"digits/job-{RUN}", f"5/job-{RUN}"),
                             (f"team/nlp/job-{OTHER}", f"12/job-{OTHER}")]
    assert (tmp_path / "5" / f"job-{RUN}" / "train" / "events.1").read_text() == "alice's curves"
    assert (tmp_path / "12" / f"job-{OTHER}" / "events.2").read_text() == "bob's curves"
    assert (tmp_path / "digits" / "notes.txt").exists()
    assert not (tmp_path / "team").exists()  # emptied by the move
    assert (tmp_path / "5" / f"already-{OTHER[::-1]}" / "events.3").exists()
    assert oct((tmp_path / "12").stat().st_mode & 0o7777) == oct(tb_layout.EXPERIMENT_DIR_MODE)
    # Once: a second run changes nothing.
    assert tb_layout.migrate(tmp_path, experiment_of) == []


def test_a_migration_never_mixes_two_folders(tmp_path):
    write(tmp_path / "digits" / f"job-{RUN}" / "events.old", "old")
    write(tmp_path / "5" / f"job-{RUN}" / "events.new", "new")
    assert tb_layout.migrate(tmp_path, {RUN: "5"}) == []
    assert (tmp_path / "digits" / f"job-{RUN}" / "events.old").read_text() == "old"
    assert not (tmp_path / "5" / f"job-{RUN}" / "events.old").exists()
