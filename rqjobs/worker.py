"""Workers: ordinary rq workers, set up with the project's job class, queue class and JSON serializer.

`jobs worker` runs one. The same worker can be started with rq's own command line:

    rq worker --url "$REDIS_URL" --worker-class rqjobs.worker.JobsWorker --job-class rqjobs.queues.JsonJob \\
        --queue-class rqjobs.queues.JsonQueue --serializer rqjobs.queues.JSONSerializer --with-scheduler \\
        --job-monitoring-interval 10 --maintenance-interval 30 \\
        default access_log statistics minimap warehouse migration
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import redis
from rq import Worker

from rqjobs import limits, queues
from rqjobs.settings import Settings, get_settings

logger = logging.getLogger(__name__)

# How often a worker checks on its work horse and renews the job's heartbeat, and how long a missed heartbeat is
# tolerated before the job counts as abandoned. With maintenance every 30 s, a job whose worker was SIGKILLed is
# retried or failed within about a minute (rq's defaults: 30 s, 60 s and 10 minutes, so 2 to 12 minutes).
JOB_MONITORING_INTERVAL = 10
HEARTBEAT_GRACE = 15
MAINTENANCE_INTERVAL = 30


class JobsWorker(Worker):
    """An rq worker with soft and hard time limits in the work horse and quick recovery of abandoned jobs."""

    death_penalty_class = limits.TimeLimits

    def main_work_horse(self, job, queue):
        limits.in_work_horse = True
        return super().main_work_horse(job, queue)

    def get_heartbeat_ttl(self, job, working_time: float = 0.0) -> int:
        if job.timeout and job.timeout > 0:
            return int(min(job.timeout - working_time, self.job_monitoring_interval)) + HEARTBEAT_GRACE
        return self.job_monitoring_interval + HEARTBEAT_GRACE


def build_worker(
    connection: redis.Redis,
    queue_names: Sequence[str] = (),
    *,
    name: str | None = None,
    settings: Settings | None = None,
) -> Worker:
    """Return an rq worker on `queue_names` (all queues when empty), in their order of priority."""
    settings = settings or get_settings()
    names = list(queue_names) or list(queues.queue_names(settings))
    worker_queues = [queues.get_queue(queue, connection, settings) for queue in names]
    # Import the job modules now, in the parent, so a broken JOBS_EXTRA_MODULES fails at start, not per job.
    queues.registered_jobs(settings)
    return JobsWorker(
        worker_queues,
        name=name,
        connection=connection,
        job_class=queues.JsonJob,
        queue_class=queues.JsonQueue,
        serializer=queues.JSONSerializer,
        default_result_ttl=settings.result_ttl,
        job_monitoring_interval=JOB_MONITORING_INTERVAL,
        maintenance_interval=MAINTENANCE_INTERVAL,
    )


def run_worker(
    connection: redis.Redis,
    queue_names: Sequence[str] = (),
    *,
    burst: bool = False,
    max_jobs: int | None = None,
    name: str | None = None,
    logging_level: str = 'INFO',
    settings: Settings | None = None,
) -> bool:
    """Run a worker until it is stopped (or, with `burst`, until the queues are empty); True if it ran a job."""
    worker = build_worker(connection, queue_names, name=name, settings=settings)
    # The worker also moves due scheduled jobs and retries onto their queues (rq's own scheduler, one per Redis).
    return worker.work(burst=burst, max_jobs=max_jobs, with_scheduler=True, logging_level=logging_level)
