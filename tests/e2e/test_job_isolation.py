"""Team members' own code, with their own rights and nothing more, as a hostile teammate would
test it: an uploaded job tries every attack we know of (tests/e2e/jobs/hostile/probes.py) and
each is refused, while its own logging, TensorBoard curves and model registration work; its
MLflow identity stops working when it ends. Plus the upload paths a team member uses: the CLI
with --code (honouring .gitignore, installing a wheel from requirements.txt) and plain curl."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from pathlib import Path

import pytest

from .stack import Stack
from .test_trainer import mlstack, wait_for_job

HOSTILE_CODE = Path(__file__).parent / "jobs" / "hostile"


@pytest.fixture(scope="module")
def users(stack: Stack) -> dict[str, tuple[str, str]]:
    return {name: stack.user(name) for name in ("mallory", "victor")}


@pytest.fixture(scope="module")
def victim(stack: Stack, users) -> dict:
    """victor's private things: an experiment with a run and an artifact, a registered model,
    and a finished job with its log and TensorBoard files."""
    victor = users["victor"]
    out = subprocess.run([sys.executable, "-c", """
import json, os, tempfile, mlflow
from mlflow import MlflowClient
mlflow.set_experiment("victor-private")
with mlflow.start_run() as run:
    mlflow.log_metric("secret_metric", 42)
    folder = tempfile.mkdtemp()
    open(os.path.join(folder, "secret.txt"), "w").write("victor's secret")
    mlflow.log_artifact(os.path.join(folder, "secret.txt"))
if not MlflowClient().search_registered_models("name = 'victor-model'"):
    MlflowClient().create_registered_model("victor-model")
print(json.dumps({"run": run.info.run_id, "experiment": run.info.experiment_id}))
"""], env=stack.client_env(*victor), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    s = stack.session(*victor)
    job = s.post(f"{stack.base_url}/trainer/api/jobs", data=(
        "experiment: victor-private\nentrypoint: example:breast-cancer-mlp\n"
        "params: {epochs: 1}\n")).json()
    job = wait_for_job(stack, victor, job["id"])
    assert job["state"] == "succeeded", job
    found.update(job=job["id"], tb_dir=f"{job['experiment_id']}/{job['name']}-"
                                       f"{job['mlflow_run_id']}")
    return found


@pytest.fixture(scope="module")
def hostile_job(stack: Stack, users, victim, tmp_path_factory) -> dict:
    spec = tmp_path_factory.mktemp("hostile") / "job.yaml"
    spec.write_text(textwrap.dedent(f"""\
        name: curious
        experiment: mallory-experiments
        entrypoint: module:probes:main
        register_model: mallory-model
        params:
          victim_run: {victim['run']}
          victim_experiment: "{victim['experiment']}"
          victim_model: victor-model
          victim_user: victor
          victim_tb_dir: {victim['tb_dir']}
          other_job: {victim['job']}
          own_model: mallory-model
        """))
    out = mlstack(stack, users["mallory"], "submit", str(spec), "--code", str(HOSTILE_CODE),
                  "--follow")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    job_id = int(out.stdout.splitlines()[0])
    job = wait_for_job(stack, users["mallory"], job_id)
    s = stack.session(*users["mallory"])
    report = s.get(f"{stack.base_url}/get-artifact",
                   params={"path": "report.json", "run_uuid": job["mlflow_run_id"]})
    assert report.status_code == 200, report.text
    identity = next(line.split()[1:] for line in out.stdout.splitlines()
                    if line.startswith("JOB-IDENTITY "))
    return {"job": job, "report": report.json(), "identity": tuple(identity)}


def refused(outcome) -> bool:
    return outcome.startswith("refused")


@pytest.mark.parametrize("attack", [
    "worker credential", "worker secrets folder", "platform secrets", "trainer-api secrets",
    "job logs", "other job log", "job homes", "tensorboard root", "victim tensorboard",
    "create user", "make admin", "grant self", "victim experiment", "victim run",
    "victim artifact", "victim model", "victim model version", "claim as worker",
    "mlflow direct", "postgres direct", "s3 direct", "trainer-api direct", "internet",
])
def test_an_uploaded_job_cannot(hostile_job, attack):
    assert refused(hostile_job["report"][attack]), hostile_job["report"][attack]


def test_an_uploaded_job_cannot_read_other_processes_environments(hostile_job):
    tried = hostile_job["report"]["foreign environ"]
    assert tried, "the job saw no other process (the worker's should be there)"
    assert all(refused(outcome) for outcome in tried), tried


def test_a_forged_identity_header_shows_nothing_of_another_user(hostile_job):
    # Through the front door with X-Mlstack-User: victor, the jobs API still sees the job's
    # own identity (MLflow's answer to its credentials), which submitted nothing.
    assert hostile_job["report"]["forged jobs listing"] == "ALLOWED: []"


def test_the_job_runs_with_its_own_identity_and_its_own_work_succeeds(stack: Stack, users,
                                                                     hostile_job):
    job, report = hostile_job["job"], hostile_job["report"]
    assert job["state"] == "succeeded", job
    assert report["identity"].startswith("mlstack-job-")
    s = stack.session(*users["mallory"])
    run = s.get(f"{stack.base_url}/api/2.0/mlflow/runs/get",
                params={"run_id": job["mlflow_run_id"]}).json()["run"]
    assert {m["key"]: m["value"] for m in run["data"]["metrics"]}["own_metric"] == 3.0
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["mlflow.user"] == "mallory"  # the person, not the job's identity
    # The code it ran is kept with the run, and its digest names it.
    code = s.get(f"{stack.base_url}/get-artifact",
                 params={"path": "code/code.tar.gz", "run_uuid": job["mlflow_run_id"]})
    assert hashlib.sha256(code.content).hexdigest() == tags["mlstack.code_sha256"] \
        == job["code_sha256"]
    versions = s.get(f"{stack.base_url}/api/2.0/mlflow/registered-models/get",
                     params={"name": "mallory-model"}).json()["registered_model"]
    assert versions["latest_versions"][0]["run_id"] == job["mlflow_run_id"]
    tb_run = f"curious-{job['mlflow_run_id']}"
    stack.wait_for("TensorBoard to show the job's own curve", lambda: "own_curve" in s.get(
        f"{stack.base_url}/tensorboard/{job['experiment_id']}/data/plugin/scalars/tags"
    ).json().get(tb_run, {}), timeout_s=120)


def test_links_a_job_plants_in_its_tensorboard_folder_show_nothing_of_others(
        stack: Stack, users, victim, hostile_job):
    job = hostile_job["job"]
    s = stack.session(*users["mallory"])
    tb = f"{stack.base_url}/tensorboard/{job['experiment_id']}"
    stack.wait_for("the job's own curve", lambda: f"curious-{job['mlflow_run_id']}" in s.get(
        f"{tb}/data/runs").json(), timeout_s=60)
    runs = s.get(f"{tb}/data/runs").json()
    assert runs == [f"curious-{job['mlflow_run_id']}"], runs  # no leak-* run, nothing of victor's
    tags = s.get(f"{tb}/data/plugin/scalars/tags").text
    assert victim["tb_dir"].split("-")[-1] not in tags and "leak" not in tags


def test_the_jobs_credentials_stop_working_when_it_ends(stack: Stack, hostile_job):
    identity = hostile_job["identity"]

    def search():
        return stack.session(*identity).get(f"{stack.base_url}/api/2.0/mlflow/experiments/search",
                                             params={"max_results": 1})
    # The identity is deleted as the job ends: from then on it reads nothing. (nginx believes
    # an accepted credential for 4 s: until then the deleted user's requests may fail in
    # MLflow's permission lookup rather than at nginx's login check, 401.)
    assert search().status_code != 200
    stack.wait_for("the deleted identity to be refused at login",
                   lambda: search().status_code == 401, timeout_s=15, every_s=1)


def test_registering_into_someone_elses_model_is_refused_at_submit(stack: Stack, users, victim):
    s = stack.session(*users["mallory"])
    r = s.post(f"{stack.base_url}/trainer/api/jobs", data=(
        "experiment: mallory-experiments\nentrypoint: example:breast-cancer-mlp\n"
        "register_model: victor-model\n"))
    assert r.status_code == 403
    assert "victor-model" in r.json()["error"] and "EDIT" in r.json()["error"]
    r = s.post(f"{stack.base_url}/trainer/api/jobs", data=(
        "experiment: victor-private\nentrypoint: example:breast-cancer-mlp\n"))
    assert r.status_code == 403 and "victor-private" in r.json()["error"]


def test_a_cross_origin_post_creates_no_job(stack: Stack, users):
    s = stack.session(*users["mallory"])
    before = len(s.get(f"{stack.base_url}/trainer/api/jobs").json()["jobs"])
    r = s.post(f"{stack.base_url}/trainer/api/jobs", headers={
        "Origin": "https://evil.example", "Content-Type": "text/plain"},
        data="experiment: x\nentrypoint: example:breast-cancer-mlp\n")
    assert r.status_code == 403
    assert len(s.get(f"{stack.base_url}/trainer/api/jobs").json()["jobs"]) == before


def test_the_jobs_api_ignores_identity_headers_from_inside_the_network(stack: Stack):
    # From a container on the platform's network, straight to trainer-api, no password.
    out = stack.compose("exec", "-T", "mlflow", "python", "-c", """
import urllib.request, urllib.error
request = urllib.request.Request("http://trainer-api:8000/trainer/api/jobs?all=1",
                                 headers={"X-Mlstack-User": "admin", "X-Remote-User": "admin"})
try:
    urllib.request.urlopen(request, timeout=10)
    print("ALLOWED")
except urllib.error.HTTPError as exc:
    print(exc.code)
""")
    assert out.stdout.strip() == "401"


# --- bringing one's own code --------------------------------------------------------------

def wheel(name: str, module_source: str) -> tuple[str, bytes]:
    """A minimal pure-Python wheel, built by hand: no build tools, no network."""
    dist = f"{name}-1.0.dist-info"
    files = {f"{name}/__init__.py": module_source.encode(),
             f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n".encode(),
             f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\n"
                              b"Tag: py3-none-any\n"}
    record = "".join(
        f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}\n"
        for path, data in files.items()) + f"{dist}/RECORD,,\n"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for path, data in {**files, f"{dist}/RECORD": record.encode()}.items():
            z.writestr(path, data)
    return f"{name}-1.0-py3-none-any.whl", buffer.getvalue()


TRAIN_SCRIPT = """\
import argparse, os, mlflow, teamhelpers
parser = argparse.ArgumentParser()
parser.add_argument("--scale", type=float)
args = parser.parse_args()
assert not os.path.exists("data/huge.bin"), "a .gitignored file was uploaded"
with mlflow.start_run():  # continues the job's run (MLFLOW_RUN_ID)
    for step in range(3):
        mlflow.log_metric("scaled", teamhelpers.scale(step, args.scale), step=step)
    mlflow.set_tag("helper_version", teamhelpers.VERSION)
"""


def test_a_job_uploaded_with_the_cli_runs_with_its_own_requirements(stack: Stack, users,
                                                                    tmp_path):
    code = tmp_path / "my-project"
    (code / "data").mkdir(parents=True)
    (code / "train.py").write_text(TRAIN_SCRIPT)
    (code / "data" / "huge.bin").write_bytes(b"\0" * 1024)
    (code / ".gitignore").write_text("data/\n")
    name, data = wheel("teamhelpers", "VERSION = 'wheel-1.0'\n"
                                      "def scale(x, factor):\n    return x * factor\n")
    (code / name).write_bytes(data)
    (code / "requirements.txt").write_text(f"./{name}\n")
    spec = tmp_path / "job.yaml"
    spec.write_text("experiment: mallory-own-code\nentrypoint: script:train.py\n"
                    "params: {scale: 2.5}\n")
    out = mlstack(stack, users["mallory"], "submit", str(spec), "--code", str(code), "--follow")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "Successfully installed teamhelpers-1.0" in out.stdout  # pip's output, in the log
    job = wait_for_job(stack, users["mallory"], int(out.stdout.splitlines()[0]))
    s = stack.session(*users["mallory"])
    history = s.get(f"{stack.base_url}/api/2.0/mlflow/metrics/get-history", params={
        "run_id": job["mlflow_run_id"], "metric_key": "scaled"}).json()["metrics"]
    assert [m["value"] for m in sorted(history, key=lambda m: m["step"])] == [0.0, 2.5, 5.0]


def test_a_failed_install_fails_the_job_with_pips_message(stack: Stack, users, tmp_path):
    code = tmp_path / "needs-the-internet"
    code.mkdir()
    (code / "train.py").write_text("print('never runs')\n")
    (code / "requirements.txt").write_text("surely-not-a-package-mlstack==9.9\n")
    spec = tmp_path / "job.yaml"
    spec.write_text("experiment: mallory-own-code\nentrypoint: script:train.py\n")
    out = mlstack(stack, users["mallory"], "submit", str(spec), "--code", str(code), "--follow")
    assert out.returncode == 1
    assert "No matching distribution found for surely-not-a-package-mlstack" in out.stdout
    assert "No package index is configured for jobs" in out.stdout


def test_a_job_uploaded_with_curl_runs(stack: Stack, users, tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "job.py").write_text(
        "import mlflow\n\ndef main(params, tensorboard_dir):\n"
        "    mlflow.log_metric('from_curl', float(params['value']))\n")
    archive = tmp_path / "code.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src", arcname=".")
    spec = tmp_path / "job.yaml"
    spec.write_text("experiment: mallory-own-code\nentrypoint: module:job:main\n"
                    "params: {value: 7}\n")
    curl = subprocess.run(
        ["curl", "-sS", "--fail-with-body", "--cacert", str(stack.ca_file), "-u",
         ":".join(users["mallory"]), "-F", f"spec=@{spec}", "-F", f"code=@{archive}",
         f"{stack.base_url}/trainer/api/jobs"], capture_output=True, text=True, timeout=60)
    assert curl.returncode == 0, curl.stdout + curl.stderr
    submitted = json.loads(curl.stdout)
    assert submitted["code_sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
    job = wait_for_job(stack, users["mallory"], submitted["id"])
    assert job["state"] == "succeeded", job
    run = stack.session(*users["mallory"]).get(f"{stack.base_url}/api/2.0/mlflow/runs/get",
                                               params={"run_id": job["mlflow_run_id"]}).json()
    assert {m["key"]: m["value"] for m in run["run"]["data"]["metrics"]}["from_curl"] == 7.0


def test_a_job_cannot_outlive_its_end_or_leave_files_for_the_next_job(stack: Stack, users,
                                                                       tmp_path):
    """mallory's job starts a daemon that kills whatever it can (as the job's uid) and plants
    files in /tmp, /var/tmp and /dev/shm; victor's next job on the same worker sees none of it."""
    leaver_dir = Path(__file__).parent / "jobs" / "leaver"
    spec = tmp_path / "leaver.yaml"
    spec.write_text("experiment: mallory-own-code\nentrypoint: module:leaver:main\n")
    out = mlstack(stack, users["mallory"], "submit", str(spec), "--code", str(leaver_dir),
                  "--follow")
    assert "leaver: daemon started" in out.stdout, out.stdout[-2000:] + out.stderr[-1000:]
    leaver = wait_for_job(stack, users["mallory"], int(out.stdout.splitlines()[0]))
    spec = tmp_path / "observer.yaml"
    spec.write_text("experiment: victor-private\nentrypoint: module:observer:main\n")
    out = mlstack(stack, users["victor"], "submit", str(spec), "--code", str(leaver_dir),
                  "--follow")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-1000:]
    observer = wait_for_job(stack, users["victor"], int(out.stdout.splitlines()[0]))
    # Same worker container (its host name), or the observation proves nothing.
    assert leaver["worker"].rsplit("-", 1)[0] == observer["worker"].rsplit("-", 1)[0]
    seen = json.loads(next(line.split(" ", 1)[1] for line in out.stdout.splitlines()
                           if line.startswith("OBSERVED ")))
    assert seen == {"other_uids": [], "planted": []}


def test_oversized_uploads_are_refused_through_the_front_door(stack: Stack, users):
    """Through nginx, as an attacker would send them: a chunked spec (no Content-Length to
    check first) and a gzip bomb under the upload limit. Both refused; the API still answers."""
    s = stack.session(*users["mallory"])

    def chunks():
        yield b"experiment: x\nentrypoint: example:breast-cancer-mlp\n"
        for _ in range(4):
            yield b"#" * (1 << 20) + b"\n"
    r = s.post(f"{stack.base_url}/trainer/api/jobs", data=chunks(),
               headers={"Content-Type": "application/yaml"})
    assert r.status_code == 413 and "over 1 MB" in r.json()["error"]
    bomb = io.BytesIO()
    with tarfile.open(fileobj=bomb, mode="w:gz") as tar:
        script = tarfile.TarInfo("train.py")
        tar.addfile(script, io.BytesIO(b""))
        zeros = tarfile.TarInfo("zeros.bin")
        zeros.size = 600 << 20  # over 10x the 50 MB limit once inflated; ~600 KB packed
        tar.addfile(zeros, io.BytesIO(bytes(zeros.size)))
    r = s.post(f"{stack.base_url}/trainer/api/jobs", files={
        "spec": ("job.yaml", "experiment: x\nentrypoint: script:train.py\n"),
        "code": ("code.tar.gz", bomb.getvalue(), "application/gzip")})
    assert r.status_code == 400 and "unpacks to more than" in r.json()["problems"][0]
    assert s.get(f"{stack.base_url}/trainer/api/config").status_code == 200
