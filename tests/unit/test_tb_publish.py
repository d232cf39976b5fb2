"""The worker's copy of a job's TensorBoard files, which is what TensorBoard reads: regular files
only, so a job cannot link another experiment's curves into its own experiment's TensorBoard."""

from __future__ import annotations

import os

from mlstack_trainer.tb_publish import Publisher


def test_event_files_are_copied_as_they_grow(tmp_path):
    source, target = tmp_path / "job", tmp_path / "published"
    (source / "train").mkdir(parents=True)
    target.mkdir()
    events = source / "train" / "events.out.tfevents.1"
    events.write_bytes(b"epoch 0;")
    publisher = Publisher(source, target, every_s=3600).start()
    assert publisher.publish_once() == 1
    assert (target / "train" / "events.out.tfevents.1").read_bytes() == b"epoch 0;"
    assert publisher.publish_once() == 0  # nothing new
    with open(events, "ab") as f:
        f.write(b"epoch 1;")
    (source / "validation").mkdir()
    (source / "validation" / "events.out.tfevents.2").write_bytes(b"val")
    publisher.stop()  # the last copy, after the job ended
    assert (target / "train" / "events.out.tfevents.1").read_bytes() == b"epoch 0;epoch 1;"
    assert (target / "validation" / "events.out.tfevents.2").read_bytes() == b"val"
    assert oct((target / "train" / "events.out.tfevents.1").stat().st_mode & 0o777) == "0o640"


def test_links_and_special_files_a_job_plants_are_never_followed(tmp_path):
    other = tmp_path / "tb-logs" / "2" / "secret-run"
    other.mkdir(parents=True)
    (other / "events.out.tfevents.9").write_bytes(b"someone else's curves")
    source, target = tmp_path / "job", tmp_path / "published"
    (source / "train").mkdir(parents=True)
    target.mkdir()
    (source / "train" / "events.out.tfevents.1").write_bytes(b"mine")
    os.symlink(other.parent, source / "leak")                       # a folder elsewhere
    os.symlink(other / "events.out.tfevents.9", source / "train" / "events.out.tfevents.2")
    os.symlink("../../tb-logs/2", source / "train" / "relative")   # relative, too
    os.mkfifo(source / "train" / "events.out.tfevents.3")          # would block a reader
    Publisher(source, target).publish_once()
    copied = sorted(str(p.relative_to(target)) for p in target.rglob("*"))
    assert copied == ["train", "train/events.out.tfevents.1"]
    assert not any(p.is_symlink() for p in target.rglob("*"))


def test_a_job_folder_that_is_gone_or_a_link_is_not_read(tmp_path):
    target = tmp_path / "published"
    target.mkdir()
    assert Publisher(tmp_path / "missing", target).publish_once() == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "events").write_bytes(b"x")
    os.symlink(elsewhere, tmp_path / "job")
    assert Publisher(tmp_path / "job", target).publish_once() == 0
    assert list(target.iterdir()) == []


def test_what_a_job_may_fill_the_volume_with_is_bounded(tmp_path, capsys):
    source, target = tmp_path / "job", tmp_path / "published"
    source.mkdir()
    target.mkdir()
    with open(source / "sparse.tfevents", "wb") as f:
        f.truncate(300 << 20)  # 300 MB of holes: nothing on the job's disk
    (source / "a.tfevents").write_bytes(b"a" * 3000)
    (source / "b.tfevents").write_bytes(b"b" * 3000)
    publisher = Publisher(source, target, max_bytes=4000)
    publisher.publish_once()
    publisher.publish_once()
    assert sorted(p.name for p in target.iterdir()) == ["a.tfevents"]
    said = capsys.readouterr().out
    assert said.count("sparse.tfevents not shown: a sparse file") == 1
    assert said.count("b.tfevents not shown: over the 0 MB") == 1
