"""The trainer's settings: secret files first, then the environment, then defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import psycopg2

SECRETS_DIR = Path(os.environ.get("MLSTACK_TRAINER_SECRETS_DIR", "/var/lib/mlstack/trainer-secrets"))


def secret(name: str) -> str:
    path = SECRETS_DIR / name
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        raise SystemExit(f"error: {path} is missing: the init-secrets service writes it "
                         "(see docker compose logs init-secrets)")


@dataclass(frozen=True)
class TrainerSettings:
    mlflow_uri: str
    db_host: str
    db_port: int
    tb_root: Path
    logs_dir: Path
    public_url: str
    lease_s: int
    image: str

    @classmethod
    def from_env(cls) -> TrainerSettings:
        hosts = os.environ.get("MLSTACK_HOSTNAMES", "localhost").replace(",", " ").split()
        port = os.environ.get("MLSTACK_HTTPS_PORT", "443")
        return cls(
            mlflow_uri=os.environ.get("MLSTACK_MLFLOW_URL", "http://mlflow:5000"),
            db_host=os.environ.get("POSTGRES_HOST", "postgres"),
            db_port=int(os.environ.get("POSTGRES_PORT", "5432")),
            tb_root=Path(os.environ.get("MLSTACK_TB_ROOT", "/var/lib/mlstack/tb-logs")),
            logs_dir=Path(os.environ.get("MLSTACK_JOB_LOGS", "/var/lib/mlstack/job-logs")),
            public_url=f"https://{hosts[0]}" + ("" if port == "443" else f":{port}"),
            lease_s=int(os.environ.get("TRAINER_LEASE_SECONDS", "60")),
            image=os.environ.get("MLSTACK_TRAINER_IMAGE", "mlstack/trainer"),
        )

    def connect(self):
        return psycopg2.connect(host=self.db_host, port=self.db_port, dbname="trainer",
                                user="trainer", password=secret("trainer_db_password"),
                                connect_timeout=10)

    def use_service_account(self) -> None:
        """MLflow client settings for the worker and the jobs it starts."""
        os.environ["MLFLOW_TRACKING_URI"] = self.mlflow_uri
        os.environ["MLFLOW_TRACKING_USERNAME"] = "mlstack-trainer"
        os.environ["MLFLOW_TRACKING_PASSWORD"] = secret("trainer_mlflow_password")
