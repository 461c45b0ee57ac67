"""Redis SIGKILLed and restarted from its append-only file under a running worker; producers while it is down."""

import os
import time
from pathlib import Path

import psutil
import pytest
from faultkit import FAULT_QUEUE, assert_all_dead, tree
from rq.job import JobStatus

from helpers import run_jobs_cli, wait_until
from rqjobs import connections, queues, settings
from rqjobs.contrib import access_log as producer
from rqjobs.embedded import EmbeddedRedis
from rqjobs.worker import HEARTBEAT_GRACE, JOB_MONITORING_INTERVAL

pytestmark = pytest.mark.slow


@pytest.fixture
def server(env, tmp_path):
    """A private Redis server with the embedded configuration (AOF, fsync every second), killed at the end."""
    private = EmbeddedRedis(tmp_path / 'redis')
    env.setenv('REDIS_URL', private.ensure_running())
    settings.reset()
    yield private
    kill_server(private)


def kill_server(server: EmbeddedRedis) -> None:
    """SIGKILL the server, as a crash or the OOM killer would: no shutdown, no final fsync."""
    try:
        process = psutil.Process(int(server.pid_path.read_text()))
        # A SIGKILLed server leaves its pid file behind: make sure the pid is still that server.
        if str(server.socket_path) not in ' '.join(process.cmdline()):
            return
        process.kill()
    except (OSError, ValueError, psutil.Error):
        return
    wait_until(lambda: not server.is_running(), 10, 'the Redis server died')


def lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_queued_jobs_survive_a_redis_crash_and_a_busy_worker_exits_1(server, faults, processes, tmp_path):
    connection = connections.get_redis()
    long_marker, short_marker = tmp_path / 'long.txt', tmp_path / 'short.txt'
    running = queues.enqueue('nap', [2, str(long_marker)], connection=connection)
    queued = [queues.enqueue('nap', [0, str(short_marker)], connection=connection) for _ in range(5)]
    worker = processes.worker(FAULT_QUEUE, name='worker')
    scheduler = processes.jobs('scheduler', '--interval', '1', name='scheduler')
    wait_until(
        lambda: running.get_status(refresh=True) == JobStatus.STARTED,
        30,
        'the long job started',
        details=processes.logs_text,
    )
    horse = wait_until(lambda: [p for p in tree(worker.pid)[1:] if os.getpgid(p.pid) == p.pid], 10, 'a work horse')
    # Past its start-up registration and in its loop (losing Redis while registering has a test of its own).
    wait_until(
        lambda: connection.keys('rq:scheduler_instance:*'),
        30,
        'the scheduler runs its loop',
        details=processes.logs_text,
    )
    # A SIGKILL loses what Redis has not yet written to its append-only file, not what awaits an fsync.
    wait_until(lambda: connection.info('persistence')['aof_buffer_length'] == 0, 10, 'the pushes are in the file')
    kill_server(server)

    # Producers fail fast and say why, without a traceback.
    began = time.monotonic()
    result = run_jobs_cli('enqueue', 'nap', env=os.environ.copy(), timeout=30)
    assert time.monotonic() - began < 10
    assert result.returncode == 1 and 'Cannot reach Redis' in result.stderr and 'Traceback' not in result.stderr
    began = time.monotonic()
    assert producer.enqueue_access_log({'resource_type': 'Page', 'resource_id': '/about'}) is False
    assert time.monotonic() - began < 10

    # The job ends while Redis is down: its worker cannot record the result and exits 1 for its process manager.
    assert worker.wait(timeout=30) == 1, processes.log(worker)
    assert 'The worker lost Redis and stopped' in processes.log(worker)
    assert lines(long_marker) == 1
    assert_all_dead(horse)
    # So does the scheduler, at its next look at the schedule.
    assert scheduler.wait(timeout=30) == 1, processes.log(scheduler)
    assert 'Traceback' not in processes.log(scheduler), processes.log(scheduler)
    assert 'Error: The scheduler lost Redis and stopped (' in processes.log(scheduler)

    server.ensure_running()
    assert [job.get_status(refresh=True) for job in queued] == [JobStatus.QUEUED] * 5
    assert queues.get_queue(FAULT_QUEUE, connection).count == 5
    # The finished job's result was lost with Redis: it still counts as started, and the maintenance of any worker
    # retries it once its heartbeat has expired (at least once, as every job is written to allow).
    assert running.get_status(refresh=True) == JobStatus.STARTED and running.retries_left == 3
    registry = queues.get_queue(FAULT_QUEUE, connection).started_job_registry
    expiries = [
        score
        for member, score in connection.zrange(registry.key, 0, -1, withscores=True)
        if member.decode().startswith(f'{running.id}:')
    ]
    assert len(expiries) == 1 and 0 < expiries[0] - time.time() <= HEARTBEAT_GRACE + JOB_MONITORING_INTERVAL

    restarted = processes.worker(FAULT_QUEUE, name='restarted')
    wait_until(
        lambda: [job.get_status(refresh=True) for job in queued] == [JobStatus.FINISHED] * 5,
        30,
        'the queued jobs ran',
        details=processes.logs_text,
    )
    assert lines(short_marker) == 5
    assert restarted.poll() is None


def test_a_scheduler_that_loses_redis_while_registering_exits_1(server, processes):
    import scheduler as plans

    connection = connections.get_redis()
    # Writes wait while the server is paused for them, reads go on: the scheduler's first write, the SET that takes
    # the registration lock, is held until the server dies under it.
    connection.execute_command('CLIENT', 'PAUSE', 60_000, 'WRITE')
    scheduler = processes.jobs('scheduler', '--interval', '1', name='scheduler')
    wait_until(
        lambda: [c for c in connection.client_list() if c['cmd'] == 'set' and 'b' in c['flags']],
        30,
        'the scheduler waits to take the registration lock',
        details=processes.logs_text,
    )
    kill_server(server)

    assert scheduler.wait(timeout=30) == 1, processes.log(scheduler)
    log = processes.log(scheduler)
    assert 'Traceback' not in log, log
    assert log.splitlines()[-1].startswith('Error: The scheduler lost Redis and stopped ('), log
    server.ensure_running()
    assert plans.describe(connection)['entries'] == []  # it died before registering anything


def test_an_idle_worker_waits_for_redis_and_goes_on(server, faults, processes, tmp_path):
    connection = connections.get_redis()
    worker = processes.worker(FAULT_QUEUE, name='worker')
    # Blocked in its wait for jobs, where a worker spends its idle time (between two waits it would exit 1).
    wait_until(
        lambda: any('b' in client['flags'] for client in connection.client_list()),
        30,
        'the worker waits for jobs',
        details=processes.logs_text,
    )
    kill_server(server)
    wait_until(
        lambda: 'could not connect to Redis' in processes.log(worker),
        30,
        'the worker noticed Redis is gone',
        details=processes.logs_text,
    )
    server.ensure_running()
    marker = tmp_path / 'after.txt'
    job = queues.enqueue('nap', [0, str(marker)], connection=connection)
    # Blocked on its queues when Redis went, it retries (1, 2, 4 ... s apart) and takes the job once Redis is back.
    wait_until(
        lambda: job.get_status(refresh=True) == JobStatus.FINISHED, 30, 'the job ran', details=processes.logs_text
    )
    assert lines(marker) == 1
    assert worker.poll() is None
    assert 'could not connect to Redis' in processes.log(worker)
