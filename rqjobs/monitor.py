"""Read-only views of queues and workers, for `jobs status` and scripts."""

from __future__ import annotations

from typing import Any

import redis
from rq import Worker

from rqjobs import queues
from rqjobs.settings import Settings

REGISTRIES = ('started', 'finished', 'failed', 'scheduled', 'deferred')


def queue_counts(connection: redis.Redis, settings: Settings | None = None) -> list[dict[str, Any]]:
    """Return, per queue, how many jobs are queued and in each rq registry (one Redis round trip)."""
    all_queues = queues.all_queues(connection, settings)
    with connection.pipeline(transaction=False) as pipe:
        for queue in all_queues:
            pipe.llen(queue.key)
            for registry in REGISTRIES:
                pipe.zcard(getattr(queue, f'{registry}_job_registry').key)
        replies = pipe.execute()
    width = 1 + len(REGISTRIES)
    rows = []
    for index, queue in enumerate(all_queues):
        counts = replies[index * width:(index + 1) * width]
        rows.append({'queue': queue.name, 'queued': counts[0], **dict(zip(REGISTRIES, counts[1:]))})
    return rows


def worker_states(connection: redis.Redis) -> list[dict[str, Any]]:
    """Return every live worker with its state, queues, current job and last heartbeat."""
    workers = Worker.all(connection=connection, job_class=queues.JsonJob, queue_class=queues.JsonQueue,
                         serializer=queues.JSONSerializer)
    rows = []
    for worker in sorted(workers, key=lambda w: w.name):
        rows.append({
            'name': worker.name,
            'state': worker.get_state(),
            'queues': worker.queue_names(),
            'current_job': worker.get_current_job_id(),
            'last_heartbeat': worker.last_heartbeat.isoformat(timespec='seconds') if worker.last_heartbeat else None,
            'successful_jobs': worker.successful_job_count,
            'failed_jobs': worker.failed_job_count,
            'pid': worker.pid,
            'hostname': worker.hostname,
        })
    return rows
