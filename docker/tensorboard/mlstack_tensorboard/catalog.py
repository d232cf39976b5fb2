"""Which experiments and runs are active, read from MLflow's PostgreSQL database.

The router asks the database, not MLflow's API, because it has no credentials to call the
API with (and must not have any). Its role may read just four columns:
runs(run_uuid, experiment_id, lifecycle_stage) and experiments(experiment_id, lifecycle_stage);
so the queries name exactly those (`SELECT *` would be refused).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import psycopg2

log = logging.getLogger(__name__)


class CatalogUnavailable(Exception):
    """The database cannot be asked right now (restarting, unreachable); try again later."""


@dataclass(frozen=True)
class Lookup:
    missing: tuple[int, ...]  # selected ids that do not exist or are not active
    runs: dict[int, frozenset[str]]  # active experiment id -> its active run ids


class Catalog:
    """One connection, opened on first use and dropped after any failure.

    A database restart breaks the connection; dropping it on the first failed query and
    connecting again on the next request is all the recovery needed. Calls are blocking
    (psycopg2), so the app runs them in a worker thread; the lock keeps them one at a time.
    """

    def __init__(self, connect: Callable[[], object]):
        self._connect = connect
        self._conn = None
        self._lock = threading.Lock()

    def lookup(self, ids: Iterable[int] | None) -> Lookup:
        """Active runs of the given experiments (None: of every active experiment)."""
        with self._lock:
            try:
                if self._conn is None:
                    self._conn = self._connect()
                    self._conn.autocommit = True
                return self._query(self._conn, None if ids is None else sorted(set(ids)))
            except psycopg2.Error as exc:
                log.warning("MLflow database query failed, reconnecting on the next request: %s",
                            str(exc).strip())
                self.close_locked()
                raise CatalogUnavailable(str(exc).strip()) from exc

    @staticmethod
    def _query(conn, ids: list[int] | None) -> Lookup:
        with conn.cursor() as cur:
            if ids is None:
                cur.execute("SELECT experiment_id FROM experiments WHERE lifecycle_stage = 'active'")
                active = sorted(row[0] for row in cur.fetchall())
                missing: tuple[int, ...] = ()
            else:
                cur.execute("SELECT experiment_id FROM experiments "
                            "WHERE lifecycle_stage = 'active' AND experiment_id = ANY(%s)", (ids,))
                active = sorted(row[0] for row in cur.fetchall())
                missing = tuple(i for i in ids if i not in set(active))
            runs: dict[int, set[str]] = {i: set() for i in active}
            if active:
                cur.execute("SELECT experiment_id, run_uuid FROM runs "
                            "WHERE lifecycle_stage = 'active' AND experiment_id = ANY(%s)", (active,))
                for experiment_id, run_uuid in cur.fetchall():
                    runs[experiment_id].add(run_uuid)
        return Lookup(missing, {i: frozenset(r) for i, r in runs.items()})

    def close(self) -> None:
        with self._lock:
            self.close_locked()

    def close_locked(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg2.Error:
                pass
            self._conn = None


def connector(host: str, port: int, dbname: str, user: str, password_file) -> Callable[[], object]:
    """Connects with the password read at each connect, so a rotated secret is picked up."""
    def connect():
        try:
            password = password_file.read_text().strip()
        except OSError as exc:
            # Reported like a database failure: 503 now, try again on the next request.
            raise psycopg2.OperationalError(f"cannot read the password file {password_file}: {exc}")
        return psycopg2.connect(host=host, port=port, dbname=dbname, user=user, password=password,
                                connect_timeout=5, application_name="mlstack-tensorboard")
    return connect
