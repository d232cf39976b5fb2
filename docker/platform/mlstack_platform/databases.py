"""PostgreSQL: the databases and roles the platform needs, created idempotently by init."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

import psycopg2
from psycopg2 import sql

from .waiting import wait_for


@dataclass(frozen=True)
class Server:
    host: str
    port: int
    superuser: str
    superuser_password: str

    def connect(self, dbname: str = "postgres"):
        return psycopg2.connect(
            host=self.host, port=self.port, user=self.superuser,
            password=self.superuser_password, dbname=dbname, connect_timeout=5,
        )


def sqlalchemy_uri(host: str, port: int, user: str, password: str, dbname: str) -> str:
    # SQLAlchemy 2.1 maps plain postgresql:// to psycopg 3; the image ships psycopg2.
    return (f"postgresql+psycopg2://{quote(user, safe='')}:{quote(password, safe='')}"
            f"@{host}:{port}/{quote(dbname, safe='')}")


def wait_until_ready(server: Server, timeout_s: float) -> None:
    def attempt() -> None:
        server.connect().close()

    wait_for(
        f"PostgreSQL at {server.host}:{server.port}", attempt, timeout_s,
        "Check `docker compose logs postgres`.",
        # A wrong password will not fix itself by waiting: say so at once.
        fatal=lambda exc: "password authentication failed" in str(exc),
    )


def ensure_role(server: Server, role: str, password: str) -> str:
    """Create a login role, or set its password to the current secret. Returns what happened."""
    conn = server.connect()
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
            verb = "ALTER" if cur.fetchone() else "CREATE"
            cur.execute(
                sql.SQL(verb + " ROLE {} WITH LOGIN PASSWORD %s").format(sql.Identifier(role)),
                (password,),
            )
        return "created" if verb == "CREATE" else "kept"
    finally:
        conn.close()


def ensure_database(server: Server, name: str, owner: str) -> str:
    conn = server.connect()
    try:
        conn.autocommit = True  # CREATE DATABASE cannot run inside a transaction
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cur.fetchone():
                return "kept"
            cur.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(name), sql.Identifier(owner)))
            # Only its owner (and the superuser) may connect.
            cur.execute(sql.SQL("REVOKE CONNECT ON DATABASE {} FROM PUBLIC").format(
                sql.Identifier(name)))
            return "created"
    finally:
        conn.close()


TENSORBOARD_ROLE = "mlstack_tensorboard"
# The columns TensorBoard's router reads: which runs of an experiment are active. Column grants,
# so names, parameters, tags and artifact locations stay out of its reach.
_TENSORBOARD_COLUMNS = {"runs": ("run_uuid", "experiment_id", "lifecycle_stage"),
                        "experiments": ("experiment_id", "lifecycle_stage")}


def grant_tensorboard_reads(server: Server, dbname: str) -> None:
    """After `mlflow db upgrade` (the tables must exist). Idempotent."""
    conn = server.connect(dbname)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
                sql.Identifier(dbname), sql.Identifier(TENSORBOARD_ROLE)))
            for table, columns in _TENSORBOARD_COLUMNS.items():
                cur.execute(sql.SQL("GRANT SELECT ({}) ON {} TO {}").format(
                    sql.SQL(", ").join(map(sql.Identifier, columns)), sql.Identifier(table),
                    sql.Identifier(TENSORBOARD_ROLE)))
    finally:
        conn.close()


def run_as(server: Server, dbname: str, role: str, statement: str) -> None:
    """One idempotent statement in a database, as the role that is to own what it creates."""
    conn = server.connect(dbname)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
            cur.execute(statement)
    finally:
        conn.close()
