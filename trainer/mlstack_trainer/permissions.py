"""MLflow permissions for what the trainer's service account creates on a user's behalf.

Jobs run as the service account (an MLflow admin), so whatever they create (an experiment, a
registered model) would otherwise be invisible to the user who submitted the job. The worker
grants the submitter MANAGE on what it created for them, and refuses to run a job in an
existing experiment the submitter may not edit: submitting a job must never be a way into
someone else's experiment. Uses MLflow's own /api/3.0/mlflow/users/permissions endpoints.
"""

from __future__ import annotations

import os

import requests

CAN_EDIT = ("EDIT", "MANAGE")


def _call(method: str, path: str, **kwargs) -> requests.Response:
    uri = os.environ["MLFLOW_TRACKING_URI"].rstrip("/")
    auth = (os.environ.get("MLFLOW_TRACKING_USERNAME", ""),
            os.environ.get("MLFLOW_TRACKING_PASSWORD", ""))
    return requests.request(method, f"{uri}/api/3.0/mlflow/users/permissions/{path}",
                            auth=auth, timeout=30, **kwargs)


def permission(username: str, resource_type: str, resource_id: str) -> str | None:
    """The user's permission name, or None where the server has no auth (plain MLflow)."""
    r = _call("GET", "get", params={"username": username, "resource_type": resource_type,
                                    "resource_id": resource_id})
    if r.status_code == 404:
        return None
    r.raise_for_status()
    return r.json().get("permission")


def grant(username: str, resource_type: str, resource_id: str, level: str = "MANAGE") -> None:
    r = _call("POST", "grant", json={"username": username, "resource_type": resource_type,
                                     "resource_id": resource_id, "permission": level})
    if r.status_code == 404:  # no auth on this server: nothing to grant
        return
    if r.status_code == 400 and "RESOURCE_ALREADY_EXISTS" in r.text:
        return
    r.raise_for_status()
