"""Jobs past their soft and hard time limits in a real worker: a clear failure, clean-up, no orphan, no retry."""

import time

import psutil
import pytest
from faultkit import (
    FAULT_QUEUE,
    assert_all_dead,
    assert_no_git,
    big_repository,
    git_processes,
)
from rq.job import JobStatus

from helpers import wait_until
from models import Warehouse, WarehouseStatus
from rqjobs import queues, settings
from rqjobs import warehouse as warehouses
from rqjobs import worker as worker_module
from rqjobs.repository import storage
from rqjobs.worker import HeartbeatRegistry

pytestmark = pytest.mark.slow

# Hard limit 3 s, so the soft limit is 2.5 s (SOFT_TIME_LIMIT / JOB_TIMEOUT of it).
TIMEOUT = 3


def error_of(job) -> str:
    return job.latest_result().exc_string


@pytest.mark.parametrize('in_process', [False, True], ids=['work horse', 'in-process'])
def test_soft_and_hard_limits_in_a_real_worker(redis_conn, faults, processes, tmp_path, in_process):
    marker, pidfile = tmp_path / 'cleaned-up', tmp_path / 'child.pid'
    # An in-process worker serves the project's short queues only; the jobs are the same.
    queue, options = ('statistics', ['--in-process']) if in_process else (FAULT_QUEUE, [])
    on = {'connection': redis_conn, 'queue': queue}
    soft = queues.enqueue('nap', [30], timeout=TIMEOUT, **on)
    stubborn = queues.enqueue('stubborn', [str(marker)], timeout=TIMEOUT, **on)
    parent = queues.enqueue('with_child', [str(pidfile)], timeout=TIMEOUT, **on)
    after = queues.enqueue('nap', [0], **on)
    worker = processes.worker(queue, *options, name='worker')
    child = psutil.Process(
        int(
            wait_until(
                lambda: pidfile.exists() and pidfile.read_text(), 30, 'the child started', details=processes.logs_text
            )
        )
    )
    processes.seen.append(child)
    wait_until(
        lambda: after.get_status(refresh=True) == JobStatus.FINISHED,
        30,
        'the last job ran',
        details=processes.logs_text,
    )

    # Past the soft limit: SoftTimeLimitExceeded in the job, a permanent failure, not retried.
    assert soft.get_status(refresh=True) == JobStatus.FAILED  # not scheduled for a retry
    assert 'SoftTimeLimitExceeded: time limit: the job ran past its soft limit of 2.5 s' in error_of(soft)
    # Caught and ignored: stopped at the hard limit after its clean-up, and not retried either. A work horse is
    # killed there; in the worker's own process the job gets HardTimeLimitExceeded and the worker goes on.
    assert marker.read_text() == 'cleaned up'
    for stopped in (stubborn, parent):
        assert stopped.get_status(refresh=True) == JobStatus.FAILED
        assert (
            'HardTimeLimitExceeded: time limit: the job ran past its hard limit of 3 s'
            if in_process
            else 'Work-horse terminated unexpectedly; waitpid returned 9 (signal 9)'
        ) in error_of(stopped)
    # The process group the job started went with it.
    assert_all_dead([child])
    assert worker.poll() is None
    if not in_process:
        assert 'ran past its hard limit of 3 s (JOB_TIMEOUT): killing the work horse' in processes.log(worker)


def test_an_in_process_worker_keeps_a_long_job_alive_and_dies_with_a_deaf_one(redis_conn, faults, processes):
    on = {'connection': redis_conn, 'queue': 'statistics'}
    # Longer than a heartbeat lasts unrenewed (JOB_MONITORING_INTERVAL + HEARTBEAT_GRACE = 25 s).
    long = queues.enqueue('nap', [28], timeout=60, **on)
    deaf = queues.enqueue('deaf', [60], timeout=TIMEOUT, **on)
    worker = processes.worker('statistics', '--in-process', name='in-process')
    wait_until(lambda: long.get_status(refresh=True) == JobStatus.STARTED, 30, 'the long job started')
    started = time.monotonic()
    registry = HeartbeatRegistry('statistics', connection=redis_conn, job_class=queues.JsonJob)
    while time.monotonic() - started < 27:
        registry.cleanup()  # what every worker's maintenance does: the job must not count as abandoned
        assert long.get_status(refresh=True) == JobStatus.STARTED, processes.logs_text()
        time.sleep(3)
    wait_until(lambda: long.get_status(refresh=True) == JobStatus.FINISHED, 30, 'the long job finished')

    # A job deaf to its limits runs on past the hard limit in the worker's process: the worker is killed.
    assert worker.wait(timeout=TIMEOUT + worker_module.IN_PROCESS_GRACE + 30) == -9
    assert 'still runs 10 s past its hard limit of 3 s: killing the worker' in processes.log(worker)
    # Its heartbeat expires, and a worker's maintenance fails it as abandoned, without a retry.
    wait_until(
        lambda: registry.cleanup() or deaf.get_status(refresh=True) == JobStatus.FAILED,
        60,
        'the deaf job failed as abandoned',
        interval=1,
    )
    deaf.refresh()
    assert deaf.retries_left == 0


def test_job_stop_stops_an_in_process_job_and_the_worker_goes_on(redis_conn, faults, processes):
    on = {'connection': redis_conn, 'queue': 'statistics'}
    napping = queues.enqueue('nap', [60], timeout=120, **on)
    worker = processes.worker('statistics', '--in-process', name='in-process')
    wait_until(lambda: napping.get_status(refresh=True) == JobStatus.STARTED, 30, 'the job started')
    stop = processes.jobs('job', 'stop', napping.id, name='stop')
    assert stop.wait(timeout=30) == 0, processes.log(stop)
    wait_until(
        lambda: napping.get_status(refresh=True) == JobStatus.STOPPED,
        10,
        'the job stopped',
        details=processes.logs_text,
    )
    # Stopped where it stood, not by killing the process it ran in: the worker takes the next job.
    after = queues.enqueue('nap', [0], **on)
    wait_until(lambda: after.get_status(refresh=True) == JobStatus.FINISHED, 30, 'the next job ran')
    assert worker.poll() is None


@pytest.fixture(scope='session')
def big_repo(tmp_path_factory):
    return big_repository(tmp_path_factory)


@pytest.mark.db
def test_a_warehouse_past_its_soft_limit_fails_and_leaves_no_clone(
    redis_conn, database, local, big_repo, env, processes
):
    env.setenv('JOB_TIMEOUT', '10')
    env.setenv('SOFT_TIME_LIMIT', '1')  # the clone takes longer
    settings.reset()
    row = warehouses.submit_warehouse(str(big_repo), connection=redis_conn)
    dest = storage.clone_path(row.id)
    processes.worker('warehouse', name='worker')
    clones = wait_until(lambda: git_processes(dest), 30, 'a git clone started', details=processes.logs_text)
    wait_until(
        lambda: Warehouse.get_by_id(row.id).status != WarehouseStatus.PROCESSING,
        30,
        'the warehouse left Processing',
        details=processes.logs_text,
    )

    failed = Warehouse.get_by_id(row.id)
    assert failed.status == WarehouseStatus.FAILED
    assert failed.error.startswith('time limit: the job ran past its soft limit of 1 s (SOFT_TIME_LIMIT)')
    job = queues.JsonJob.fetch(warehouses.process_job_id(row.id), connection=redis_conn)
    wait_until(lambda: job.get_status(refresh=True) == JobStatus.FAILED, 10, 'the job failed')  # not retried
    assert_all_dead(clones)
    assert_no_git(dest, big_repo)
    assert not dest.exists()
