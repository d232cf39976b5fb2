"""TensorBoard per experiment, through nginx, as two plain users see it (ada and bruno: the
issue's alice and bob) and as MLflow's permissions say: a trainer job's curves and a run trained
on a laptop (event files logged as artifacts) side by side in their experiment's TensorBoard;
nothing of them for a user who may not read the experiment, until a grant in MLflow."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from .stack import Stack
from .test_operations import client
from .test_trainer import mlstack, wait_for_job

# A team member's laptop: Keras-style event files (train/), uploaded under tensorboard/ with
# the stock MLflow client, as the README shows.
LAPTOP_RUN = """
import json, sys, tempfile, time, mlflow
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter
experiment, name, *values = sys.argv[1:]
mlflow.set_experiment(experiment)
with mlflow.start_run(run_name=name) as run:
    logdir = tempfile.mkdtemp()
    writer = EventFileWriter(logdir + "/train")
    for step, value in enumerate(map(float, values)):
        summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag="epoch_loss",
                                                                       simple_value=value)])
        writer.add_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))
    writer.close()
    mlflow.log_artifacts(logdir, "tensorboard")
print(json.dumps({"run_id": run.info.run_id, "experiment_id": run.info.experiment_id}))
"""


def laptop_run(stack: Stack, user, experiment: str, name: str, *values: float) -> dict:
    return client(stack, user, LAPTOP_RUN, experiment, name, *map(str, values))


@pytest.fixture(scope="module")
def ada(stack: Stack):
    return stack.user("ada")


@pytest.fixture(scope="module")
def bruno(stack: Stack):
    return stack.user("bruno")


def tb_runs(stack: Stack, user, selection: str):
    """The runs TensorBoard lists (its own data API), or the HTTP status when refused."""
    r = stack.session(*user).get(f"{stack.base_url}/tensorboard/{selection}/data/runs")
    return r.json() if r.status_code == 200 else r.status_code


def scalars(stack: Stack, user, experiment_id: str, run: str, tag: str) -> list:
    r = stack.session(*user).get(
        f"{stack.base_url}/tensorboard/{experiment_id}/data/plugin/scalars/scalars",
        params={"run": run, "tag": tag})
    assert r.status_code == 200, r.text
    return [(step, round(value, 4)) for _, step, value in r.json()]


def index(stack: Stack, user) -> dict:
    r = stack.session(*user).get(f"{stack.base_url}/tensorboard/", params={"format": "json"})
    assert r.status_code == 200, r.text
    return {e["experiment_id"]: e for e in r.json()["experiments"]}


def run_tags(stack: Stack, user, run_id: str) -> dict:
    r = stack.session(*user).get(f"{stack.base_url}/api/2.0/mlflow/runs/get",
                                 params={"run_id": run_id})
    return {t["key"]: t["value"] for t in r.json()["run"]["data"].get("tags", [])}


def as_user(stack: Stack, user, code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=stack.client_env(*user),
                          capture_output=True, text=True, timeout=120, check=True)


@pytest.fixture(scope="module")
def adas_curves(stack: Stack, ada, tmp_path_factory) -> dict:
    """ada's experiment with a finished trainer job and a laptop run, both in TensorBoard."""
    spec = tmp_path_factory.mktemp("ada") / "job.yaml"
    spec.write_text("name: ada-job\nexperiment: ada-curves\nentrypoint: example:breast-cancer-mlp\n"
                    "params: {epochs: 2}\n")
    submitted = mlstack(stack, ada, "submit", str(spec))
    assert submitted.returncode == 0, submitted.stderr
    laptop = laptop_run(stack, ada, "ada-curves", "ada-laptop", 0.9, 0.5, 0.25)
    job = wait_for_job(stack, ada, int(submitted.stdout.strip()))
    assert job["state"] == "succeeded", job
    assert job["experiment_id"] == laptop["experiment_id"]
    runs = {"job": f"ada-job-{job['mlflow_run_id']}/train",
            "laptop": f"ada-laptop-{laptop['run_id']}/train"}
    experiment_id = laptop["experiment_id"]
    # Within a minute of the upload (the janitor copies every 10 s).
    stack.wait_for("both runs in the experiment's TensorBoard",
                   lambda: set(runs.values()) <= set(tb_runs(stack, ada, experiment_id)),
                   timeout_s=60)
    return {"experiment_id": experiment_id, "runs": runs, "job": job, "laptop": laptop}


def test_a_job_and_a_laptop_run_show_side_by_side_in_their_experiments_tensorboard(
        stack: Stack, ada, adas_curves):
    experiment_id, runs = adas_curves["experiment_id"], adas_curves["runs"]
    assert scalars(stack, ada, experiment_id, runs["laptop"], "epoch_loss") == [
        (0, 0.9), (1, 0.5), (2, 0.25)]
    # Written by Keras' own TensorBoard callback in the job.
    assert [step for step, _ in scalars(stack, ada, experiment_id, runs["job"], "epoch_loss")] \
        == [0, 1]
    # Exactly this experiment's runs.
    assert sorted(tb_runs(stack, ada, experiment_id)) == sorted(
        [*runs.values(), runs["job"].replace("/train", "/validation")])
    # Both runs carry the same kind of link: their experiment's TensorBoard, filtered to them.
    for run_id in (adas_curves["job"]["mlflow_run_id"], adas_curves["laptop"]["run_id"]):
        link = stack.wait_for("the run's TensorBoard link", lambda run_id=run_id: run_tags(
            stack, ada, run_id).get("mlstack.tensorboard_url"), timeout_s=60)
        assert link == f"{stack.base_url}/tensorboard/{experiment_id}/?runFilter={run_id}#timeseries"
    assert index(stack, ada)[experiment_id]["name"] == "ada-curves"


def test_a_user_who_may_not_read_the_experiment_sees_no_trace_of_its_runs(
        stack: Stack, ada, bruno, adas_curves):
    experiment_id = adas_curves["experiment_id"]
    secret_ids = (adas_curves["job"]["mlflow_run_id"], adas_curves["laptop"]["run_id"])
    brunos = laptop_run(stack, bruno, "bruno-curves", "bruno-laptop", 1.0, 0.1)["experiment_id"]
    stack.wait_for("bruno's own run in TensorBoard",
                   lambda: tb_runs(stack, bruno, brunos) not in (403, []), timeout_s=60)
    s = stack.session(*bruno)
    seen = []
    for path in (f"/tensorboard/{experiment_id}/", f"/tensorboard/{experiment_id}/data/runs",
                 f"/tensorboard/{experiment_id}/data/plugin/scalars/tags",
                 f"/tensorboard/{experiment_id}/data/plugin/scalars/scalars?run="
                 f"{adas_curves['runs']['laptop']}&tag=epoch_loss",
                 f"/tensorboard/{experiment_id}/data/plugin/timeseries/tags",
                 f"/tensorboard/{brunos},{experiment_id}/data/runs",
                 f"/tensorboard/{experiment_id},{brunos}/data/runs",
                 "/tensorboard/all/data/runs",
                 f"/tensorboard/{brunos}/../{experiment_id}/data/runs",
                 f"/tensorboard/{brunos}/%2e%2e/{experiment_id}/data/runs",
                 f"/tensorboard/{experiment_id}"):
        r = s.get(f"{stack.base_url}{path}", allow_redirects=False)
        assert r.status_code in (403, 404), (path, r.status_code)
        seen.append(r.text)
    # What bruno may open: his own experiment's TensorBoard, its plugins, and the index.
    for path in (f"/tensorboard/{brunos}/data/runs",
                 f"/tensorboard/{brunos}/data/plugin/scalars/tags",
                 "/tensorboard/?format=json", "/tensorboard/"):
        r = s.get(f"{stack.base_url}{path}")
        assert r.status_code == 200, (path, r.status_code)
        seen.append(r.text)
    assert experiment_id not in index(stack, bruno)
    for text in seen:
        assert not any(run_id in text for run_id in secret_ids)
        assert "ada-" not in text


def test_a_grant_in_mlflow_opens_the_tensorboard_and_a_revocation_closes_it(
        stack: Stack, ada, bruno, adas_curves):
    experiment_id, runs = adas_curves["experiment_id"], adas_curves["runs"]
    assert tb_runs(stack, bruno, experiment_id) == 403
    grant = f"""
from mlflow.server.auth.client import AuthServiceClient
import os
AuthServiceClient(os.environ["MLFLOW_TRACKING_URI"]).grant_user_permission(
    "bruno", "experiment", "{experiment_id}", "READ")
"""
    as_user(stack, ada, grant)  # ada manages her experiment: she may share it

    def sees_adas_runs() -> bool:
        listed = tb_runs(stack, bruno, experiment_id)
        return listed != 403 and set(runs.values()) <= set(listed)

    # Within 15 s end to end (MLflow reads grants per request: at once, in fact).
    stack.wait_for("bruno to see ada's runs", sees_adas_runs, timeout_s=15, every_s=1)
    assert experiment_id in index(stack, bruno)
    as_user(stack, ada, grant.replace("grant_user_permission", "revoke_user_permission")
            .replace(', "READ")', ")"))
    stack.wait_for("bruno to lose ada's runs",
                   lambda: tb_runs(stack, bruno, experiment_id) == 403, timeout_s=15, every_s=1)


def test_experiments_named_like_paths_and_a_rename_keep_their_data_in_place(stack: Stack, ada):
    dotted = laptop_run(stack, ada, "../x", "dots", 3.0)
    slashed = laptop_run(stack, ada, "a/b", "../../etc", 4.0)
    for run, value in ((dotted, 3.0), (slashed, 4.0)):
        stack.wait_for("the run in its experiment's TensorBoard",
                       lambda run=run: tb_runs(stack, ada, run["experiment_id"]) not in (403, []),
                       timeout_s=60)
        (name,) = tb_runs(stack, ada, run["experiment_id"])
        assert name.endswith(f"-{run['run_id']}/train") and "/" not in name[:-len("/train")]
        assert scalars(stack, ada, run["experiment_id"], name, "epoch_loss") == [(0, value)]
    s = stack.session(*ada)
    s.post(f"{stack.base_url}/api/2.0/mlflow/experiments/update",
           json={"experiment_id": slashed["experiment_id"], "new_name": "renamed"}
           ).raise_for_status()
    (name,) = tb_runs(stack, ada, slashed["experiment_id"])
    assert scalars(stack, ada, slashed["experiment_id"], name, "epoch_loss") == [(0, 4.0)]
    assert index(stack, ada)[slashed["experiment_id"]]["name"] == "renamed"
    # Nothing of either landed in another experiment's TensorBoard.
    assert tb_runs(stack, ada, dotted["experiment_id"]) != tb_runs(
        stack, ada, slashed["experiment_id"])


def test_several_experiments_side_by_side_and_everything_for_admins(stack: Stack, ada,
                                                                    adas_curves):
    other = laptop_run(stack, ada, "ada-other", "other", 2.0)
    stack.wait_for("the other run in TensorBoard",
                   lambda: tb_runs(stack, ada, other["experiment_id"]) not in (403, []),
                   timeout_s=60)
    first, second = sorted((adas_curves["experiment_id"], other["experiment_id"]), key=int)
    s = stack.session(*ada)
    # The index's form sends the chosen experiments to one TensorBoard.
    chosen = s.get(f"{stack.base_url}/tensorboard/compare",
                   params={"experiment": [second, first]})
    assert chosen.url.endswith(f"/tensorboard/{first},{second}/") and chosen.status_code == 200
    both = tb_runs(stack, ada, f"{first},{second}")
    assert f"{other['experiment_id']}/other-{other['run_id']}/train" in both
    assert f"{adas_curves['experiment_id']}/{adas_curves['runs']['laptop']}" in both
    admin = stack.admin()
    everything = tb_runs(stack, admin, "all")
    assert f"{other['experiment_id']}/other-{other['run_id']}/train" in everything
    assert tb_runs(stack, ada, "all") == 403


def test_a_deleted_run_or_experiment_leaves_tensorboard_at_once(stack: Stack, ada):
    kept = laptop_run(stack, ada, "ada-deletes", "kept", 1.0)
    gone = laptop_run(stack, ada, "ada-deletes", "gone", 2.0)
    experiment_id = kept["experiment_id"]
    names = {f"kept-{kept['run_id']}/train", f"gone-{gone['run_id']}/train"}
    stack.wait_for("both runs in TensorBoard",
                   lambda: names <= set(tb_runs(stack, ada, experiment_id)), timeout_s=60)
    s = stack.session(*ada)
    api = f"{stack.base_url}/api/2.0/mlflow"
    s.post(f"{api}/runs/delete", json={"run_id": gone["run_id"]}).raise_for_status()
    assert tb_runs(stack, ada, experiment_id) == [f"kept-{kept['run_id']}/train"]
    # MLflow's delete is soft: a restored run comes back.
    s.post(f"{api}/runs/restore", json={"run_id": gone["run_id"]}).raise_for_status()
    stack.wait_for("the restored run back in TensorBoard",
                   lambda: names <= set(tb_runs(stack, ada, experiment_id)), timeout_s=30)
    s.post(f"{api}/experiments/delete", json={"experiment_id": experiment_id}).raise_for_status()
    assert tb_runs(stack, ada, experiment_id) == 404
    assert experiment_id not in index(stack, ada)
    assert json.loads(s.get(f"{stack.base_url}/tensorboard/?format=json").text)["all"] is False


def test_an_upload_naming_someone_elses_run_under_ones_own_experiment_leaves_it_alone(
        stack: Stack, ada, bruno):
    """MLflow checks an artifact upload's rights on the experiment its path names only: bruno
    may write under his experiment with ada's run id in the path. That must not tag ada's run
    nor put anything in her experiment's TensorBoard."""
    code = """
import json, mlflow
mlflow.set_experiment("ada-untouched")
with mlflow.start_run() as run:
    mlflow.log_param("p", 1)
print(json.dumps({"run_id": run.info.run_id, "experiment_id": run.info.experiment_id}))
"""
    adas = client(stack, ada, code)
    brunos = laptop_run(stack, bruno, "bruno-curves", "bruno-again", 0.5)["experiment_id"]
    r = stack.session(*bruno).put(
        f"{stack.base_url}/api/2.0/mlflow-artifacts/artifacts/{brunos}/{adas['run_id']}"
        f"/artifacts/tensorboard/train/events.out.tfevents.1", data=b"not ada's")
    assert r.status_code in (200, 403), r.text
    time.sleep(15)  # longer than the janitor's copy interval (10 s)
    assert "mlstack.tensorboard_url" not in run_tags(stack, ada, adas["run_id"])
    assert tb_runs(stack, ada, adas["experiment_id"]) == []
