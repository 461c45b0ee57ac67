"""SIGTERM to a busy worker: the first lets the running job finish (warm shutdown), a second one stops it (cold)."""

import os
import signal
import subprocess
import sys
import time

import pytest
from faultkit import FAULT_QUEUE, assert_all_dead, tree
from rq.job import JobStatus

from helpers import ROOT, wait_until
from rqjobs import queues
from rqjobs.worker import HEARTBEAT_GRACE, JOB_MONITORING_INTERVAL

pytestmark = pytest.mark.slow


def start_busy(redis_conn, processes, seconds: float, marker):
    """Start a worker on a job that naps `seconds`, with a second job queued behind it; return both and the horse."""
    running = queues.enqueue('nap', [seconds, str(marker)], connection=redis_conn)
    waiting = queues.enqueue('nap', [0, str(marker)], connection=redis_conn)
    worker = processes.worker(FAULT_QUEUE, name='worker')
    wait_until(
        lambda: running.get_status(refresh=True) == JobStatus.STARTED,
        30,
        'the job started',
        details=processes.logs_text,
    )
    horse = wait_until(lambda: [p for p in tree(worker.pid)[1:] if os.getpgid(p.pid) == p.pid], 10, 'a work horse')
    return worker, running, waiting, horse


def test_a_first_sigterm_lets_the_running_job_finish(redis_conn, faults, processes, tmp_path):
    marker = tmp_path / 'ran.txt'
    worker, running, waiting, horse = start_busy(redis_conn, processes, 2, marker)
    os.kill(worker.pid, signal.SIGTERM)
    assert worker.wait(timeout=30) == 0, processes.log(worker)
    assert running.get_status(refresh=True) == JobStatus.FINISHED
    assert running.return_value() == {'slept': 2}
    assert marker.read_text() == 'done\n'
    assert waiting.get_status(refresh=True) == JobStatus.QUEUED  # taken by the next worker, not this one
    assert_all_dead(horse)
    assert 'warm shut down requested' in processes.log(worker)


def test_a_second_sigterm_kills_the_running_job_which_is_recovered_as_abandoned(
    redis_conn, faults, processes, tmp_path
):
    marker = tmp_path / 'ran.txt'
    worker, running, waiting, horse = start_busy(redis_conn, processes, 30, marker)
    os.kill(worker.pid, signal.SIGTERM)
    time.sleep(1.2)  # rq ignores a second signal within a second of the first (a pool may send two)
    os.kill(worker.pid, signal.SIGTERM)
    assert worker.wait(timeout=30) == 0, processes.log(worker)
    assert 'cold shut down' in processes.log(worker)
    assert_all_dead(horse)
    assert not marker.exists()
    # rq leaves the job started, with no heartbeat any more: the next maintenance of any worker finds it abandoned,
    # then retries it (it has retries left) or fails it.
    assert running.get_status(refresh=True) == JobStatus.STARTED
    registry = queues.get_queue(FAULT_QUEUE, redis_conn).started_job_registry
    expiries = [
        score
        for member, score in redis_conn.zrange(registry.key, 0, -1, withscores=True)
        if member.decode().startswith(f'{running.id}:')
    ]
    assert len(expiries) == 1 and expiries[0] - time.time() <= HEARTBEAT_GRACE + JOB_MONITORING_INTERVAL
    assert waiting.get_status(refresh=True) == JobStatus.QUEUED


# A worker whose finalizer runs when the signal arrives: Python prints what the handler raised and drops it.
SWALLOWED_STOP = """
import os, signal, sys
from rqjobs import connections
from rqjobs.worker import build_worker


class Finalized:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(200_000):  # the handler runs in here
            pass


worker = build_worker(connections.get_redis(shared=False), ['default'])
procline = worker.procline


def listening(message):
    procline(message)
    if message.startswith('Listening on'):
        Finalized()  # dropped at once, as the worker is about to wait on its queues


worker.procline = listening
worker.work(with_scheduler=False)
print('worker stopped', flush=True)
"""


def test_an_idle_worker_stops_even_when_the_signal_lands_in_a_finalizer(env, redis_conn):
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, '-c', SWALLOWED_STOP],
        check=False,
        cwd=ROOT,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = done.stdout + done.stderr
    assert 'Exception ignored in' in output and 'StopRequested' in output  # the handler's exception was dropped
    assert done.returncode == 0 and 'worker stopped' in output, output
    # It stops before it would wait on its queues (30 s), not at the process manager's SIGKILL.
    assert time.monotonic() - began < 20


def test_ctrl_c_while_the_worker_registers_is_a_requested_stop(redis_conn, faults, processes):
    # Writes wait while the server is paused for them: the worker is held in its registration, before rq has
    # installed its signal handlers, where Ctrl-C arrives as KeyboardInterrupt.
    redis_conn.execute_command('CLIENT', 'PAUSE', 60_000, 'WRITE')
    try:
        worker = processes.worker(FAULT_QUEUE, name='worker')
        wait_until(
            lambda: [c for c in redis_conn.client_list() if 'b' in c['flags'] and c['cmd'] != 'client|list'],
            30,
            'the worker waits to register itself',
            details=processes.logs_text,
        )
        processes.kill_group(worker, signal.SIGINT)  # what a terminal sends on Ctrl-C
        assert worker.wait(timeout=30) == 0, processes.log(worker)
    finally:
        redis_conn.execute_command('CLIENT', 'UNPAUSE')
    log = processes.log(worker)
    assert 'Traceback' not in log and 'Aborted' not in log, log
    assert log.splitlines()[-1] == 'Worker stopped (Ctrl-C) before it took any job.', log
