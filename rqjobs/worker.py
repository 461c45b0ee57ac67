"""Workers: ordinary rq workers, set up with the project's job class, queue class and JSON serializer.

`rqjobs worker` runs one, or with `--processes N` a pool of N (`JobsWorkerPool`). The same worker can be started
with rq's own command line:

    rq worker --url "$REDIS_URL" --worker-class rqjobs.worker.JobsWorker --job-class rqjobs.queues.JsonJob \\
        --queue-class rqjobs.queues.JsonQueue --serializer rqjobs.queues.JSONSerializer --with-scheduler \\
        --job-monitoring-interval 10 --maintenance-interval 30 --worker-ttl 45 \\
        host-build-01 default access_log statistics minimap pages warehouse migration

`rqjobs worker` adds its host's queue (`host-<JOBS_HOST_NAME>`, here `host-build-01`) before the others by itself;
with rq's command line name it, or the host chores (rqjobs/hosts.py) do not reach this host.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence

import redis
from rq import Worker, worker_registration
from rq.callbacks import execute_failure_callback
from rq.defaults import DEFAULT_LOGGING_DATE_FORMAT, DEFAULT_LOGGING_FORMAT
from rq.exceptions import StopRequested
from rq.executions import Execution
from rq.rate_limit import RateLimitRegistry
from rq.registry import (
    DeferredJobRegistry,
    FailedJobRegistry,
    FinishedJobRegistry,
    ReadyJobRegistry,
    StartedJobRegistry,
)
from rq.scheduler import RQScheduler
from rq.scripts import ACQUIRE_OR_REFRESH_LOCK_SCRIPT
from rq.utils import as_text, current_timestamp, now
from rq.worker import WorkerStatus
from rq.worker_pool import ForkProcess, WorkerPool

from rqjobs import connections, hosts, limits, queues
from rqjobs.exceptions import RedisUnavailable, RqjobsError, UnsuitableQueue, WorkerStopped, WorkHorseKilled
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
# Seconds a scheduler's lock on its queues outlives the scheduler's last renewal (every second). rq's 61 s kept a
# SIGKILLed worker's scheduler lock long after its running job counted as abandoned, and the retry of that job,
# scheduled, waited for the next maintenance after that: up to 90 s. Freed within 15 s, the lock is free before the
# job counts as abandoned (25 s), so the maintenance that schedules the retry also starts a scheduler to enqueue it.
SCHEDULER_LOCK_TTL = 15
# Queues whose jobs an --in-process worker may run: the project's own, short, and run often (the access-log drain
# every 30 s, statistics). Clones, pages and migrations want a work horse: a crash or a leak there must not take the
# worker, and their run time dwarfs a fork.
IN_PROCESS_QUEUES = (queues.ACCESS_LOG, queues.STATISTICS)
# Seconds a job run in its worker's process may go on past its hard limit before the worker is killed.
IN_PROCESS_GRACE = 10
# A field of the worker's rq hash: whether it accepts local paths as warehouses, so that a submission can tell.
ALLOW_LOCAL_FIELD = 'rqjobs_allow_local_repositories'


class HeartbeatRegistry(StartedJobRegistry):
    """rq's registry of running jobs, which finds abandoned ones by Redis's clock instead of each host's."""

    def cleanup(self, timestamp: float | None = None, exception_handlers: list | None = None) -> None:
        # rq compares the expiry that the running job's worker wrote by its own clock with the clock of the worker
        # that cleans up: a worker 10 minutes behind has its running job taken for abandoned, and retried while it
        # still runs. Each run's execution hash expires when its heartbeat is missed, timed by Redis alone, so a run
        # whose hash is gone is abandoned whatever the hosts' clocks say, and one whose hash is there is not.
        entries = [as_text(entry) for entry in self.connection.zrange(self.key, 0, -1)]
        runs = [entry.split(':', 1) for entry in entries]
        with self.connection.pipeline(transaction=False) as pipe:
            for job_id, execution_id in (run for run in runs if len(run) == 2):
                pipe.exists(Execution(execution_id, job_id, connection=self.connection).key)
            alive = iter(pipe.execute())
        abandoned = {entry: 0 for entry, run in zip(entries, runs, strict=True) if len(run) == 2 and not next(alive)}
        if abandoned:
            # Marked with the earliest expiry, they are the only runs rq's own clean-up then takes for abandoned.
            self.connection.zadd(self.key, abandoned, xx=True)
            super().cleanup(timestamp=0, exception_handlers=exception_handlers)


def clean_registries(queue, exception_handlers: list | None = None) -> None:
    """Clean a queue's registries as rq's `clean_registries` does, with running jobs judged by `HeartbeatRegistry`."""
    options = {
        'name': queue.name,
        'connection': queue.connection,
        'job_class': queue.job_class,
        'serializer': queue.serializer,
    }
    FinishedJobRegistry(**options).cleanup()
    HeartbeatRegistry(**options).cleanup(exception_handlers=exception_handlers)
    FailedJobRegistry(**options).cleanup()
    DeferredJobRegistry(**options).cleanup()
    ReadyJobRegistry(**options).cleanup()
    for rate_limit_registry in RateLimitRegistry.all(queue.connection):
        rate_limit_registry.cleanup()


class JobsScheduler(RQScheduler):
    """rq's scheduler, which first sets aside due jobs that cannot be read, and whose lock outlives it briefly."""

    def enqueue_scheduled_jobs(self):
        # rq loads due jobs with its base job class and stops at the first unreadable one, for every queue and
        # every pass after: such jobs are failed with their reason before rq sees them.
        for name in self._acquired_locks:
            queue = queues.JsonQueue(as_text(name), connection=self.connection)
            due = queue.scheduled_job_registry.get_jobs_to_schedule(current_timestamp())
            if due:
                queues.set_aside_unreadable(self.connection, queue.key, due)
        return super().enqueue_scheduled_jobs()

    def start(self):
        self._worker_pid = os.getpid()
        return super().start()

    def work(self):
        # rq forks the scheduler from its worker and never looks back: a worker SIGKILLed alone (or with the pool
        # it belongs to) would leave it holding the queues' scheduler locks. It stops with its worker instead.
        if getattr(self, '_worker_pid', None):
            limits.die_with_parent(self._worker_pid, signal.SIGTERM)
        return super().work()

    def acquire_locks(self, auto_start=False):
        locks = super().acquire_locks(auto_start=auto_start)
        self._shorten_locks()
        return locks

    def heartbeat(self):
        super().heartbeat()
        self._shorten_locks()

    def _shorten_locks(self) -> None:
        # rq takes and renews its locks for 61 s; renewed again at once, only by their owner, for SCHEDULER_LOCK_TTL.
        if not self._acquired_locks:
            return
        script = self.connection.register_script(ACQUIRE_OR_REFRESH_LOCK_SCRIPT)
        with self.connection.pipeline(transaction=False) as pipe:
            for name in sorted(self._acquired_locks):
                script(keys=[self.get_locking_key(name)], args=[self.name, SCHEDULER_LOCK_TTL], client=pipe)
            pipe.execute()


class JobsWorker(Worker):
    """An rq worker with soft and hard time limits in the work horse and quick recovery of abandoned jobs."""

    death_penalty_class = limits.TimeLimits
    # What ended the loop, other than an error: a stop request (SIGTERM, SIGINT) or the --max-jobs budget.
    stop_requested = False
    jobs_executed = 0
    # The lost connection that ended the loop, if one did.
    lost_redis: Exception | None = None
    # The settings it was built with; `rq worker --worker-class` builds it without, and it reads the environment.
    rqjobs_settings: Settings | None = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        limits.prepare()
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

    # Hosts whose workers this worker has seen on its Redis; `None` until it first looks.
    hosts_seen: set[str] | None = None
    burst = False

    def work(self, burst: bool = False, *args, **kwargs):
        self.burst = burst
        return super().work(burst, *args, **kwargs)

    def check_for_suspension(self, *args, **kwargs):
        with self._noting_lost_redis():
            return super().check_for_suspension(*args, **kwargs)

    def run_maintenance_tasks(self, *args, **kwargs):
        with self._noting_lost_redis():
            return super().run_maintenance_tasks(*args, **kwargs)

    def dequeue_job_and_maintain_ttl(self, *args, **kwargs):
        with self._noting_lost_redis():
            return super().dequeue_job_and_maintain_ttl(*args, **kwargs)

    def heartbeat(self, *args, **kwargs):
        with self._noting_lost_redis():
            return super().heartbeat(*args, **kwargs)

    @contextlib.contextmanager
    def _noting_lost_redis(self):
        # rq's loop ends on any error in these calls with a log line and a normal return: the error is kept so
        # that run_worker can tell a lost connection (survived through a failover) from a bug (exit 1).
        try:
            yield
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            self.lost_redis = exc
            raise

    def register_birth(self):
        super().register_birth()
        settings = self.rqjobs_settings or get_settings()
        self.connection.hset(
            self.key,
            mapping={
                ALLOW_LOCAL_FIELD: int(settings.allow_local_repositories),
                hosts.HOST_FIELD: settings.host_name,
                hosts.LOCAL_STORAGE_FIELD: hosts.local_storage(settings),
            },
        )
        self.check_hosts()

    def check_hosts(self) -> None:
        """Warn when workers of a host not seen before share this Redis while this worker's storage is its own."""
        settings = self.rqjobs_settings or get_settings()
        records = hosts.worker_records(self.connection)
        others = {record['host'] for record in records if record['host'] and record['host'] != settings.host_name}
        new = others - (self.hosts_seen or set())
        self.hosts_seen = (self.hosts_seen or set()) | others
        if new and hosts.local_storage(settings):
            self.log.warning(
                'Worker %s: workers of other hosts (%s) share this Redis, but this worker on host %s uses %s: '
                'it is not shared with them, so they see other data. Give every host the same PostgreSQL '
                '(DATABASE_URL=postgresql://user:password@db:5432/rqjobs) and a Redis over TCP.',
                self.name,
                ', '.join(sorted(new)),
                settings.host_name,
                hosts.local_storage(settings),
            )

    def request_stop(self, signum, frame):
        self.stop_requested = True
        self._stop_requested = True  # first, so that the stop holds even if what follows is cut short
        return super().request_stop(signum, frame)

    def execute_job(self, job, queue):
        self.jobs_executed += 1
        with self._noting_lost_redis():
            return super().execute_job(job, queue)

    def clean_registries(self):
        # rq's maintenance (Worker.clean_registries), with the project's clean-up of each queue's registries.
        # rq passes over an unreadable job that was abandoned, or left in the intermediate queue by a worker that
        # crashed on it, without a word and keeps it for good: such jobs are failed with their reason first.
        for queue in self.queues:
            stale = queue.started_job_registry.get_expired_job_ids() + queue.intermediate_queue.get_job_ids()
            if stale:
                queues.set_aside_unreadable(self.connection, queue.key, list(dict.fromkeys(stale)))
        for queue in self.queues:
            if queue.acquire_maintenance_lock():
                self.log.info('Worker %s: cleaning registries for queue: %s', self.name, queue.name)
                clean_registries(queue, self._exc_handlers)
                worker_registration.clean_worker_registry(queue)
                queue.intermediate_queue.cleanup(self, queue)
                queue.release_maintenance_lock()
        self.last_cleaned_at = now()
        self.check_hosts()
        settings = self.rqjobs_settings or get_settings()
        # Measured by a job on this host's queue, so that counting a large REPO_ROOT holds up no dequeue; a burst
        # worker (tests, one-off runs) leaves it to the long-running ones.
        if not self.burst and hosts.measure_due(self.connection, settings.host_name):
            queues.enqueue(
                'rqjobs.hosts.measure_clones',
                connection=self.connection,
                queue=queues.host_queue(settings.host_name),
                retry=None,
                settings=settings,
            )

    def handle_job_success(self, job, queue, started_job_registry, execution):
        if self.connection.zscore(started_job_registry.key, execution.composite_key) is None:
            # This run was taken for abandoned (its worker stalled past its heartbeat) and left a retry, queued or
            # scheduled, that would run the finished job a second time: withdrawn, before rq schedules any repeat.
            with self.connection.pipeline() as pipe:
                queue.remove(job, pipeline=pipe)
                queue.scheduled_job_registry.remove(job, pipeline=pipe)
                pipe.execute()
        return super().handle_job_success(job, queue, started_job_registry, execution)

    def main_work_horse(self, job, queue):
        limits.in_work_horse = True
        # rq gives the horse a process group of its own, which a kill of the worker's group misses: unwatched, it
        # would run on, and the job, once found abandoned, would run a second time alongside it.
        limits.die_with_parent(self.pid)
        return super().main_work_horse(job, queue)

    def handle_work_horse_killed(self, job, retpid, ret_val, rusage):
        super().handle_work_horse_killed(job, retpid, ret_val, rusage)
        if (
            job.timeout
            and job.timeout > 0
            and job.started_at
            and (now() - job.started_at).total_seconds() >= (job.timeout - 1)
        ):
            # Killed at its hard limit: as at the soft limit, another try would only run as long again.
            job.retries_left = 0
        # rq runs a failure callback when a job raises or is abandoned, not when its horse is killed (hard limit,
        # OOM killer); without this a warehouse whose last try was killed would stay Processing.
        with contextlib.suppress(Exception):  # execute_failure_callback logs what went wrong
            execute_failure_callback(
                job,
                self.death_penalty_class,
                WorkHorseKilled,
                WorkHorseKilled(f'work horse {retpid} ended with status {ret_val}'),
                None,
            )

    def _start_scheduler(
        self,
        burst: bool = False,
        logging_level: str | None = 'INFO',
        date_format: str = DEFAULT_LOGGING_DATE_FORMAT,
        log_format: str = DEFAULT_LOGGING_FORMAT,
    ):
        # rq's own, with the scheduler class above: rq names its class here and offers no setting for it.
        self.scheduler = JobsScheduler(
            self.queues,
            connection=self.connection,
            serializer=self.serializer,
            logging_level=logging_level if logging_level is not None else self.log.level,
            date_format=date_format,
            log_format=log_format,
        )
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

    def get_heartbeat_ttl(self, job, working_time: float = 0.0) -> int:
        if job.timeout and job.timeout > 0:
            return int(min(job.timeout - working_time, self.job_monitoring_interval)) + HEARTBEAT_GRACE
        return self.job_monitoring_interval + HEARTBEAT_GRACE


class JobsInProcessWorker(JobsWorker):
    """A worker that runs each job in its own process, as rq's `SimpleWorker` does: for short jobs of the project's.

    A fork per job costs a no-op job about two thirds of its time; without it the limits still hold. The soft limit
    raises `SoftTimeLimitExceeded` as in a work horse; the hard limit raises `HardTimeLimitExceeded`, which ends the
    job without a retry; a job still running `IN_PROCESS_GRACE` seconds after that (it swallowed the exception, or
    sits in C code) has its worker killed. While the job runs, a thread keeps its heartbeat as a forking worker's
    loop does, so that a worker killed mid-job leaves a job found abandoned, and retried, as soon as a forking
    worker's would be.
    """

    _heartbeats: _Heartbeats | None = None

    def kill_horse(self, sig=None):
        # There is no horse: rq's Worker would kill this process's own group (a pool's workers share it). The job
        # is stopped where it stands instead (`rqjobs job stop`); rq marks it Stopped.
        if self._heartbeats is None or not self._heartbeats.stop_job():
            self.log.warning('Worker %s: no job running to stop', self.name)

    def execute_job(self, job, queue):
        self.jobs_executed += 1
        if self._heartbeats is None:
            self._heartbeats = _Heartbeats(self)
            self._heartbeats.start()
        with self._noting_lost_redis():
            execution = self.prepare_execution(job)
            # Taken up by the job's own time limits (limits.TimeLimits), which start and stop the watch around it.
            limits.watch = functools.partial(self._heartbeats.watching, job, execution)
            try:
                self.perform_job(job, queue, execution)
            finally:
                limits.watch = None
                # A stop request that lands as the job ends can cut its limits' own clean-up short: none of them
                # outlives the job.
                self._heartbeats.release()
                limits.disarm()
            self.set_state(WorkerStatus.IDLE)


class _Heartbeats(threading.Thread):
    """The thread that keeps the heartbeat of the job an in-process worker runs, and kills it past its hard limit."""

    # One thread for the worker's life: starting one per job cost each job more than its fork saved.

    POLL = 0.5  # seconds between two looks at the running job

    def __init__(self, worker: JobsInProcessWorker):
        super().__init__(name=f'heartbeats of {worker.name}', daemon=True)
        self.worker = worker
        self.lock = threading.Lock()
        self.job = self.execution = None
        self.beat = 0.0
        self.deadline: float | None = None

    @contextlib.contextmanager
    def watching(self, job, execution):
        # Nothing is woken: the thread looks every POLL seconds, so a job costs two uncontended lock takes.
        with self.lock:
            self.job, self.execution = job, execution
            self.beat = time.monotonic() + self.worker.job_monitoring_interval
            self.deadline = (
                time.monotonic() + job.timeout + IN_PROCESS_GRACE if job.timeout and job.timeout > 0 else None
            )
        try:
            yield
        finally:
            # Taken only between two heartbeats: one sent after rq records the outcome would mark the job as running.
            with self.lock:
                self.job = self.execution = None

    def release(self) -> None:
        """Stop watching the job, if it is still watched."""
        with self.lock:
            self.job = self.execution = None

    def stop_job(self) -> bool:
        """Stop the job being watched, if there is one; return whether there was."""
        with self.lock:  # the job cannot end, and its limits' handler go, while it is asked to stop
            if self.job is None:
                return False
            limits.request_stop()
            return True

    def run(self) -> None:
        worker = self.worker
        while True:
            time.sleep(self.POLL)
            with self.lock:
                job, now_ = self.job, time.monotonic()
                if job is None:
                    continue
                if self.deadline is not None and now_ >= self.deadline:
                    self._kill(job)
                if now_ >= self.beat:
                    self.beat = now_ + worker.job_monitoring_interval
                    try:
                        worker.maintain_heartbeats(job, self.execution)
                    except redis.RedisError as exc:
                        worker.log.warning('Worker %s: heartbeat of job %s failed: %s', worker.name, job.id, exc)

    def _kill(self, job) -> None:
        worker = self.worker
        worker.log.error(
            'Worker %s: job %s still runs %s s past its hard limit of %s s: killing the worker',
            worker.name,
            job.id,
            IN_PROCESS_GRACE,
            job.timeout,
        )
        with contextlib.suppress(redis.RedisError):
            # As for a work horse killed at its hard limit: another try would only run as long again.
            worker.connection.hset(job.key, 'retries_left', 0)
        os.kill(os.getpid(), signal.SIGKILL)


def listened_queues(queue_names: Sequence[str], *, in_process: bool, settings: Settings) -> list[str]:
    """Return the queues a worker listens on when asked for `queue_names`, but for its host's queue."""
    if not in_process:
        return list(dict.fromkeys(queue_names or queues.queue_names(settings)))
    unsuitable = [queue for queue in queue_names if queue not in IN_PROCESS_QUEUES]
    if unsuitable:
        raise UnsuitableQueue(
            f'An --in-process worker runs only the short jobs of {", ".join(IN_PROCESS_QUEUES)}, not those of '
            f'{", ".join(unsuitable)}: run them with a forking worker (rqjobs worker {" ".join(unsuitable)}).'
        )
    return list(dict.fromkeys(queue_names or IN_PROCESS_QUEUES))


def build_worker(
    connection: redis.Redis,
    queue_names: Sequence[str] = (),
    *,
    name: str | None = None,
    in_process: bool = False,
    settings: Settings | None = None,
) -> Worker:
    """Return an rq worker on `queue_names` (all queues when empty), in their order of priority.

    With `in_process`, a `JobsInProcessWorker` on `IN_PROCESS_QUEUES` (all of them when empty), without the host's
    queue, whose chores may take long.
    """
    settings = settings or get_settings()
    names = listened_queues(queue_names, in_process=in_process, settings=settings)
    if not in_process:
        # Its host's queue first: host chores are short and concern this host's disk alone.
        names = list(dict.fromkeys([queues.host_queue(settings.host_name), *names]))
    worker_queues = [queues.get_queue(queue, connection, settings) for queue in names]
    # Import the job modules now, in the parent, so a broken JOBS_EXTRA_MODULES fails at start, not per job, and so
    # that every work horse finds them loaded. A bigger parent forks slower, but far less than an import costs: a
    # fork and exit took 3.0 ms from a parent with the worker's own imports (52 MB) and 3.4 ms with every job module
    # too (54 MB), where importing one in a horse took 14 ms (access_log), 54 ms (minimap) or 85 ms (warehouse).
    queues.registered_jobs(settings)
    # Read once here, the process's settings are at hand in every work horse (reading them took a horse 1 ms).
    get_settings()
    if queues.PAGES in names and settings.llm_enabled:
        from rqjobs.pages import model

        model.warm_up(settings)
    worker = (JobsInProcessWorker if in_process else JobsWorker)(
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
    worker.rqjobs_settings = settings
    return worker


def local_path_acceptance(connection: redis.Redis, queue_name: str) -> dict[str, bool | None]:
    """Return, per live worker on `queue_name`, whether it accepts local repositories (None: it does not say)."""
    queue = queues.JsonQueue(queue_name, connection=connection)
    keys = sorted(as_text(key) for key in worker_registration.get_keys(queue=queue))
    with connection.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.hmget(key, 'birth', ALLOW_LOCAL_FIELD)
        fields = pipe.execute()
    return {
        key.removeprefix(Worker.redis_worker_namespace_prefix): None if value is None else value == b'1'
        for key, (birth, value) in zip(keys, fields, strict=True)
        if birth is not None  # a registered worker whose hash has expired is gone
    }


def run_worker(
    connection: redis.Redis,
    queue_names: Sequence[str] = (),
    *,
    burst: bool = False,
    max_jobs: int | None = None,
    name: str | None = None,
    in_process: bool = False,
    logging_level: str = 'INFO',
    settings: Settings | None = None,
) -> bool:
    """Run a worker until it is stopped (or, with `burst`, until the queues are empty); True if it ran a job.

    Through Sentinel, a worker that loses the master waits for the promoted replica and works on; otherwise it exits.
    """
    settings = settings or get_settings()
    worked = False
    while True:
        worker = build_worker(connection, queue_names, name=name, in_process=in_process, settings=settings)
        # The worker also moves due scheduled jobs and retries onto their queues (rq's own scheduler, one per Redis).
        try:
            worked |= worker.work(burst=burst, max_jobs=max_jobs, with_scheduler=True, logging_level=logging_level)
        except redis.RedisError as exc:
            if not (
                isinstance(exc, redis.ConnectionError | redis.TimeoutError) and connections.follows_failover(settings)
            ):
                raise RedisUnavailable(
                    f'The worker lost Redis and stopped ({exc}); it is started again once Redis is back '
                    f'(run it under a process manager that restarts it).'
                ) from None
            worker.lost_redis = exc
        if burst or worker.stop_requested or (max_jobs is not None and worker.jobs_executed >= max_jobs):
            return worked
        if worker.lost_redis is None or not connections.follows_failover(settings):
            # rq logs the error (Redis lost while a job ran, say) and returns as if asked to stop: exit 1 instead,
            # so that a process manager restarts the worker rather than taking it for a clean exit.
            raise WorkerStopped(
                'The worker stopped after an error (logged above); start it again, or run it under a '
                'process manager that restarts it (systemd Restart=always, Kubernetes).'
            )
        name = worker.name
        try:
            survive_failover(worker, connection)
        except StopRequested:  # rq's signal handlers still stand: a SIGTERM while waiting ends the worker cleanly
            return worked
        if worker.stop_requested:
            return worked
        if max_jobs is not None:
            max_jobs -= worker.jobs_executed


def survive_failover(worker: JobsWorker, connection: redis.Redis) -> None:
    """Wait for the Sentinels' new master after `worker` lost the old one, and retire `worker` there."""
    logger.warning(
        'worker %s: lost the Redis master (%s); waiting for the Sentinels to name one', worker.name, worker.lost_redis
    )
    if worker.horse_pid:
        # A job whose bookkeeping failed still runs in its work horse: the next worker starts once it has ended,
        # so that the job never runs twice at once on this host.
        with contextlib.suppress(OSError):
            os.waitpid(worker.horse_pid, 0)
    if not connections.await_master(connection, stopped=lambda: worker.stop_requested):
        if worker.stop_requested:
            return
        raise RedisUnavailable(
            f'The worker lost the Redis master and no new one answered within {connections.FAILOVER_WAIT:g} s; '
            f'check the Sentinels (redis-cli -p 26379 sentinel masters), then start the worker again.'
        )
    # Its registration was replicated (or not) before the failover: marked dead, so that the name can be taken again.
    with contextlib.suppress(redis.RedisError, ValueError):
        worker.register_death()
    logger.warning('worker %s: working on with the new master', worker.name)


class JobsWorkerPool(WorkerPool):
    """rq's worker pool, whose workers are the project's own (`build_worker`) and die with the pool."""

    # rq's pool supervises well (starts N workers, replaces one that dies, passes SIGINT and SIGTERM on as a warm
    # stop, a second one as a cold stop), but its workers take the worker class alone: built with rq's intervals,
    # no result TTL, queues without JOB_TIMEOUT, no settings, and nothing to stop them when the pool is SIGKILLed.
    # Each worker here is built by `run_worker`, as `rqjobs worker` builds one, in a fork of the pool.

    def __init__(
        self,
        connection: redis.Redis,
        queue_names: Sequence[str] = (),
        *,
        processes: int,
        name: str | None = None,
        max_jobs: int | None = None,
        in_process: bool = False,
        settings: Settings | None = None,
    ):
        settings = settings or get_settings()
        names = [
            queues.get_queue(queue, connection, settings).name
            for queue in listened_queues(queue_names, in_process=in_process, settings=settings)
        ]
        super().__init__(
            names,
            connection,
            num_workers=processes,
            worker_class=JobsWorker,
            serializer=queues.JSONSerializer,
            job_class=queues.JsonJob,
            queue_class=queues.JsonQueue,
        )
        self.settings = settings
        self.max_jobs = max_jobs
        self.in_process = in_process
        # rq names pool workers by a random id, unique across hosts; --name becomes a prefix that tells them apart.
        self.prefix = f'{name}-' if name else ''
        # Loaded once here, before the forks, so a broken JOBS_EXTRA_MODULES stops the pool at start and every
        # worker inherits the modules (and the model client's imports) instead of loading them again.
        queues.registered_jobs(settings)
        if queues.PAGES in names and settings.llm_enabled:
            from rqjobs.pages import model

            model.warm_up(settings)

    def get_worker_process(self, name: str, burst: bool, _sleep: float = 0, logging_level: str = 'INFO'):
        return ForkProcess(
            target=_run_pool_worker,
            args=(os.getpid(), self._queue_names),
            kwargs={
                'name': f'{self.prefix}{name}',
                'burst': burst,
                'max_jobs': self.max_jobs,
                'in_process': self.in_process,
                'logging_level': logging_level,
                'settings': self.settings,
            },
            name=f'Worker {self.prefix}{name} (WorkerPool {self.name})',
        )


def _run_pool_worker(parent_pid: int, queue_names: Sequence[str], **options) -> None:
    """Run one worker of a pool, in a fork of it, until it stops; exit 1 on an error, for the pool to replace it."""
    from rqjobs import connections

    # A pool SIGKILLed (a process manager that lost patience) takes its workers with it, as a worker takes its
    # work horse: an orphaned worker would go on taking jobs that no one supervises.
    limits.die_with_parent(parent_pid)
    # A fork made after the pool installed its handlers would run the pool's on a signal (and stop its siblings)
    # until rq installs the worker's own; until then a signal stops this worker alone.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    settings = options.pop('settings')
    try:
        run_worker(connections.get_redis(settings, shared=False), queue_names, settings=settings, **options)
    except KeyboardInterrupt:
        pass  # Ctrl-C while the worker registered itself: a requested stop
    except RqjobsError as exc:
        logger.error('Worker %s: %s', options['name'], exc)
        sys.exit(1)


def run_pool(
    connection: redis.Redis,
    queue_names: Sequence[str] = (),
    *,
    processes: int,
    burst: bool = False,
    max_jobs: int | None = None,
    name: str | None = None,
    in_process: bool = False,
    logging_level: str = 'INFO',
    settings: Settings | None = None,
) -> None:
    """Run `processes` workers until the pool is stopped (or, with `burst`, until every worker has stopped)."""
    pool = JobsWorkerPool(
        connection,
        queue_names,
        processes=processes,
        name=name,
        max_jobs=max_jobs,
        in_process=in_process,
        settings=settings,
    )
    pool.start(burst=burst, logging_level=logging_level)
