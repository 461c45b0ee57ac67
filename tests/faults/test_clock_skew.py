"""Workers whose clocks disagree: a running job is never taken for abandoned, and a finished one never runs again."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest
from rq.executions import Execution
from rq.job import JobStatus, Retry

from helpers import ROOT, wait_until
from rqjobs import connections, queues, settings
from rqjobs.worker import build_worker

pytestmark = pytest.mark.slow

QUEUE = 'skew'

# A job that runs until the test lets it end: the test, not a sleep, decides when it finishes.
CLOCK_JOBS = '''
import time
from pathlib import Path

JOBS = ('hold',)


def hold(release: str, marker: str) -> None:
    """Record the start, wait for `release` to exist, record the end."""
    with open(marker, 'a') as out:
        out.write('started\\n')
    deadline = time.monotonic() + 120
    while not Path(release).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    with open(marker, 'a') as out:
        out.write('done\\n')
'''

# `jobs worker` with every clock rq and the project read (rq.utils.now and current_timestamp, wherever imported,
# and rqjobs.clock.utcnow) moved by SKEW seconds, as on a host whose clock is off.
SKEWED_JOBS = """
import datetime, sys
import cli, rq.utils, rqjobs.clock, rqjobs.worker
skew = float(sys.argv[1])
real_now, real_timestamp, real_utcnow = rq.utils.now, rq.utils.current_timestamp, rqjobs.clock.utcnow
shifted = {
    real_now: lambda: real_now() + datetime.timedelta(seconds=skew),
    real_timestamp: lambda: real_timestamp() + int(skew),
    real_utcnow: lambda: real_utcnow() + datetime.timedelta(seconds=skew),
}
for module in list(sys.modules.values()):
    if getattr(module, '__name__', '').split('.')[0] in ('rq', 'rqjobs'):
        for name, value in list(vars(module).items()):
            if callable(value) and value in shifted:
                setattr(module, name, shifted[value])
cli.main(args=sys.argv[2:])
"""


@pytest.fixture
def clock_jobs(env, tmp_path, monkeypatch):
    """The test's job module, importable here and in the workers, on the queue `skew`."""
    directory = tmp_path / 'clockjobs'
    directory.mkdir()
    (directory / 'clock_jobs.py').write_text(textwrap.dedent(CLOCK_JOBS))
    monkeypatch.syspath_prepend(str(directory))
    env.setenv('PYTHONPATH', str(directory))
    env.setenv('JOBS_EXTRA_MODULES', f'clock_jobs={QUEUE}')
    settings.reset()
    return directory


def start_worker(processes, name: str, skew: float = 0.0) -> subprocess.Popen:
    """Start `jobs worker --burst` on the test's queue with its clocks moved by `skew` seconds."""
    log = processes.logs / f'{name}.log'
    with open(log, 'ab') as out:
        process = subprocess.Popen(
            [sys.executable, '-c', SKEWED_JOBS, str(skew), 'worker', '--burst', '--name', name, QUEUE],
            cwd=ROOT,
            env=os.environ.copy(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    processes.started.append((process, log))
    return process


def hold_job(redis_conn, tmp_path, **options):
    marker = tmp_path / 'marker'
    release = tmp_path / 'release'
    job = queues.enqueue('hold', [str(release), str(marker)], connection=redis_conn, **options)
    return job, marker, release


def runs(marker) -> list[str]:
    return marker.read_text().split() if marker.exists() else []


def judge() -> bool:
    """Run a worker with the right clock in burst mode: its maintenance looks for abandoned jobs; True if it ran one."""
    connection = connections.get_redis(shared=False)
    try:
        return build_worker(connection, [QUEUE]).work(burst=True, with_scheduler=False, logging_level='WARNING')
    finally:
        connection.close()


def test_a_worker_10_minutes_behind_keeps_its_running_job(redis_conn, clock_jobs, processes, tmp_path):
    job, marker, release = hold_job(redis_conn, tmp_path)
    slow = start_worker(processes, 'slow', skew=-600)
    wait_until(lambda: runs(marker) == ['started'], 60, 'the slow worker started the job', details=processes.logs_text)

    # The heartbeat the slow worker wrote says, by the right clock, that it expired ten minutes ago.
    assert not judge()
    job.refresh()
    assert job.get_status() == JobStatus.STARTED and job.retries_left == queues.RETRY_MAX
    assert job.id not in queues.get_queue(QUEUE, redis_conn).scheduled_job_registry

    release.touch()
    assert slow.wait(timeout=60) == 0, processes.logs_text()
    assert job.get_status() == JobStatus.FINISHED
    assert runs(marker) == ['started', 'done']
    assert not judge()
    assert runs(marker) == ['started', 'done']


def test_a_worker_10_minutes_behind_finds_the_job_of_a_dead_worker_abandoned(
    redis_conn, clock_jobs, processes, tmp_path
):
    job, marker, _ = hold_job(redis_conn, tmp_path, retry=None)
    dead = start_worker(processes, 'dead')
    wait_until(lambda: runs(marker) == ['started'], 60, 'the worker started the job', details=processes.logs_text)
    os.killpg(dead.pid, signal.SIGKILL)
    dead.wait(timeout=10)
    # Its last heartbeat expires in Redis (here at once rather than 25 s later).
    expire_heartbeats(redis_conn)

    # By the slow worker's clock, the heartbeat the dead worker wrote has ten minutes to go.
    slow = start_worker(processes, 'slow', skew=-600)
    assert slow.wait(timeout=60) == 0, processes.logs_text()
    assert job.get_status() == JobStatus.FAILED
    assert runs(marker) == ['started']


def expire_heartbeats(redis_conn, *, expiries: bool = False) -> None:
    """Expire the heartbeat of every running job of the test's queue in Redis, as a missed one expires there.

    With `expiries`, also the expiry each worker wrote by its clock, as when the clocks agree.
    """
    registry = queues.get_queue(QUEUE, redis_conn).started_job_registry
    for entry in redis_conn.zrange(registry.key, 0, -1):
        job_id, execution_id = entry.decode().split(':')
        redis_conn.delete(Execution(execution_id, job_id, connection=redis_conn).key)
        if expiries:
            redis_conn.zadd(registry.key, {entry: 1}, xx=True)


@pytest.mark.parametrize(
    'interval, retried', [(0, JobStatus.QUEUED), (60, JobStatus.SCHEDULED)], ids=['queued retry', 'scheduled retry']
)
def test_a_retry_of_a_run_taken_for_abandoned_is_withdrawn_when_the_run_finishes(
    redis_conn, clock_jobs, processes, tmp_path, interval, retried
):
    job, marker, release = hold_job(redis_conn, tmp_path, retry=Retry(max=2, interval=interval))
    running = start_worker(processes, 'stalled')
    wait_until(lambda: runs(marker) == ['started'], 60, 'the worker started the job', details=processes.logs_text)

    # The worker stalls past its heartbeat (a long pause, a network partition): stopped, it cannot renew it.
    os.kill(running.pid, signal.SIGSTOP)
    try:
        expire_heartbeats(redis_conn, expiries=True)
        connection = connections.get_redis(shared=False)
        build_worker(connection, [QUEUE]).clean_registries()
        connection.close()
        job.refresh()
        assert job.get_status() == retried and job.retries_left == 1, 'the run was taken for abandoned'
    finally:
        os.kill(running.pid, signal.SIGCONT)

    release.touch()
    # Burst: once the run has finished, the worker would take a queued retry.
    assert running.wait(timeout=60) == 0, processes.logs_text()
    assert runs(marker) == ['started', 'done']
    assert job.get_status() == JobStatus.FINISHED
    queue = queues.get_queue(QUEUE, redis_conn)
    assert job.id not in queue.scheduled_job_registry and job.id not in queue.get_job_ids()
    assert not judge()
    assert runs(marker) == ['started', 'done']
