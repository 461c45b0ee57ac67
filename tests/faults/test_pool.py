"""`jobs worker --processes N`: N project workers under one pool process, which stop with it however it ends."""

import os
import signal
import time

import pytest
from faultkit import FAULT_QUEUE, alive, assert_all_dead, tree
from rq.job import JobStatus

from helpers import wait_until
from rqjobs import monitor, queues
from rqjobs.settings import get_settings
from rqjobs.worker import WORKER_TTL, JobsWorker, local_path_acceptance

pytestmark = pytest.mark.slow


def start_pool(redis_conn, processes, count: int, *args: str):
    """Start `jobs worker --processes COUNT` on the fault queue; return it once its workers have registered."""
    pool = processes.jobs('worker', FAULT_QUEUE, '--processes', str(count), *args, name='pool')
    wait_until(
        lambda: len(local_path_acceptance(redis_conn, FAULT_QUEUE)) == count,
        30,
        f'{count} workers registered',
        details=processes.logs_text,
    )
    # A worker registers itself before rq installs its signal handlers: a signal in between ends it on the spot,
    # with no time to leave the registry. Idle, a worker waits on its queues with its handlers in place.
    wait_until(
        lambda: [state['state'] for state in monitor.worker_states(redis_conn)].count('idle') >= count,
        30,
        f'{count} workers idle',
        details=processes.logs_text,
    )
    return pool


def test_three_workers_run_three_jobs_at_once_with_the_projects_settings(env, redis_conn, faults, processes):
    env.setenv('ALLOW_LOCAL_REPOSITORIES', '1')
    start_pool(redis_conn, processes, 3, '--name', 'host')
    jobs = [queues.enqueue('nap', [2], connection=redis_conn) for _ in range(3)]
    wait_until(
        lambda: all(job.get_status(refresh=True) == JobStatus.FINISHED for job in jobs),
        30,
        'the naps finished',
        details=processes.logs_text,
    )
    for job in jobs:
        job.refresh()
    starts = [job.started_at.timestamp() for job in jobs]
    ends = [job.ended_at.timestamp() for job in jobs]
    # One after another they would take 6 s.
    assert max(ends) - min(starts) < 3.5, (starts, ends)
    workers = JobsWorker.all(connection=redis_conn)
    assert len({worker.name for worker in workers}) == 3
    assert all(worker.name.startswith('host-') for worker in workers)
    # Each is the project's worker, as `jobs worker` builds it: its settings recorded, its short TTL (rq's: 420 s),
    # and the queue's time limit.
    assert set(local_path_acceptance(redis_conn, FAULT_QUEUE).values()) == {True}
    assert all(0 < redis_conn.ttl(worker.key) <= WORKER_TTL + 60 for worker in workers)
    assert {job.timeout for job in jobs} == {get_settings().job_timeout}


def test_a_pool_worker_refuses_a_forged_job(redis_conn, faults, processes, tmp_path):
    start_pool(redis_conn, processes, 2)
    marker = tmp_path / 'forged.txt'
    forged = queues.JsonJob.create('os.system', args=[f'touch {marker}'], connection=redis_conn, origin=FAULT_QUEUE)
    queues.get_queue(FAULT_QUEUE, redis_conn).enqueue_job(forged)
    wait_until(
        lambda: forged.get_status(refresh=True) == JobStatus.FAILED,
        30,
        'the forged job failed',
        details=processes.logs_text,
    )
    assert "refused to run 'os.system'" in forged.latest_result().exc_string
    assert not marker.exists()


def test_sigterm_stops_every_worker_and_the_pool_exits_0(redis_conn, faults, processes):
    pool = start_pool(redis_conn, processes, 3)
    members = processes.remember(pool)
    assert len([member for member in members if alive(member)]) >= 4  # the pool, its workers and a scheduler
    began = time.monotonic()
    os.kill(pool.pid, signal.SIGTERM)
    assert pool.wait(timeout=30) == 0, processes.log(pool)
    assert time.monotonic() - began < 5, processes.log(pool)
    assert_all_dead(members)
    wait_until(lambda: not local_path_acceptance(redis_conn, FAULT_QUEUE), 5, 'the workers left the registry')


def test_a_sigkilled_pool_leaves_no_worker_behind(redis_conn, faults, processes):
    pool = start_pool(redis_conn, processes, 2)
    running = queues.enqueue('nap', [30], connection=redis_conn)
    wait_until(lambda: running.get_status(refresh=True) == JobStatus.STARTED, 30, 'the nap started')
    members = wait_until(lambda: len(tree(pool.pid)) >= 5 and tree(pool.pid), 10, 'a work horse')
    processes.remember(pool)
    os.kill(pool.pid, signal.SIGKILL)  # the pool alone: its workers, their horse and scheduler are in its session
    assert pool.wait(timeout=10) == -signal.SIGKILL
    assert_all_dead(members)
