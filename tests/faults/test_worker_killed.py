"""A worker SIGKILLed mid-job (a clone, an access-log drain, the daily statistics): nothing lost, duplicated or stuck.

Every worker here is a real `jobs worker` process in its own session. Killing its process group kills the worker and
its scheduler; its work horse sits in a group of its own and must die with it (the kernel's parent-death signal),
and so must the git processes the horse started, in their own sessions.
"""

import os
import subprocess
from datetime import datetime, time, timedelta
from time import sleep

import peewee
import pytest
from faultkit import (
    Processes,
    assert_all_dead,
    assert_no_git,
    big_repository,
    git_processes,
    tree,
    write_lock,
)
from rq.job import JobStatus, Retry

from helpers import wait_until
from models import AccessRecord, DailyStatistics, Document, User, Warehouse, WarehouseStatus
from rqjobs import access_log, clock, queues, settings, statistics
from rqjobs import warehouse as warehouses
from rqjobs.access_log import BUFFER_KEY, DEAD_KEY, LOCK_KEY, PROCESSING_KEY
from rqjobs.contrib import access_log as producer
from rqjobs.repository import history, storage

pytestmark = [pytest.mark.slow, pytest.mark.db]

# Abandoned-job recovery: 25 s without a heartbeat, then the next maintenance (every 30 s) of any worker, then the
# retry; a clone of the big repository takes a few seconds more.
RECOVERY = 120


@pytest.fixture(scope='session')
def big_repo(tmp_path_factory):
    """A local repository of 32 MB of random data, so that cloning it takes a couple of seconds."""
    return big_repository(tmp_path_factory)


def submit(redis_conn, address: str, retry: Retry | None, branch: str | None = None) -> str:
    """Submit a warehouse and queue its processing job with `retry` (the default's 60 s between tries only waits)."""
    row = warehouses.submit_warehouse(address, branch, connection=redis_conn)
    job_id = warehouses.process_job_id(row.id)
    for queue in queues.all_queues(redis_conn):
        queue.remove(job_id)
    redis_conn.delete(queues.JsonJob.key_for(job_id))
    queues.enqueue(
        'process_warehouse',
        [row.id],
        job_id=job_id,
        retry=retry,
        connection=redis_conn,
        on_failure='rqjobs.warehouse.warehouse_job_failed',
    )
    return row.id


def status_of(warehouse_id: str) -> str:
    return Warehouse.get_by_id(warehouse_id).status


def head(repo) -> str:
    return subprocess.run(
        ['git', '-C', str(repo), 'rev-parse', 'HEAD'], capture_output=True, text=True, check=True
    ).stdout.strip()


def kill_mid_clone(processes: Processes, redis_conn, warehouse_id: str, big_repo, name: str) -> None:
    """Start a worker, SIGKILL its process group once git clones, and check that no process of it survives."""
    dest = storage.clone_path(warehouse_id)
    worker = processes.worker('warehouse', name=name)
    clones = wait_until(lambda: git_processes(dest), 60, 'a git clone started', details=processes.logs_text)
    members = processes.kill_group(worker) + clones
    assert worker.wait(timeout=10) == -9
    # The work horse (a process group of its own) and git (a session of its own) die with the worker.
    assert_all_dead(members)
    assert_no_git(dest, big_repo)
    # The clone was being written beside its place, so no half clone stands where a whole one is expected.
    assert not dest.exists()
    assert status_of(warehouse_id) == WarehouseStatus.PROCESSING
    job = queues.JsonJob.fetch(warehouses.process_job_id(warehouse_id), connection=redis_conn)
    assert job.get_status() == JobStatus.STARTED


def test_workers_killed_mid_clone_leave_nothing_running_and_no_warehouse_stuck(
    redis_conn, database, local, big_repo, processes
):
    # Two at once, to wait for the recovery only once: one job with retries left, one on its last try.
    retried = submit(redis_conn, str(big_repo), Retry(max=3))  # at once: 60 s between tries would only wait
    last = submit(redis_conn, str(big_repo), None, branch='copy')
    kill_mid_clone(processes, redis_conn, retried, big_repo, 'killed-first')
    kill_mid_clone(processes, redis_conn, last, big_repo, 'killed-second')

    # A process manager starts a worker again; its maintenance finds both jobs abandoned (no heartbeat for 25 s).
    processes.worker('warehouse', name='restarted')
    wait_until(
        lambda: WarehouseStatus.PROCESSING not in (status_of(retried), status_of(last)),
        RECOVERY,
        'the warehouses left Processing',
        interval=0.5,
        details=processes.logs_text,
    )

    row = Warehouse.get_by_id(retried)
    assert row.status == WarehouseStatus.COMPLETED, row.error
    assert row.version == head(big_repo) == history.head_commit(storage.clone_path(retried))
    assert Document.select().where(Document.warehouse == retried).count() == 1
    assert not storage.partial_path(storage.clone_path(retried)).exists()  # the retry cleared the leftover
    job = queues.JsonJob.fetch(warehouses.process_job_id(retried), connection=redis_conn)
    wait_until(lambda: job.get_status(refresh=True) == JobStatus.FINISHED, 10, 'the retried job finished')
    job.refresh()
    assert job.retries_left == 2  # one retry, for the abandoned run

    row = Warehouse.get_by_id(last)
    assert row.status == WarehouseStatus.FAILED
    assert row.error == 'AbandonedJobError: the worker running the job stopped before it ended'
    job = queues.JsonJob.fetch(warehouses.process_job_id(last), connection=redis_conn)
    wait_until(lambda: job.get_status(refresh=True) == JobStatus.FAILED, 10, 'the abandoned job failed')
    assert 'AbandonedJobError' in job.latest_result().exc_string
    assert not storage.clone_path(last).exists()
    assert not storage.partial_path(storage.clone_path(last)).exists()  # removed when the warehouse failed


def test_a_work_horse_killed_mid_clone_on_the_last_try_fails_the_warehouse(
    redis_conn, database, local, big_repo, processes
):
    """The kernel's OOM killer takes the work horse only: the worker goes on, and must fail the warehouse itself."""
    warehouse_id = submit(redis_conn, str(big_repo), None)
    dest = storage.clone_path(warehouse_id)
    worker = processes.worker('warehouse', name='worker')
    clones = wait_until(lambda: git_processes(dest), 60, 'a git clone started', details=processes.logs_text)
    clone = next(process for process in clones if 'clone' in process.cmdline())
    horse = clone.parent()
    assert horse.pid != worker.pid and horse.ppid() == worker.pid
    horse.kill()

    wait_until(
        lambda: status_of(warehouse_id) != WarehouseStatus.PROCESSING,
        30,
        'the warehouse left Processing',
        details=processes.logs_text,
    )
    row = Warehouse.get_by_id(warehouse_id)
    assert row.status == WarehouseStatus.FAILED
    assert 'stopped before it ended' in row.error
    assert_all_dead([horse, *clones])
    assert_no_git(dest, big_repo)
    assert worker.poll() is None  # the worker goes on with the next job
    job = queues.JsonJob.fetch(warehouses.process_job_id(warehouse_id), connection=redis_conn)
    wait_until(lambda: job.get_status(refresh=True) == JobStatus.FAILED, 10, 'the job failed')  # not retried
    assert 'Work-horse terminated unexpectedly' in job.latest_result().exc_string


def access_entry(i: int) -> dict:
    return {
        'resource_type': 'Repository',
        'resource_id': f'owner/repo{i % 50}',
        'ip_address': '203.0.113.7',
        'path': f'/owner/repo{i % 50}/docs',
        'method': 'GET',
        'status_code': 200,
        'response_time': 12,
    }


def test_a_worker_killed_mid_drain_stores_every_entry_exactly_once(redis_conn, database, processes, env):
    env.setenv('ACCESS_LOG_BATCH_SIZE', '100')
    settings.reset()
    sent = 20_000
    assert producer.enqueue_access_logs([access_entry(i) for i in range(sent)], connection=redis_conn) == sent
    queues.enqueue('process_access_log', retry=None, connection=redis_conn)  # as the periodic plan enqueues it
    worker = processes.worker('access_log', name='killed')
    wait_until(
        lambda: AccessRecord.select().count() >= 100, 60, 'the drain committed a batch', details=processes.logs_text
    )

    # Stall the drain inside a batch (taken into the processing list, not committed) and kill it there. A batch seen
    # in the processing list may be one committed just before the lock, about to be acknowledged: the drain is held
    # once its processing list and buffer stand still, which they never do for long while it runs.
    def held_in_a_batch() -> bool:
        def state():
            with redis_conn.pipeline(transaction=True) as pipe:
                return tuple(pipe.llen(PROCESSING_KEY).lindex(PROCESSING_KEY, 0).llen(BUFFER_KEY).execute())

        before = state()
        sleep(1)
        return before[0] > 0 and state() == before

    with write_lock(database, AccessRecord._meta.table_name):
        wait_until(held_in_a_batch, 30, 'the drain was held inside its next batch')
        members = processes.kill_group(worker)
        assert worker.wait(timeout=10) == -9
    assert_all_dead(members)
    stored = AccessRecord.select().count()
    assert 0 < stored < sent and redis_conn.llen(PROCESSING_KEY) == 100

    # The killed run's lock holds until it expires (a minute); runs before that stand aside.
    assert 0 < redis_conn.pttl(LOCK_KEY) <= access_log.LOCK_MS
    assert access_log.process_access_log()['status'] == 'busy'
    redis_conn.delete(LOCK_KEY)  # what the expiry does, without the wait
    queues.enqueue('process_access_log', retry=None, connection=redis_conn)
    burst = processes.worker('access_log', '--burst', name='next')
    assert burst.wait(timeout=120) == 0, processes.log(burst)

    assert AccessRecord.select().count() == sent
    assert AccessRecord.select(peewee.fn.COUNT(AccessRecord.event_id.distinct())).scalar() == sent
    assert redis_conn.llen(BUFFER_KEY) == redis_conn.llen(PROCESSING_KEY) == redis_conn.llen(DEAD_KEY) == 0
    assert not redis_conn.exists(LOCK_KEY)


def visit(when: datetime, i: int) -> None:
    AccessRecord.create(
        event_id=f'visit-{i}',
        resource_type='Repository',
        resource_id='owner/repo',
        ip_address=f'10.0.0.{i}',
        user_id=f'user-{i % 3}',
        access_time=when,
        created_at=when,
    )


def test_a_worker_killed_mid_statistics_leaves_one_row_and_the_rerun_corrects_it(redis_conn, database, processes):
    day = clock.utcnow().date() - timedelta(days=1)
    noon = datetime.combine(day, time(12))
    for i in range(3):
        visit(noon, i)
    User.create(name='early', email='early@example.invalid', password='x', created_at=noon)
    before = statistics.generate_statistics(day.isoformat())  # the run of an earlier day's schedule
    for i in range(3, 10):
        visit(noon, i)

    job = queues.enqueue('generate_statistics', [day.isoformat()], connection=redis_conn)
    with write_lock(database, DailyStatistics._meta.table_name) as waits_for_lock:
        worker = processes.worker('statistics', name='killed')
        wait_until(
            lambda: job.get_status(refresh=True) == JobStatus.STARTED,
            30,
            'the job started',
            details=processes.logs_text,
        )
        horse = wait_until(lambda: [p for p in tree(worker.pid)[1:] if os.getpgid(p.pid) == p.pid], 10, 'a work horse')
        # Its reads take milliseconds; then its upsert waits for the lock, where it is killed.
        wait_until(lambda: waits_for_lock(horse[0]), 30, 'the upsert waits for the lock', details=processes.logs_text)
        members = processes.kill_group(worker)
        assert worker.wait(timeout=10) == -9
    assert_all_dead(members)
    rows = list(DailyStatistics.select())
    assert len(rows) == 1 and rows[0].page_views == before['page_views'] == 3  # the killed upsert left nothing

    again = queues.enqueue('generate_statistics', [day.isoformat()], connection=redis_conn)
    burst = processes.worker('statistics', '--burst', name='next')
    assert burst.wait(timeout=60) == 0, processes.log(burst)
    assert again.get_status(refresh=True) == JobStatus.FINISHED
    rows = list(DailyStatistics.select())
    assert len(rows) == 1
    assert (rows[0].page_views, rows[0].unique_visitors, rows[0].active_users, rows[0].new_users) == (10, 10, 3, 1)
    assert again.return_value()['created_at'] == before['created_at']
