"""The database locked or down under a real worker: a clear failure, a retry later, no lost update."""

import time
import uuid
from datetime import date, datetime, timedelta
from datetime import time as day_time

import peewee
import pytest
from faultkit import write_lock
from rq.job import JobStatus

from helpers import wait_until
from models import AccessRecord, DailyStatistics
from rqjobs import clock, queues, settings
from rqjobs import warehouse as warehouses

pytestmark = pytest.mark.slow

BUSY_TIMEOUT = 5  # SQLite's busy_timeout (rqjobs.database.SQLITE_PRAGMAS), in seconds


def attempt_failed(log: str, job, error: str) -> bool:
    """Tell whether the worker's log shows the job's attempt failing with `error`, then its retry scheduled.

    rq keeps no result for an attempt that is retried: the worker's log is where its error is.
    """
    attempt = log.partition(f'job {job.id}: exception raised while executing')[2]
    return error in attempt and f'Job {job.id}: scheduled for retry at' in attempt and '2 remaining' in attempt


def waits_to_retry(redis_conn, job) -> bool:
    """Tell whether a failed job is scheduled for its retry (rq sets the status a moment before it saves the job)."""
    return job.id in queues.get_queue(job.origin, redis_conn).scheduled_job_registry.get_job_ids()


def yesterday() -> date:
    return clock.utcnow().date() - timedelta(days=1)


@pytest.mark.db
def test_a_locked_database_fails_the_job_which_is_retried_without_losing_the_update(redis_conn, database, processes):
    if not isinstance(database, peewee.SqliteDatabase):
        pytest.skip('holds a SQLite write lock')
    day = yesterday()
    for i in range(4):
        AccessRecord.create(
            event_id=f'visit-{i}',
            resource_type='Page',
            resource_id='/about',
            ip_address=f'10.0.0.{i}',
            access_time=datetime.combine(day, day_time(12)),
        )
    job = queues.enqueue('generate_statistics', [day.isoformat()], connection=redis_conn)
    with write_lock(database, DailyStatistics._meta.table_name):
        began = time.monotonic()
        worker = processes.worker('statistics', name='worker')
        wait_until(
            lambda: waits_to_retry(redis_conn, job),
            30,
            'the job failed and waits to retry',
            details=processes.logs_text,
        )
        assert time.monotonic() - began >= BUSY_TIMEOUT
    job.refresh()
    assert job.get_status() == JobStatus.SCHEDULED and job.retries_left == 2
    assert attempt_failed(processes.log(worker), job, 'peewee.OperationalError: database is locked')
    assert DailyStatistics.select().count() == 0

    # What the retry interval does, without the wait: the worker's scheduler moves the due retry onto the queue.
    redis_conn.zadd(queues.get_queue('statistics', redis_conn).scheduled_job_registry.key, {job.id: time.time()})
    wait_until(
        lambda: job.get_status(refresh=True) == JobStatus.FINISHED, 30, 'the retry ran', details=processes.logs_text
    )
    row = DailyStatistics.get(DailyStatistics.date == day)
    assert (row.page_views, row.unique_visitors) == (4, 4)


def test_a_database_that_is_down_fails_jobs_clearly_and_they_are_retried(redis_conn, env, processes):
    env.setenv('DATABASE_URL', 'postgresql://postgres@127.0.0.1:1/test')
    settings.reset()
    daily = queues.enqueue('generate_statistics', [yesterday().isoformat()], connection=redis_conn)
    warehouse_id = str(uuid.uuid4())
    process = queues.enqueue(
        'process_warehouse',
        [warehouse_id],
        job_id=warehouses.process_job_id(warehouse_id),
        on_failure='rqjobs.warehouse.warehouse_job_failed',
        connection=redis_conn,
    )
    worker = processes.worker('statistics', 'warehouse', name='worker')
    for job in (daily, process):
        wait_until(
            lambda job=job: waits_to_retry(redis_conn, job),
            30,
            f'{job.func_name} failed and waits to retry',
            details=processes.logs_text,
        )
        job.refresh()
        assert job.get_status() == JobStatus.SCHEDULED and job.retries_left == 2
        assert attempt_failed(
            processes.log(worker),
            job,
            'DatabaseUnavailable: Cannot reach the database at '
            'postgresql://postgres@127.0.0.1:1/test: connection to server at "127.0.0.1", port 1 '
            'failed: Connection refused',
        )
