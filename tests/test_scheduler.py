import json
import zlib
from datetime import datetime, timedelta, timezone

import pytest
from rq.job import JobStatus

import scheduler
from rqjobs import queues


@pytest.mark.db
def test_jobs_created_by_rq_scheduler_are_json_jobs(redis_conn, database, burst_worker):
    rq_scheduler = scheduler.build_scheduler(redis_conn)
    job = rq_scheduler.schedule(datetime.now(timezone.utc) - timedelta(seconds=1), 'rqjobs.system.ping', interval=60,
                                queue_name='default')
    assert isinstance(job, queues.JsonJob)
    raw = redis_conn.hgetall(f'rq:job:{job.id}')
    assert json.loads(zlib.decompress(raw[b'data'])) == ['rqjobs.system.ping', None, [], {}]
    assert json.loads(raw[b'meta'])['interval'] == 60

    scheduler.run(redis_conn, burst=True)
    assert redis_conn.lrange('rq:queue:default', 0, -1) == [job.id.encode()]
    burst_worker('default')
    assert job.get_status() == JobStatus.FINISHED
    # The interval entry went back into the schedule for its next run.
    assert job in rq_scheduler


def test_a_forged_scheduled_job_runs_nothing(redis_conn, burst_worker, tmp_path):
    marker = tmp_path / 'pwned'
    rq_scheduler = scheduler.build_scheduler(redis_conn)
    job = rq_scheduler.schedule(datetime.now(timezone.utc) - timedelta(seconds=1), 'os.system', args=[f'touch {marker}'],
                                queue_name='default')
    scheduler.run(redis_conn, burst=True)
    burst_worker('default')
    assert not marker.exists()
    assert job.get_status() == JobStatus.FAILED
