"""Workers: ordinary rq workers, set up with the project's job class, queue class and JSON serializer.

`jobs worker` runs one. The same worker can be started with rq's own command line:

    rq worker --url "$REDIS_URL" --worker-class rqjobs.worker.JobsWorker --job-class rqjobs.queues.JsonJob \\
        --queue-class rqjobs.queues.JsonQueue --serializer rqjobs.queues.JSONSerializer --with-scheduler \\
        --job-monitoring-interval 10 --maintenance-interval 30 --worker-ttl 45 \\
        default access_log statistics minimap warehouse migration
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence

import redis
from rq import Worker
from rq.callbacks import execute_failure_callback
from rq.defaults import DEFAULT_LOGGING_DATE_FORMAT, DEFAULT_LOGGING_FORMAT
from rq.exceptions import StopRequested
from rq.scheduler import RQScheduler
from rq.utils import as_text, current_timestamp, now

from rqjobs import limits, queues
from rqjobs.exceptions import RedisUnavailable, WorkerStopped, WorkHorseKilled
from rqjobs.settings import Settings, get_settings

logger = logging.getLogger(__name__)

# How often a worker checks on its work horse and renews the job's heartbeat, and how long a missed heartbeat is
# tolerated before the job counts as abandoned. With maintenance every 30 s, a job whose worker was SIGKILLed is
# retried or failed within about a minute (rq's defaults: 30 s, 60 s and 10 minutes, so 2 to 12 minutes).
JOB_MONITORING_INTERVAL = 10
HEARTBEAT_GRACE = 15
MAINTENANCE_INTERVAL = 30
# An idle worker waits on its queues for worker_ttl - 15 s before it looks at maintenance again (rq's default: 405 s);
# this makes that wait the maintenance interval, so idle workers find abandoned jobs every 30 s too.
WORKER_TTL = MAINTENANCE_INTERVAL + 15


class JobsScheduler(RQScheduler):
    """rq's scheduler, which first sets aside due jobs that cannot be read."""

    def enqueue_scheduled_jobs(self):
        # rq loads due jobs with its base job class and stops at the first unreadable one, for every queue and
        # every pass after: such jobs are failed with their reason before rq sees them.
        for name in self._acquired_locks:
            queue = queues.JsonQueue(as_text(name), connection=self.connection)
            due = queue.scheduled_job_registry.get_jobs_to_schedule(current_timestamp())
            if due:
                queues.set_aside_unreadable(self.connection, queue.key, due)
        return super().enqueue_scheduled_jobs()


class JobsWorker(Worker):
    """An rq worker with soft and hard time limits in the work horse and quick recovery of abandoned jobs."""

    death_penalty_class = limits.TimeLimits
    # What ended the loop, other than an error: a stop request (SIGTERM, SIGINT) or the --max-jobs budget.
    stop_requested = False
    jobs_executed = 0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # An idle worker stops when rq's signal handler raises StopRequested. A signal that lands while a finalizer
        # (__del__) runs has that exception printed and dropped, and the worker would wait on its queues for good:
        # so the stop is also checked before each wait, with the queue class this worker dequeues through.
        worker = self

        class StoppableQueue(self.queue_class):
            @classmethod
            def dequeue_any(cls, *args, **kwargs):
                if worker._stop_requested:
                    raise StopRequested()
                return super().dequeue_any(*args, **kwargs)

        self.queue_class = StoppableQueue

    def request_stop(self, signum, frame):
        self.stop_requested = True
        self._stop_requested = True  # first, so that the stop holds even if what follows is cut short
        return super().request_stop(signum, frame)

    def execute_job(self, job, queue):
        self.jobs_executed += 1
        return super().execute_job(job, queue)

    def main_work_horse(self, job, queue):
        limits.in_work_horse = True
        # rq gives the horse a process group of its own, which a kill of the worker's group misses: unwatched, it
        # would run on, and the job, once found abandoned, would run a second time alongside it.
        limits.die_with_parent(self.pid)
        return super().main_work_horse(job, queue)

    def handle_work_horse_killed(self, job, retpid, ret_val, rusage):
        super().handle_work_horse_killed(job, retpid, ret_val, rusage)
        if job.timeout and job.timeout > 0 and job.started_at and (now() - job.started_at).total_seconds() >= (
                job.timeout - 1):
            # Killed at its hard limit: as at the soft limit, another try would only run as long again.
            job.retries_left = 0
        # rq runs a failure callback when a job raises or is abandoned, not when its horse is killed (hard limit,
        # OOM killer); without this a warehouse whose last try was killed would stay Processing.
        with contextlib.suppress(Exception):  # execute_failure_callback logs what went wrong
            execute_failure_callback(job, self.death_penalty_class, WorkHorseKilled,
                                     WorkHorseKilled(f'work horse {retpid} ended with status {ret_val}'), None)

    def _start_scheduler(self, burst: bool = False, logging_level: str | None = 'INFO',
                         date_format: str = DEFAULT_LOGGING_DATE_FORMAT, log_format: str = DEFAULT_LOGGING_FORMAT):
        # rq's own, with the scheduler class above: rq names its class here and offers no setting for it.
        self.scheduler = JobsScheduler(self.queues, connection=self.connection, serializer=self.serializer,
                                       logging_level=logging_level if logging_level is not None else self.log.level,
                                       date_format=date_format, log_format=log_format)
        self.scheduler.acquire_locks()
        if self.scheduler.acquired_locks:
            if burst:
                try:
                    self.scheduler.register_birth()
                    self.scheduler.enqueue_scheduled_jobs()
                finally:
                    self.scheduler.release_locks()
                    self.scheduler.register_death()
            else:
                self.scheduler.start()

    def clean_registries(self):
        # rq passes over an unreadable job that was abandoned, or left in the intermediate queue by a worker that
        # crashed on it, without a word and keeps it for good: such jobs are failed with their reason first.
        for queue in self.queues:
            stale = queue.started_job_registry.get_expired_job_ids() + queue.intermediate_queue.get_job_ids()
            if stale:
                queues.set_aside_unreadable(self.connection, queue.key, list(dict.fromkeys(stale)))
        return super().clean_registries()

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
        worker_ttl=WORKER_TTL,
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
    try:
        worked = worker.work(burst=burst, max_jobs=max_jobs, with_scheduler=True, logging_level=logging_level)
    except redis.RedisError as exc:
        raise RedisUnavailable(f'The worker lost Redis and stopped ({exc}); it is started again once Redis is back '
                               f'(run it under a process manager that restarts it).') from None
    if not (burst or worker.stop_requested or (max_jobs is not None and worker.jobs_executed >= max_jobs)):
        # rq logs the error (Redis lost while a job ran, say) and returns as if asked to stop: exit 1 instead, so
        # that a process manager restarts the worker rather than taking it for a clean exit.
        raise WorkerStopped('The worker stopped after an error (logged above); start it again, or run it under a '
                            'process manager that restarts it (systemd Restart=always, Kubernetes).')
    return worked
