"""Two `jobs scheduler` processes at once, one of them SIGKILLed midway: every slot of an entry runs exactly once."""

import signal
import time
from datetime import datetime
from itertools import pairwise

import pytest
from rq.job import JobStatus

import scheduler
from helpers import wait_until
from rqjobs import queues, settings

pytestmark = [pytest.mark.slow, pytest.mark.db]

ENTRY = 'process-access-logs'
EVERY = scheduler.MIN_INTERVAL


def runs(redis_conn) -> list[queues.JsonJob]:
    """Return the runs the schedulers enqueued for the entry, by slot."""
    ids = [key.decode().removeprefix('rq:job:') for key in redis_conn.scan_iter(f'rq:job:{ENTRY}-*')]
    jobs = [queues.JsonJob.fetch(job_id, connection=redis_conn) for job_id in ids]
    return sorted(jobs, key=lambda job: job.meta['slot'])


def test_two_schedulers_enqueue_each_slot_once(redis_conn, database, env, processes):
    others = [entry.id for entry in scheduler.PLAN if entry.id != ENTRY]
    env.setenv('JOBS_SCHEDULE', '; '.join([f'{ENTRY}={EVERY}', *(f'{entry}=off' for entry in others)]))
    settings.reset()
    processes.worker('access_log', name='worker')
    first, second = (processes.jobs('scheduler', '--interval', '1', name=name) for name in ('first', 'second'))
    started = time.monotonic()
    wait_until(lambda: len(runs(redis_conn)) >= 2, 3 * EVERY, 'two runs', interval=0.2, details=processes.logs_text)
    processes.kill_group(first, signal.SIGKILL)  # the survivor carries on alone
    assert first.wait(timeout=10) == -9
    wait_until(lambda: len(runs(redis_conn)) >= 3, 3 * EVERY, 'a third run', interval=0.2, details=processes.logs_text)
    elapsed = time.monotonic() - started
    assert second.poll() is None

    done = runs(redis_conn)
    # One run per slot, slots EVERY seconds apart: none twice, none skipped (each run ended before the next slot).
    assert len(done) <= elapsed // EVERY + 1
    slots = [datetime.fromisoformat(job.meta['slot'].removesuffix('Z')) for job in done]
    assert [(later - earlier).total_seconds() for earlier, later in pairwise(slots)] == [EVERY] * (len(slots) - 1)
    enqueued = [job.enqueued_at for job in done]
    assert all((later - earlier).total_seconds() >= EVERY - 1 for earlier, later in pairwise(enqueued))
    wait_until(
        lambda: all(job.get_status(refresh=True) == JobStatus.FINISHED for job in done),
        10,
        'the runs ended',
        details=processes.logs_text,
    )
    assert [entry['id'] for entry in scheduler.describe(redis_conn)['entries']] == [ENTRY]
