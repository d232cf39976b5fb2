"""The operator's scripts end to end, on a stack of their own (its artifact volume is a 400 MB
tmpfs, see small-artifact-disk.yml): backup, destroy, restore; a damaged backup; status; gc;
the janitor's stale runs; a full artifact disk. The scripts run as an operator runs them, from
the repository root with no terminal (so --yes where they ask)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import running
from .stack import Stack
from .test_trainer import wait_for_job

BIG = 100 * 1000 * 1000  # the 100 MB artifact


@pytest.fixture(scope="module")
def ops():
    yield from running(Stack(project=f"mlstack-ops-{os.getpid()}", settings={
        "COMPOSE_FILE": "docker-compose.yml:tests/e2e/small-artifact-disk.yml",
        "MLSTACK_STALE_RUN_MINUTES": "1",
        "MLSTACK_JANITOR_INTERVAL_SECONDS": "5",
    }))


@pytest.fixture(scope="module")
def erin(ops: Stack) -> tuple[str, str]:
    return ops.user("erin")


def client(stack: Stack, user, code: str, *args: str) -> dict:
    """Run `code` with the stock MLflow client as `user`, in a team member's environment;
    return the JSON it prints last."""
    result = subprocess.run([sys.executable, "-c", code, *args], env=stack.client_env(*user),
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


POPULATE = """
import hashlib, json, os, sys, mlflow, numpy as np
from mlflow import MlflowClient
big = sys.argv[1]
mlflow.set_experiment("erin-kept")
with mlflow.start_run() as run:
    mlflow.log_params({"lr": "0.01", "layers": "3"})
    for step in range(50):
        mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
    mlflow.log_artifact(big, artifact_path="data")
    mlflow.pyfunc.log_model(name="model", python_model=mlflow.pyfunc.PythonModel(),
                            registered_model_name="erin-kept-model")
print(json.dumps({"run_id": run.info.run_id}))
"""

SNAPSHOT = """
import hashlib, json, sys, tempfile, mlflow
from mlflow import MlflowClient
c = MlflowClient()
run_id = sys.argv[1]
run = c.get_run(run_id)
path = c.download_artifacts(run_id, "data/big.bin", tempfile.mkdtemp())
digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
versions = [(v.name, v.version, v.run_id) for v in c.search_model_versions("name='erin-kept-model'")]
print(json.dumps({
    "status": run.info.status, "params": run.data.params,
    "loss": [(m.step, m.value) for m in c.get_metric_history(run_id, "loss")],
    "big_sha256": digest, "versions": versions,
    "experiments": sorted(e.name for e in c.search_experiments()),
}))
"""


def snapshot(stack: Stack, user, run_id: str, job_id: int) -> dict:
    seen = client(stack, user, SNAPSHOT, run_id)
    s = stack.session(*user)
    job = s.get(f"{stack.base_url}/trainer/api/jobs/{job_id}").json()
    seen["job"] = {k: job[k] for k in ("state", "submitter", "mlflow_run_id", "name")}
    seen["job_log"] = s.get(f"{stack.base_url}/trainer/api/jobs/{job_id}/logs").text
    # In its experiment's TensorBoard, <run name>-<run id>. A job run by a release before 0.2
    # (the upgrade test's) has no experiment id in the jobs API: the run says which experiment
    # it is in. That release served one TensorBoard for everything, with folders named after
    # experiments (the upgrade moves them to their ids).
    experiment_id = s.get(f"{stack.base_url}/api/2.0/mlflow/runs/get",
                          params={"run_id": job["mlflow_run_id"]}
                          ).json()["run"]["info"]["experiment_id"]
    experiment = s.get(f"{stack.base_url}/api/2.0/mlflow/experiments/get",
                       params={"experiment_id": experiment_id}).json()["experiment"]["name"]
    tb_run = f"{job['name']}-{job['mlflow_run_id']}/train"

    def scalar_tags():
        per_experiment = s.get(
            f"{stack.base_url}/tensorboard/{experiment_id}/data/plugin/scalars/tags")
        if per_experiment.status_code != 404:
            return per_experiment.json().get(tb_run)
        one_for_all = s.get(f"{stack.base_url}/tensorboard/data/plugin/scalars/tags")
        return one_for_all.json().get(f"{experiment}/{tb_run}") if one_for_all.ok else None

    tags = stack.wait_for("TensorBoard to load the job's scalars", scalar_tags, timeout_s=120)
    seen["tb_tags"] = sorted(tags)
    return seen


def populate(stack: Stack, user, workdir: Path) -> tuple[str, int, dict]:
    """Users, an experiment, a run with metrics, a 100 MB artifact, a registered model and a
    finished trainer job with its TensorBoard logs; returns the run, the job and a snapshot."""
    big = workdir / "big.bin"
    big.write_bytes(os.urandom(BIG))
    run_id = client(stack, user, POPULATE, str(big))["run_id"]
    s = stack.session(*user)
    job = s.post(f"{stack.base_url}/trainer/api/jobs", data="experiment: erin-kept\n"
                 "entrypoint: example:breast-cancer-mlp\nparams: {epochs: 2}\n",
                 headers={"Content-Type": "application/yaml"}).json()
    assert wait_for_job(stack, user, job["id"])["state"] == "succeeded"
    before = snapshot(stack, user, run_id, job["id"])
    assert before["big_sha256"] == hashlib.sha256(big.read_bytes()).hexdigest()
    assert len(before["loss"]) == 50 and before["versions"]
    big.unlink()
    return run_id, job["id"], before


@pytest.fixture(scope="module")
def populated(ops: Stack, erin, tmp_path_factory):
    return populate(ops, erin, tmp_path_factory.mktemp("big"))


def test_backup_destroy_restore_brings_everything_back(ops: Stack, erin, populated):
    run_id, job_id, before = populated
    ca_before, admin_before = ops.ca_file.read_text(), ops.admin()

    backup = Path(ops.script("backup", timeout=900).stdout.strip())
    files = sorted(p.name for p in backup.iterdir())
    assert files == ["SHA256SUMS", "artifacts.tar", "job-logs.tar", "manifest.txt",
                     "mlflow.pgdump", "mlflow_auth.pgdump", "secrets.tar",
                     "tensorboard-logs.tar", "trainer.pgdump"]
    assert (backup.stat().st_mode & 0o077) == 0, "a backup holds the secrets: owner only"
    assert subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=backup).returncode == 0

    # The machine is lost: every container and volume gone. A new, empty platform comes up...
    ops.compose("down", "--volumes")
    ops.compose("up", "-d", "--wait", "--wait-timeout", "600")
    assert ops.admin() != admin_before  # new secrets: truly a different, empty platform
    # ...and the backup is restored over it (it holds data now, hence --yes).
    restored = ops.script("restore", str(backup), "--yes", timeout=900)
    assert "safety backup" in restored.stderr

    assert ops.script("ca-cert").stdout == ca_before  # clients' CA files still work
    ops.ca_file.write_text(ca_before)
    assert ops.admin() == admin_before
    after = snapshot(ops, erin, run_id, job_id)  # erin logs in with her old password
    assert after == before

    # Restoring the same backup again changes nothing.
    ops.script("restore", str(backup), "--yes", timeout=900)
    assert snapshot(ops, erin, run_id, job_id) == before


def test_a_damaged_backup_is_refused_before_anything_changes(ops: Stack, populated, tmp_path):
    run_id, job_id, before = populated
    backup = Path(ops.script("backup", timeout=900).stdout.strip())
    with open(backup / "mlflow.pgdump", "r+b") as f:  # one flipped byte
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    result = ops.script("restore", str(backup), "--yes", check=False)
    assert result.returncode != 0 and "is damaged" in result.stderr
    assert "nothing was changed" in result.stderr
    assert ops.compose("ps", "--status", "running", "-q", "mlflow").stdout.strip()


def test_restore_over_data_needs_a_confirmation(ops: Stack, populated):
    backups = sorted((ops.workdir / "backups").glob("mlstack-*Z"))
    result = ops.script("restore", str(backups[0]), check=False)  # no terminal, no --yes
    assert result.returncode != 0 and "pass --yes" in result.stderr
    assert "nothing was changed" in result.stderr or "--yes" in result.stderr


def test_backups_beyond_the_retention_setting_are_removed(ops: Stack, populated):
    folder = ops.workdir / "retention"
    for _ in range(3):
        ops.script("backup", "--dir", str(folder), "--keep", "2", timeout=900)
        time.sleep(1.1)  # names are dated to the second
    assert len(list(folder.glob("mlstack-*Z"))) == 2
    assert not list(folder.glob("*.partial"))


def test_status_passes_then_names_the_service_that_is_down(ops: Stack, populated):
    ok = ops.script("status")
    lines = ok.stdout.splitlines()
    for service in ("postgres", "minio", "mlflow", "tensorboard", "trainer", "trainer-api",
                    "janitor", "nginx", "init", "init-secrets"):
        assert any(line.split()[:2] == ["PASS", service] for line in lines), ok.stdout
    for expected in ("postgres-data", "minio-data", "free beside them", "mlflow ",
                     "succeeded 1", "objects,", "admin password", "still the generated one",
                     "== trainer workers", " mlstack-worker "):
        assert expected in ok.stdout, ok.stdout

    ops.settings["MLSTACK_DISK_ALERT_PERCENT"] = "1"
    try:
        full = ops.script("status", check=False)
        ops.settings["MLSTACK_DISK_ALERT_PERCENT"] = "ninety"
        nonsense = ops.script("status", check=False)
    finally:
        del ops.settings["MLSTACK_DISK_ALERT_PERCENT"]
    assert full.returncode == 1
    assert any(line.startswith("FAIL  disk") and "MLSTACK_DISK_ALERT_PERCENT is 1" in line
               and "scripts/gc" in line for line in full.stdout.splitlines()), full.stdout
    assert nonsense.returncode == 1
    assert "MLSTACK_DISK_ALERT_PERCENT is 'ninety'" in nonsense.stderr, nonsense.stderr

    ops.compose("stop", "tensorboard")
    try:
        down = ops.script("status", check=False)
        assert down.returncode == 1
        assert any(line.startswith("FAIL  tensorboard") and "exited" in line
                   for line in down.stdout.splitlines()), down.stdout
    finally:
        ops.compose("up", "-d", "--wait", "--wait-timeout", "600")


GC_VICTIM = """
import json, os, tempfile, mlflow
from tensorboard.summary.writer.event_file_writer import EventFileWriter
mlflow.set_experiment("erin-scratch")
with mlflow.start_run(run_name="victim") as run:
    path = os.path.join(tempfile.mkdtemp(), "scratch.bin")
    open(path, "wb").write(os.urandom(1_000_000))
    mlflow.log_artifact(path)
    logdir = tempfile.mkdtemp()
    EventFileWriter(logdir).close()  # an event file, copied for TensorBoard by the janitor
    mlflow.log_artifacts(logdir, "tensorboard")
print(json.dumps({"run_id": run.info.run_id, "experiment_id": run.info.experiment_id}))
"""


def bucket_keys(stack: Stack, marker: str) -> list[str]:
    out = stack.compose("exec", "-T", "mlflow", "python", "-c", (
        "from mlstack_platform import bucket_archive\n"
        "from mlstack_platform.config import PlatformConfig\n"
        "c = PlatformConfig.from_env()\n"
        "for o in bucket_archive.objects(c.s3_client(), c.bucket): print(o['Key'])")).stdout
    return [key for key in out.split() if marker in key]


def test_gc_removes_deleted_runs_with_their_artifacts_and_tensorboard_logs(ops: Stack, erin,
                                                                           populated):
    kept_run, _, _ = populated
    logged = client(ops, erin, GC_VICTIM)
    victim = logged["run_id"]
    s = ops.session(*erin)
    # Its TensorBoard copy (from its artifacts) exists before the run is deleted.
    synced_dir = f"/var/lib/mlstack/tb-logs/{logged['experiment_id']}/victim-{victim}"
    ops.wait_for("the janitor to copy the run's event files", lambda: ops.compose(
        "exec", "-T", "tensorboard", "test", "-d", synced_dir, check=False).returncode == 0,
        timeout_s=60)
    s.post(f"{ops.base_url}/api/2.0/mlflow/runs/delete", json={"run_id": victim})
    job = s.post(f"{ops.base_url}/trainer/api/jobs", data="experiment: erin-scratch\n"
                 "entrypoint: example:diabetes-mlp\nparams: {epochs: 1}\n",
                 headers={"Content-Type": "application/yaml"}).json()
    finished = wait_for_job(ops, erin, job["id"])
    job_run = finished["mlflow_run_id"]
    s.post(f"{ops.base_url}/api/2.0/mlflow/runs/delete", json={"run_id": job_run})
    tb_dir = f"/var/lib/mlstack/tb-logs/{finished['experiment_id']}/{job['name']}-{job_run}"
    assert bucket_keys(ops, victim) and ops.compose("exec", "-T", "tensorboard", "test", "-d",
                                                    tb_dir, check=False).returncode == 0

    listed = ops.script("gc", "--older-than-days", "0", "--dry-run").stdout
    assert victim in listed and job_run in listed and kept_run not in listed
    assert bucket_keys(ops, victim)  # a dry run changes nothing

    ops.script("gc", "--older-than-days", "0", "--yes", timeout=600)
    admin = ops.session(*ops.admin())  # erin gets 403 for a run that no longer exists
    for run_id in (victim, job_run):
        r = admin.get(f"{ops.base_url}/api/2.0/mlflow/runs/get", params={"run_id": run_id})
        assert r.status_code == 404, r.text
        assert bucket_keys(ops, run_id) == []
    for folder in (tb_dir, synced_dir):
        assert ops.compose("exec", "-T", "tensorboard", "test", "-d", folder,
                           check=False).returncode == 1
    assert bucket_keys(ops, kept_run)  # live runs keep their artifacts
    again = ops.script("gc", "--older-than-days", "0", "--yes")
    assert "nothing to do" in again.stderr


STALE = """
import json, mlflow
from mlflow import MlflowClient
c = MlflowClient()
exp = mlflow.set_experiment("erin-abandoned").experiment_id
dead = c.create_run(exp)          # its client "dies": never ended
c.log_metric(dead.info.run_id, "loss", 0.5)
job = c.create_run(exp, tags={"mlstack.job_id": "999"})  # the trainer's leases own these
print(json.dumps({"dead": dead.info.run_id, "job": job.info.run_id}))
"""


def test_the_janitor_fails_runs_whose_client_died(ops: Stack, erin):
    runs = client(ops, erin, STALE)  # this stack: stale after 1 minute, checked every 5 s
    s = ops.session(*erin)

    def status(run_id):
        run = s.get(f"{ops.base_url}/api/2.0/mlflow/runs/get", params={"run_id": run_id}).json()
        return run["run"]["info"]["status"], {t["key"]: t["value"]
                                              for t in run["run"]["data"].get("tags", [])}

    assert status(runs["dead"])[0] == "RUNNING"
    ops.wait_for("the janitor to fail the abandoned run",
                 lambda: status(runs["dead"])[0] == "FAILED", timeout_s=150, every_s=5)
    assert "nothing logged for more than 1 minutes" in status(runs["dead"])[1]["mlstack.failure"]
    assert status(runs["job"])[0] == "RUNNING"


UPLOAD = """
import json, os, sys, tempfile, mlflow
from mlflow import MlflowClient
path = os.path.join(tempfile.mkdtemp(), "upload.bin")
open(path, "wb").write(os.urandom(int(sys.argv[2])))
try:
    MlflowClient().log_artifact(sys.argv[1], path)
    print(json.dumps({"ok": True}))
except Exception as exc:
    print(json.dumps({"ok": False, "error": str(exc)}))
"""


def test_a_full_artifact_disk_fails_uploads_clearly_and_loses_nothing(ops: Stack, erin,
                                                                      populated):
    run_id, job_id, before = populated
    target = client(ops, erin, "import json, mlflow\nmlflow.set_experiment('erin-full')\n"
                    "r = mlflow.MlflowClient().create_run(mlflow.get_experiment_by_name("
                    "'erin-full').experiment_id)\nprint(json.dumps({'id': r.info.run_id}))")["id"]
    # Fill the bucket's disk to the last byte (dd stops with "No space left on device").
    ops.compose("exec", "-T", "minio", "dd", "if=/dev/zero", "of=/data/.filler", "bs=1M",
                check=False)
    try:
        started = time.monotonic()
        full = client(ops, erin, UPLOAD, target, str(20_000_000))
        assert not full["ok"]
        assert "artifact store is full" in full["error"], full["error"]
        assert time.monotonic() - started < 120  # an answer, not endless retries
        assert snapshot(ops, erin, run_id, job_id)["big_sha256"] == before["big_sha256"]
    finally:
        ops.compose("exec", "-T", "minio", "rm", "-f", "/data/.filler")
    assert client(ops, erin, UPLOAD, target, str(20_000_000))["ok"]  # space is back
    after = snapshot(ops, erin, run_id, job_id)
    assert set(before["experiments"]) <= set(after.pop("experiments"))  # more tests, more
    assert after == {k: v for k, v in before.items() if k != "experiments"}
