"""The scheduler process: rq-scheduler, set up so that every job it creates is a JSON `JsonJob`.

rq-scheduler has no serializer option; giving it the project's job and queue classes is enough, because they force
the JSON serializer and the job allowlist on every job they create or load.
"""

from __future__ import annotations

import logging

import redis
from rq_scheduler import Scheduler

from rqjobs import queues

logger = logging.getLogger(__name__)

# Seconds between two looks at the schedule; short enough that a 30 s entry fires within a few seconds of its time.
POLL_INTERVAL = 5


def build_scheduler(connection: redis.Redis, interval: float = POLL_INTERVAL) -> Scheduler:
    """Return an rq-scheduler whose jobs are JSON jobs of the project's job class."""
    return Scheduler(connection=connection, interval=interval, job_class=queues.JsonJob,
                     queue_class=queues.JsonQueue)


def run(connection: redis.Redis, interval: float = POLL_INTERVAL, burst: bool = False) -> None:
    """Run the scheduler loop until stopped (or, with `burst`, one pass)."""
    logger.info('scheduler: polling every %s s', interval)
    build_scheduler(connection, interval).run(burst=burst)
