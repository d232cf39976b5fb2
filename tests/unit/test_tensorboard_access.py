"""Who may open which TensorBoard: the platform's MLflow app (`--app-name mlstack`), run as a real
MLflow server with basic auth under gunicorn as on the platform, answers nginx's auth subrequest
from MLflow's own permissions, lists the experiments a caller may read, and queues uploads under
a run's `tensorboard/`."""

from __future__ import annotations

import sqlite3

import pytest
import requests
from mlflow.server.auth.client import AuthServiceClient

from mlstack_platform import tensorboard_sync
from mlstack_platform.app import parse_selection

from .conftest import ADMIN, ALICE, BOB


@pytest.fixture
def server(mlstack_app):
    return mlstack_app


def api(server, user, method, path, **kwargs) -> requests.Response:
    return requests.request(method, f"{server['uri']}/api/2.0/mlflow/{path}", auth=user,
                            timeout=30, **kwargs)


def experiment(server, user, name) -> str:
    return api(server, user, "post", "experiments/create", json={"name": name}).json()[
        "experiment_id"]


def access(server, user, uri) -> int:
    return requests.get(f"{server['uri']}/mlstack/tensorboard/access", auth=user, timeout=30,
                        headers={"X-Original-URI": uri}).status_code


def as_user(user, call):
    """An AuthServiceClient call made with `user`'s own credentials (the client reads them from
    the environment), as the experiment's owner would in the UI."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_USERNAME", user[0])
        env.setenv("MLFLOW_TRACKING_PASSWORD", user[1])
        return call()


@pytest.mark.parametrize(("uri", "expected"), [
    ("/tensorboard/7/", ["7"]),
    ("/tensorboard/7", ["7"]),
    ("/tensorboard/7/data/runs?x=1", ["7"]),
    ("/tensorboard/3,12/data/plugin/scalars/tags", ["3", "12"]),
    ("/tensorboard/all/", "all"),
    ("/tensorboard/", None),
    ("/tensorboard/7x/", None),
    ("/tensorboard/../7/", None),
    ("/tensorboard/7,/", None),
    ("/mlflow/tensorboard/7/", None),
])
def test_the_experiments_a_tensorboard_address_names(uri, expected):
    assert parse_selection(uri) == expected


def test_only_readers_of_every_named_experiment_may_open_its_tensorboard(server):
    alices = experiment(server, ALICE, "alice-tb-access")
    bobs = experiment(server, BOB, "bob-tb-access")
    assert access(server, ALICE, f"/tensorboard/{alices}/data/runs") == 204
    assert access(server, BOB, f"/tensorboard/{alices}/data/runs") == 403
    assert access(server, BOB, f"/tensorboard/{alices},{bobs}/") == 403
    assert access(server, ALICE, f"/tensorboard/{alices},{bobs}/") == 403
    # No such experiment: nothing to read (an admin passes; TensorBoard then answers 404).
    assert access(server, ALICE, "/tensorboard/987654/") == 403
    # Every experiment at once: admins only.
    assert access(server, ALICE, "/tensorboard/all/") == 403
    assert access(server, ADMIN, "/tensorboard/all/") == 204
    assert access(server, ADMIN, f"/tensorboard/{alices},{bobs}/") == 204
    # Not a TensorBoard address at all.
    assert access(server, ALICE, "/tensorboard/") == 403
    # A wrong password is a login problem, not a permission one.
    assert access(server, (ALICE[0], "wrong-password"), f"/tensorboard/{alices}/") == 401


def test_a_grant_and_its_revocation_in_mlflow_take_effect_at_once(server):
    alices = experiment(server, ALICE, "alice-tb-shared")
    assert access(server, BOB, f"/tensorboard/{alices}/") == 403
    auth = AuthServiceClient(server["uri"])
    as_user(ALICE, lambda: auth.grant_user_permission(BOB[0], "experiment", alices, "READ"))
    assert access(server, BOB, f"/tensorboard/{alices}/") == 204
    bobs = experiment(server, BOB, "bob-tb-shared")
    assert access(server, BOB, f"/tensorboard/{alices},{bobs}/") == 204  # side by side
    as_user(ALICE, lambda: auth.revoke_user_permission(BOB[0], "experiment", alices))
    assert access(server, BOB, f"/tensorboard/{alices}/") == 403


def test_the_index_lists_the_readable_experiments_with_tensorboard_data(server):
    alices = experiment(server, ALICE, "alice-tb-index")
    empty = experiment(server, ALICE, "alice-tb-nothing")
    run = api(server, ALICE, "post", "runs/create", json={"experiment_id": alices}).json()
    run_id = run["run"]["info"]["run_id"]
    api(server, ALICE, "post", "runs/set-tag",
        json={"run_id": run_id, "key": tensorboard_sync.TAG, "value": "x"}).raise_for_status()

    def listed(user):
        response = requests.get(f"{server['uri']}/mlstack/tensorboard/?format=json", auth=user,
                                timeout=30)
        response.raise_for_status()
        return {e["experiment_id"]: e for e in response.json()["experiments"]}

    assert listed(ALICE)[alices] == {"experiment_id": alices, "name": "alice-tb-index",
                                     "runs": 1}
    assert empty not in listed(ALICE)
    assert alices not in listed(BOB)
    assert alices in listed(ADMIN)
    page = requests.get(f"{server['uri']}/mlstack/tensorboard/", auth=ALICE, timeout=30)
    assert f'href="/tensorboard/{alices}/"' in page.text and "all/" not in page.text
    # A deleted run leaves the index with it.
    api(server, ALICE, "post", "runs/delete", json={"run_id": run_id}).raise_for_status()
    assert alices not in listed(ALICE)
    assert requests.get(f"{server['uri']}/mlstack/tensorboard/", timeout=30).status_code == 401


def test_compare_sends_the_chosen_experiments_to_one_tensorboard(server):
    response = requests.get(f"{server['uri']}/mlstack/tensorboard/compare?experiment=12"
                            "&experiment=3&experiment=x&experiment=3", auth=ALICE, timeout=30,
                            allow_redirects=False)
    assert response.status_code == 303 and response.headers["Location"] == "/tensorboard/3,12/"
    # Digits that are not ASCII ("²", Arabic-Indic) are not experiment ids.
    response = requests.get(f"{server['uri']}/mlstack/tensorboard/compare",
                            params={"experiment": ["²", "١١٧", "7"]}, auth=ALICE, timeout=30,
                            allow_redirects=False)
    assert response.status_code == 303 and response.headers["Location"] == "/tensorboard/7/"


def test_uploads_under_tensorboard_are_queued_for_the_janitor(server):
    alices = experiment(server, ALICE, "alice-tb-upload")
    run_id = api(server, ALICE, "post", "runs/create",
                 json={"experiment_id": alices}).json()["run"]["info"]["run_id"]
    base = f"{server['uri']}/api/2.0/mlflow-artifacts/artifacts/{alices}/{run_id}/artifacts"

    def queued():
        with sqlite3.connect(server["db"]) as db:
            return {row[0] for row in db.execute(f"SELECT run_uuid FROM {tensorboard_sync.QUEUE}")}

    assert requests.put(f"{base}/model/weights.bin", data=b"x", auth=ALICE, timeout=30).ok
    assert run_id not in queued()
    assert requests.put(f"{base}/tensorboard/train/events.out.tfevents.1", data=b"x",
                        auth=ALICE, timeout=30).ok
    assert run_id in queued()
    # bob may not write there: refused, and nothing queued for it.
    bobs = experiment(server, BOB, "bob-tb-upload")
    bobs_run = api(server, BOB, "post", "runs/create",
                   json={"experiment_id": bobs}).json()["run"]["info"]["run_id"]
    bobs_base = base.replace(f"/{alices}/{run_id}/", f"/{bobs}/{bobs_run}/")
    assert requests.put(f"{bobs_base}/tensorboard/x", data=b"x", auth=ALICE,
                        timeout=30).status_code == 403
    assert bobs_run not in queued()
    # bob's run id under alice's own experiment: MLflow checks alice's rights on her
    # experiment only, and takes it; bob's run is not touched (its files are not there).
    mixed = base.replace(f"/{run_id}/", f"/{bobs_run}/")
    assert requests.put(f"{mixed}/tensorboard/x", data=b"x", auth=ALICE, timeout=30).ok
    assert bobs_run not in queued()
