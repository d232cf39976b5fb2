"""The janitor's stale-run rule against a real PostgreSQL holding MLflow's real schema."""

from __future__ import annotations

import time

import pytest
from mlflow.entities import Metric, RunStatus, RunTag
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

from mlstack_platform import databases, janitor
from mlstack_platform.databases import sqlalchemy_uri

HOUR_MS = 3600 * 1000


@pytest.fixture(scope="module")
def store(postgres):
    databases.ensure_database(postgres, "janitor_unit", "postgres")
    uri = sqlalchemy_uri(postgres.host, postgres.port, "postgres", postgres.superuser_password,
                         "janitor_unit")
    return SqlAlchemyStore(uri, "mlflow-artifacts:/")  # creates MLflow's tables


def new_run(store, started_ms: int, tags=()):
    exp = store.get_experiment_by_name("Default").experiment_id
    return store.create_run(exp, "someone", started_ms, list(tags), "r").info.run_id


def test_only_runs_idle_past_the_limit_and_not_the_trainers_are_failed(store, postgres):
    now = int(time.time() * 1000)
    idle = new_run(store, now - 3 * HOUR_MS)
    chatty = new_run(store, now - 3 * HOUR_MS)  # old, but logged a minute ago
    store.log_metric(chatty, Metric("loss", 0.1, now - 60_000, 7))
    fresh = new_run(store, now - 60_000)
    trainer_job = new_run(store, now - 3 * HOUR_MS, [RunTag(janitor.TRAINER_TAG, "12")])
    finished = new_run(store, now - 3 * HOUR_MS)
    store.update_run_info(finished, RunStatus.FINISHED, now - 2 * HOUR_MS, "r")

    with postgres.connect("janitor_unit") as conn:
        assert janitor.find_stale_runs(conn, 3600) == [idle]
        assert janitor.fail_stale_runs(store, conn, 3600) == [idle]
        assert janitor.find_stale_runs(conn, 3600) == []  # a second pass changes nothing

    failed = store.get_run(idle)
    assert failed.info.status == "FAILED" and failed.info.end_time >= now
    assert "nothing logged for more than 60 minutes" in failed.data.tags[janitor.STALE_TAG]
    for run_id in (chatty, fresh, trainer_job):
        assert store.get_run(run_id).info.status == "RUNNING"
    assert store.get_run(finished).info.status == "FINISHED"
