"""The job queue against a real PostgreSQL."""

from __future__ import annotations

import threading
import time

import psycopg2
import pytest

from mlstack_platform import databases
from mlstack_trainer.queue import JobQueue
from mlstack_trainer.spec import parse


@pytest.fixture
def queue(postgres, request):
    db = f"trainer_{request.node.name.lower()[:40]}"
    databases.ensure_database(postgres, db, "postgres")
    q = JobQueue(lambda: postgres.connect(db))
    q.migrate()
    q.migrate()  # idempotent
    return q


def spec(retries: int = 0, name: str = "job"):
    return parse(f"name: {name}\nexperiment: e\nentrypoint: example:digits-cnn\n"
                 f"retries: {retries}")


def test_jobs_are_claimed_oldest_first_and_finished(queue):
    first, second = queue.submit(spec(name="a"), "alice"), queue.submit(spec(name="b"), "bob")
    assert first.state == "queued" and queue.depth() == 2
    claimed = queue.claim("worker-1", lease_s=60)
    assert claimed.id == first.id and claimed.state == "running" and claimed.attempts == 1
    queue.set_run_id(claimed.id, "worker-1", "run123")
    assert queue.finish(claimed.id, "worker-1", "succeeded")
    done = queue.get(first.id)
    assert done.state == "succeeded" and done.mlflow_run_id == "run123" and done.finished_at
    assert queue.claim("worker-1", 60).id == second.id
    assert queue.claim("worker-1", 60) is None


def test_many_workers_polling_at_once_run_each_job_exactly_once(queue):
    ids = {queue.submit(spec(), "alice").id for _ in range(30)}
    claimed: list[tuple[str, int]] = []
    lock = threading.Lock()

    def worker(name: str):
        while (job := queue.claim(name, 60)) is not None:
            with lock:
                claimed.append((name, job.id))
            queue.finish(job.id, name, "succeeded")

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(job_id for _, job_id in claimed) == sorted(ids)


def test_a_dead_workers_job_is_requeued_while_retries_last_then_failed(queue):
    job = queue.submit(spec(retries=1), "alice")
    queue.claim("doomed-1", lease_s=1)
    time.sleep(1.2)
    [reaped] = queue.reap_expired()
    assert reaped.state == "queued" and "doomed-1 stopped heartbeating" in reaped.error
    # The dead worker cannot finish or renew what is no longer its job.
    assert queue.heartbeat(job.id, "doomed-1", 60) is None
    assert not queue.finish(job.id, "doomed-1", "succeeded")
    again = queue.claim("doomed-2", lease_s=1)
    assert again.id == job.id and again.attempts == 2
    time.sleep(1.2)
    [reaped] = queue.reap_expired()
    assert reaped.state == "failed" and reaped.finished_at is not None


def test_heartbeats_keep_a_live_job(queue):
    job = queue.submit(spec(), "alice")
    queue.claim("w", lease_s=1)
    for _ in range(3):
        time.sleep(0.5)
        assert queue.heartbeat(job.id, "w", lease_s=1) is not None
    assert queue.reap_expired() == []
    assert queue.get(job.id).state == "running"


def test_cancel(queue):
    queued = queue.submit(spec(), "alice")
    running = queue.submit(spec(), "alice")
    assert queue.cancel(queued.id).state == "cancelled"
    assert queue.claim("w", 60).id == running.id  # the cancelled one is never claimed
    flagged = queue.cancel(running.id)
    assert flagged.state == "running" and flagged.cancel_requested
    assert queue.heartbeat(running.id, "w", 60).cancel_requested  # the worker learns of it
    assert queue.finish(running.id, "w", "cancelled")
    assert queue.cancel(running.id).state == "cancelled"  # final stays final
    assert queue.cancel(999_999) is None


def test_a_cancelled_running_job_is_not_requeued_when_its_worker_dies(queue):
    job = queue.submit(spec(retries=3), "alice")
    queue.claim("w", lease_s=1)
    queue.cancel(job.id)
    time.sleep(1.2)
    [reaped] = queue.reap_expired()
    assert reaped.state == "failed"


def test_only_final_states_finish_a_job(queue):
    job = queue.submit(spec(), "alice")
    queue.claim("w", 60)
    with pytest.raises(ValueError):
        queue.finish(job.id, "w", "queued")


def test_listing_by_submitter(queue):
    queue.submit(spec(), "alice")
    queue.submit(spec(), "bob")
    assert {j.submitter for j in queue.list("alice")} == {"alice"}
    assert len(queue.list()) == 2


def test_states_are_constrained_by_the_database(queue):
    job = queue.submit(spec(), "alice")
    with pytest.raises(psycopg2.errors.CheckViolation):
        queue._run("UPDATE jobs SET state = 'lost' WHERE id = %s", (job.id,))
