"""Everything the platform's roles need to know, gathered and validated in one go."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from . import settings
from .databases import Server, sqlalchemy_uri

PERMISSIONS = ("READ", "EDIT", "MANAGE", "NO_PERMISSIONS")


def default_workers() -> int:
    """gunicorn workers when MLFLOW_WORKERS is unset: two per CPU this container may use (a
    worker waits on PostgreSQL about half the time), at least 2 and at most 8 (each holds
    ~250 MB and two database pools: see POSTGRES_MAX_CONNECTIONS in .env.example)."""
    return min(8, max(2, 2 * len(os.sched_getaffinity(0))))


@dataclass(frozen=True)
class PlatformConfig:
    hostnames: list[str]
    https_port: int
    postgres_host: str
    postgres_port: int
    mlflow_db: str
    auth_db: str
    db_role: str
    trainer_db: str
    s3_endpoint: str
    bucket: str
    workers: int
    threads: int
    timeout_s: int
    db_pool_size: int
    db_max_overflow: int
    default_permission: str
    auth_cache_ttl_s: int
    wait_s: int
    user_tls_cert: Path
    user_tls_key: Path

    @classmethod
    def from_env(cls) -> PlatformConfig:
        return cls(
            hostnames=settings.hostnames("MLSTACK_HOSTNAMES", "localhost 127.0.0.1"),
            https_port=settings.integer("MLSTACK_HTTPS_PORT", 443, maximum=65535),
            postgres_host=settings.text("POSTGRES_HOST", "postgres"),
            postgres_port=settings.integer("POSTGRES_PORT", 5432, maximum=65535),
            mlflow_db="mlflow",
            auth_db="mlflow_auth",
            db_role="mlflow",
            trainer_db="trainer",
            s3_endpoint=settings.text("MLSTACK_S3_ENDPOINT", "http://minio:9000"),
            bucket=settings.bucket("MLSTACK_ARTIFACT_BUCKET", "mlflow-artifacts"),
            workers=settings.integer("MLFLOW_WORKERS", default_workers(), maximum=64),
            threads=settings.integer("MLFLOW_THREADS", 8, maximum=256),
            timeout_s=settings.integer("MLFLOW_TIMEOUT_SECONDS", 120, minimum=10, maximum=86400),
            db_pool_size=settings.integer("MLFLOW_DB_POOL_SIZE", 5, maximum=100),
            db_max_overflow=settings.integer("MLFLOW_DB_MAX_OVERFLOW", 5, minimum=0, maximum=100),
            default_permission=settings.choice(
                "MLFLOW_AUTH_DEFAULT_PERMISSION", "NO_PERMISSIONS", PERMISSIONS),
            # At most 10: with nginx's and the jobs API's own 4 s, a changed password or a
            # deleted user is refused everywhere within 15 s. (It applies while a worker cannot
            # hear of changes; one that can drops a password as it changes: auth_cache.py.)
            auth_cache_ttl_s=settings.integer(
                "MLFLOW_AUTH_CACHE_TTL_SECONDS", 10, minimum=0, maximum=10),
            wait_s=settings.integer("MLSTACK_INIT_WAIT_SECONDS", 120, maximum=3600),
            user_tls_cert=Path(settings.text("MLSTACK_USER_TLS_CERT", "/run/secrets/tls_cert")),
            user_tls_key=Path(settings.text("MLSTACK_USER_TLS_KEY", "/run/secrets/tls_key")),
        )

    # Values below come from the secrets volume, so they are read only when needed.

    def superuser(self) -> Server:
        return Server(self.postgres_host, self.postgres_port, "postgres",
                      settings.secret("postgres_password"))

    def mlflow_db_connection(self):
        """psycopg2 connection to the tracking database, as MLflow's own role."""
        return Server(self.postgres_host, self.postgres_port, self.db_role,
                      settings.secret("mlflow_db_password")).connect(self.mlflow_db)

    def s3_client(self):
        """With MLflow's own key: the artifact bucket's objects, nothing else (s3_user.py)."""
        from . import bucket  # boto3: only for the roles that talk to S3

        return bucket.client(self.s3_endpoint, settings.secret("s3_access_key"),
                             settings.secret("s3_secret_key"))

    def s3_root_client(self):
        """With MinIO's root keys, which the one-shots alone hold: init (the bucket, MLflow's S3
        user) and the operator's bucket commands (`ops`, run in a one-off init container), which
        also work on a store from before MLflow had a key of its own (a backup taken by
        scripts/upgrade before the new init-secrets ran)."""
        from . import bucket

        return bucket.client(self.s3_endpoint, settings.secret("minio_root_user"),
                             settings.secret("minio_root_password"))

    def db_uri(self, dbname: str) -> str:
        return sqlalchemy_uri(self.postgres_host, self.postgres_port, self.db_role,
                              settings.secret("mlflow_db_password"), dbname)

    def allowed_hosts(self) -> list[str]:
        # MLflow matches the Host header, port included, so each name is listed with and
        # without one. Listing them explicitly also drops MLflow 3.17's default patterns such
        # as `10.*`, which match names like `10.evil.example` (fixed only in 3.18).
        # "mlflow" is the service name the platform's own services use inside the network;
        # mlstack.internal is the front door's name on the jobs network (nginx passes it on).
        return [p for host in [*self.hostnames, "mlflow", "mlstack.internal"]
                for p in (host, f"{host}:*")]

    def origins(self) -> list[str]:
        port = "" if self.https_port == 443 else f":{self.https_port}"
        return [f"https://{host}{port}" for host in self.hostnames]
