"""What the jobs API does in MLflow with its admin service account, and nothing else does.

MLflow's permissions are the one source of truth: a job may write where its submitter may, and
no further. For each attempt of a job the API mints a job identity, an ordinary MLflow user with
EDIT on the job's experiment (and on the model it registers, if any) and no other grant, hands
its credentials to the worker in the claim answer, and deletes it when the attempt ends. MLflow's
permission model cannot scope writes to one run: EDIT on the experiment is the honest floor, and
the submitter holds it already.

Uses MLflow's own clients (MlflowClient, AuthServiceClient), which read the service account's
credentials from the environment (ApiSettings.use_service_account).
"""

from __future__ import annotations

import os
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException
from mlflow.server.auth.client import AuthServiceClient

from .settings import JOB_IDENTITY_PREFIX, LOCAL_WORKER_ACCOUNT

CAN_WRITE = ("EDIT", "MANAGE")


class NotAllowed(PermissionError):
    """The submitter lacks a right the job needs; the message names it."""


@dataclass(frozen=True)
class Started:
    experiment_id: str
    run_id: str
    identity: str
    password: str


def _exists_error(exc: MlflowException) -> bool:
    return exc.error_code == "RESOURCE_ALREADY_EXISTS"


def _missing_error(exc: MlflowException) -> bool:
    return exc.error_code == "RESOURCE_DOES_NOT_EXIST"


class MlflowAdmin:
    def __init__(self, tracking_uri: str):
        self.client = MlflowClient(tracking_uri)
        self.auth = AuthServiceClient(tracking_uri)

    # --- questions -------------------------------------------------------------------------

    def _may_write(self, username: str, resource_type: str, resource_id: str) -> bool:
        result = self.auth.get_user_permission(username, resource_type, resource_id)
        return result.permission in CAN_WRITE

    def check_submit(self, username: str, is_admin: bool, experiment: str,
                     model: str | None) -> None:
        """Raise NotAllowed unless the submitter may write to the job's experiment and the
        model it registers; ones that do not exist yet will be created for them."""
        if is_admin:
            return
        found = self.client.get_experiment_by_name(experiment)
        if found is not None and found.lifecycle_stage == "deleted":
            raise NotAllowed(f"experiment {experiment!r} is deleted: restore it in MLflow, or "
                             "choose another name")
        if found is not None and not self._may_write(username, "experiment", found.experiment_id):
            raise NotAllowed(f"{username} may not write to experiment {experiment!r} (EDIT is "
                             "needed): ask its owner to grant it, or choose another experiment")
        if model and self._model_exists(model) and not self._may_write(
                username, "registered_model", model):
            raise NotAllowed(f"{username} may not add versions to the registered model {model!r} "
                             "(EDIT is needed): ask its owner to grant it, or choose another name")

    def _model_exists(self, name: str) -> bool:
        try:
            self.client.get_registered_model(name)
            return True
        except MlflowException as exc:
            if _missing_error(exc):
                return False
            raise

    # --- a job attempt's life ----------------------------------------------------------------

    def _experiment_for(self, submitter: str, name: str) -> str:
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        try:
            experiment_id = self.client.create_experiment(name, tags={
                "mlstack.created_for": submitter,
                # The MLflow UI opens an experiment of this kind in its model-training view,
                # not the GenAI one (with an assistant that needs an outside LLM).
                "mlflow.experimentKind": "custom_model_development"})
        except MlflowException as exc:
            if not _exists_error(exc):  # another claim created it a moment ago
                raise
            return self.client.get_experiment_by_name(name).experiment_id
        self.grant(submitter, "experiment", experiment_id, "MANAGE")
        return experiment_id

    def _model_for(self, submitter: str, name: str) -> None:
        try:
            self.client.create_registered_model(name, tags={"mlstack.created_for": submitter})
        except MlflowException as exc:
            if not _exists_error(exc):
                raise
            return
        self.grant(submitter, "registered_model", name, "MANAGE")

    def start(self, identity: str, submitter: str, submitter_is_admin: bool, experiment: str,
              model: str | None, run_name: str, tags: dict[str, str]) -> Started:
        """Check the submitter's rights again (they may have changed since submit), create
        what the job writes to, mint its identity and create its run."""
        self.check_submit(submitter, submitter_is_admin, experiment, model)
        experiment_id = self._experiment_for(submitter, experiment)
        if model:
            self._model_for(submitter, model)
        password = secrets.token_urlsafe(32)
        self.auth.create_user(identity, password)
        self.grant(identity, "experiment", experiment_id, "EDIT")
        if model:
            self.grant(identity, "registered_model", model, "EDIT")
        run = self.client.create_run(experiment_id, run_name=run_name, tags=tags)
        return Started(experiment_id, run.info.run_id, identity, password)

    def grant(self, username: str, resource_type: str, resource_id: str, level: str) -> None:
        self.auth.grant_user_permission(username, resource_type, resource_id, level)

    def delete_identity(self, identity: str) -> None:
        if not identity.startswith(JOB_IDENTITY_PREFIX):  # never a person's account
            raise ValueError(f"{identity!r} is not a job identity")
        self._delete_user(identity)

    def delete_worker_account(self, account: str) -> None:
        if not account.startswith(f"{LOCAL_WORKER_ACCOUNT}-"):  # never a person's account
            raise ValueError(f"{account!r} is not a remote worker's account")
        self._delete_user(account)

    def _delete_user(self, username: str) -> None:
        """Gone, whether it was there or not."""
        try:
            self.auth.delete_user(username)
        except MlflowException as exc:
            if not _missing_error(exc):
                raise

    def user_exists(self, username: str) -> bool:
        try:
            self.auth.get_user(username)
        except MlflowException as exc:
            if _missing_error(exc):
                return False
            raise
        return True

    def is_admin(self, username: str) -> bool:
        """False for a user who is not an admin or no longer exists (no rights at all)."""
        try:
            return bool(self.auth.get_user(username).is_admin)
        except MlflowException as exc:
            if _missing_error(exc):
                return False
            raise

    def set_tag(self, run_id: str, key: str, value: str) -> None:
        self.client.set_tag(run_id, key, value)

    def end_run(self, run_id: str, status: str, reason: str | None) -> None:
        """Mark a run ended unless its job already did (a killed job could not)."""
        run = self.client.get_run(run_id)
        if RunStatus.is_terminated(RunStatus.from_string(run.info.status)):
            return
        if reason:
            self.client.set_tag(run_id, "mlstack.failure", reason[:5000])
        self.client.set_terminated(run_id, status)

    def upload_log(self, run_id: str, path: Path, max_bytes: int = 50 << 20) -> None:
        """The job's output into its run: whole, or its last `max_bytes` (a job printing
        gigabytes must not fill the artifact store; the whole log stays in the jobs API)."""
        if not path.exists():
            return
        if path.stat().st_size <= max_bytes:
            self.client.log_artifact(run_id, str(path), artifact_path="logs")
            return
        with tempfile.TemporaryDirectory() as tmp, open(path, "rb") as log:
            log.seek(-max_bytes, os.SEEK_END)
            tail = Path(tmp, path.name)
            tail.write_bytes(f"[mlstack] the first {path.stat().st_size - max_bytes} bytes of "
                             "this log are left out; the whole log: mlstack logs\n".encode()
                             + log.read())
            self.client.log_artifact(run_id, str(tail), artifact_path="logs")
