"""scripts/upgrade from the previous release to this checkout, on a stack of its own.

"Previous" is PREVIOUS_RELEASE below, the last commit before the operator scripts existed:
its images are built from that commit's tree (`git archive`), tagged :previous, and a
platform is brought up from its own docker-compose.yml and populated. Then this checkout's
scripts/upgrade runs against it. Both releases ship MLflow 3.17.2, so `mlflow db upgrade` in
init finds nothing to migrate; what is proven is that the whole procedure (backup, new
images, init re-run, new services, status) keeps every user, run, metric, model, artifact
and job."""

from __future__ import annotations

import os
import subprocess

import pytest

from .conftest import running
from .stack import ROOT, Stack
from .test_operations import populate, snapshot

PREVIOUS_RELEASE = "698bc68"


def image_id(reference: str, container: bool = False) -> str:
    """The image id of an image reference, or of a container's image ("" if none)."""
    command = ["docker", "inspect", "-f", "{{.Image}}"] if container else \
        ["docker", "image", "inspect", "-f", "{{.Id}}"]
    return subprocess.run([*command, reference], capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def previous_checkout(tmp_path_factory):
    tree = tmp_path_factory.mktemp("previous-release")
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", PREVIOUS_RELEASE],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def test_upgrade_from_the_previous_release_keeps_all_data(previous_checkout, tmp_path):
    old = Stack(project=f"mlstack-upgrade-{os.getpid()}", root=previous_checkout,
                settings={"MLSTACK_VERSION": "previous"})
    lifecycle = running(old)
    next(lifecycle)
    # The same platform (project, ports, work folder) as this checkout's scripts see it.
    new = Stack(project=old.project, https_port=old.https_port, http_port=old.http_port,
                workdir=old.workdir)
    try:
        user = ("erin", "erin-has-a-long-password")
        old.script("users", "create", "erin", "--password-stdin", input=user[1] + "\n")
        run_id, job_id, before = populate(old, user, tmp_path)
        assert "janitor" not in old.services()  # the previous release has no janitor

        upgraded = new.script("upgrade", "--yes", "--no-pull", timeout=1800)
        assert "migrating the tracking database" in upgraded.stderr
        assert "upgrade complete" in upgraded.stderr
        assert "To roll back" in upgraded.stderr and "scripts/restore" in upgraded.stderr
        services = new.services()
        assert services["janitor"]["Health"] == "healthy"
        # No container still runs a previous image. (By image id: the name `docker compose ps`
        # shows for a container is whichever tag it finds, and the upgrade adds some.)
        previous = {image_id(f"mlstack/{name}:previous")
                    for name in ("platform", "trainer", "tensorboard")} - {""}
        still_old = {service: row["Image"] for service, row in services.items()
                     if image_id(row["ID"], container=True) in previous}
        assert previous and not still_old, still_old
        assert list((new.workdir / "backups").glob("mlstack-*Z"))  # the backup it took first
        # The previous release's CA could certify any name: it is replaced by one limited to
        # the platform's names, and the upgrade tells the operator that clients must switch.
        assert "the platform's CA is NEW" in upgraded.stderr
        new.ca_file.write_text(new.script("ca-cert").stdout)
        assert snapshot(new, user, run_id, job_id) == before

        # A second upgrade with nothing new changes nothing, the CA included.
        again = new.script("upgrade", "--yes", "--no-pull", timeout=1800)
        assert "CA is NEW" not in again.stderr
        assert snapshot(new, user, run_id, job_id) == before
    finally:
        new.down()
        lifecycle.close()
