import json
import pickle
import textwrap
import zlib
from base64 import b64decode
from datetime import datetime, timedelta

import pytest
from click.testing import CliRunner
from rq.job import JobStatus, Retry

import cli
from helpers import run_jobs_cli
from rqjobs import queues
from rqjobs import settings as settings_module
from rqjobs.exceptions import InvalidJobArguments, UnknownJob, UnknownQueue, UnreadableJob

pytestmark = pytest.mark.db


@pytest.fixture
def custom_jobs(env, tmp_path, monkeypatch):
    """A user's own job module on its own queue, as JOBS_EXTRA_MODULES adds it."""
    (tmp_path / 'custom_jobs.py').write_text(
        textwrap.dedent('''
        from rqjobs.exceptions import PermanentJobError

        JOBS = ('add', 'flaky', 'broken')


        def add(a, b=0):
            """Add two numbers."""
            return {'sum': a + b}


        def flaky():
            """Fail in a way a retry may fix."""
            raise ConnectionError('network down')


        def broken(item_id):
            """Fail in a way no retry can fix."""
            raise PermanentJobError(f'item {item_id} does not exist')


        def helper():
            return 'not a job'
    ''')
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    env.setenv('JOBS_EXTRA_MODULES', 'custom_jobs=custom')
    from rqjobs import settings

    settings.reset()
    yield
    import sys

    sys.modules.pop('custom_jobs', None)


def error_of(job):
    return job.latest_result().exc_string


def raw_job(redis_conn, job_id):
    return redis_conn.hgetall(f'rq:job:{job_id}')


def test_job_payload_meta_and_result_are_json(redis_conn, database, burst_worker):
    job = queues.enqueue('ping', meta={'requested_by': 'tester ✓'}, connection=redis_conn)
    raw = raw_job(redis_conn, job.id)
    payload = zlib.decompress(raw[b'data'])
    assert not payload.startswith(b'\x80'), 'pickle protocol header'
    assert json.loads(payload) == ['rqjobs.system.ping', None, [], {}]
    assert json.loads(raw[b'meta']) == {'requested_by': 'tester ✓'}
    assert job.origin == 'default'

    burst_worker('default')
    assert job.get_status() == JobStatus.FINISHED
    entries = redis_conn.xrange(f'rq:results:{job.id}')
    assert entries
    value = json.loads(b64decode(entries[-1][1][b'return_value']))
    assert value['pong'] is True and value['schema_ready'] is True


def test_jobs_released_by_a_dependency_are_json(custom_jobs, redis_conn, burst_worker):
    first = queues.enqueue('add', [1, 1], connection=redis_conn)
    second = queues.enqueue('add', [2, 2], depends_on=first, connection=redis_conn)
    assert second.get_status() == JobStatus.DEFERRED
    burst_worker('custom')
    assert second.get_status() == JobStatus.FINISHED
    assert json.loads(zlib.decompress(raw_job(redis_conn, second.id)[b'data']))[0] == 'custom_jobs.add'
    assert second.return_value() == {'sum': 4}


def test_forged_function_name_runs_nothing(redis_conn, burst_worker, tmp_path):
    marker = tmp_path / 'pwned'
    queue = queues.get_queue('default', redis_conn)
    forged = queues.JsonJob.create('os.system', args=[f'touch {marker}'], connection=redis_conn, origin='default')
    queue.enqueue_job(forged)

    burst_worker('default')
    assert not marker.exists()
    forged.refresh()
    assert forged.get_status() == JobStatus.FAILED
    assert "refused to run 'os.system', which is not a registered job" in error_of(forged)


def test_forged_pickle_payload_is_never_unpickled(redis_conn, burst_worker, tmp_path):
    marker = tmp_path / 'pwned'

    class Exploit:
        def __reduce__(self):
            import os

            return os.system, (f'touch {marker}',)

    job = queues.enqueue('ping', connection=redis_conn)
    redis_conn.hset(f'rq:job:{job.id}', 'data', zlib.compress(pickle.dumps(('rqjobs.system.ping', Exploit(), [], {}))))

    burst_worker('default')
    assert not marker.exists()
    assert job.get_status() == JobStatus.FAILED


def test_forged_callback_runs_nothing(redis_conn, database, burst_worker, tmp_path):
    marker = tmp_path / 'pwned'
    job = queues.enqueue('ping', connection=redis_conn)
    redis_conn.hset(f'rq:job:{job.id}', 'success_callback_name', 'os.system')
    redis_conn.hset(f'rq:job:{job.id}', 'failure_callback_name', 'os.system')

    burst_worker('default')
    assert not marker.exists()
    assert job.get_status() == JobStatus.FAILED
    assert "refused to run 'os.system'" in error_of(job)


def test_unknown_job_lists_the_known_ones():
    with pytest.raises(UnknownJob, match=r"Unknown job 'nope'\. Known jobs: .*create_schema.*ping"):
        queues.find_job('nope')
    assert queues.find_job('system.ping').path == 'rqjobs.system.ping'
    assert queues.find_job('rqjobs.migration.create_schema').queue == 'migration'


@pytest.mark.parametrize(
    'args, kwargs, message',
    [
        ([1], {}, 'too many positional arguments; expected ping()'),
        ([], {'x': 1}, "unexpected keyword argument 'x'; expected ping()"),
    ],
)
def test_wrong_arguments_show_the_signature(redis_conn, args, kwargs, message):
    with pytest.raises(InvalidJobArguments, match=message):
        queues.enqueue('ping', args, kwargs, connection=redis_conn)
    assert redis_conn.llen('rq:queue:default') == 0


def test_arguments_must_be_json(custom_jobs, redis_conn):
    for bad in (datetime(2026, 1, 1), float('nan'), {1, 2}):
        with pytest.raises(InvalidJobArguments, match='must be JSON values'):
            queues.enqueue('add', [bad], connection=redis_conn)
    assert redis_conn.llen('rq:queue:custom') == 0


def test_unknown_queue_and_bad_job_id_are_refused(redis_conn):
    with pytest.raises(UnknownQueue, match="Unknown queue 'nope'. Known queues: default, access_log"):
        queues.enqueue('ping', queue='nope', connection=redis_conn)
    with pytest.raises(InvalidJobArguments, match='Job id'):
        queues.enqueue('ping', job_id='a b', connection=redis_conn)
    for depends_on in ('<b>x</b>', ['ok-id', 'a b'], [42]):
        with pytest.raises(InvalidJobArguments, match='Job id'):
            queues.enqueue('ping', depends_on=depends_on, connection=redis_conn)
    assert redis_conn.keys('rq:job:*') == []


def test_defaults_are_applied(redis_conn, env):
    env.setenv('JOB_TIMEOUT', '120')
    env.setenv('RESULT_TTL', '77')
    from rqjobs import settings

    settings.reset()
    job = queues.enqueue('create_schema', connection=redis_conn)
    assert (job.timeout, job.result_ttl, job.origin) == (120, 77, 'migration')
    assert (job.retries_left, job.retry_intervals) == (queues.RETRY_MAX, list(queues.RETRY_INTERVALS))
    assert queues.enqueue('ping', retry=None, connection=redis_conn).retries_left is None


def test_scheduled_enqueue(redis_conn):
    job = queues.enqueue('ping', delay=timedelta(minutes=5), connection=redis_conn)
    assert job.get_status() == JobStatus.SCHEDULED
    assert job.id in queues.get_queue('default', redis_conn).scheduled_job_registry.get_job_ids()
    with pytest.raises(InvalidJobArguments, match='either'):
        queues.enqueue('ping', delay=timedelta(1), at=datetime(2030, 1, 1), connection=redis_conn)


def test_a_users_own_module_joins_the_registry_and_its_queue(custom_jobs, redis_conn, burst_worker):
    assert 'custom' in queues.queue_names()
    job = queues.enqueue('add', [2], {'b': 3}, connection=redis_conn)
    assert job.origin == 'custom'
    with pytest.raises(UnknownJob):
        queues.find_job('helper')  # defined in the module but not listed in JOBS
    burst_worker('custom')
    assert job.return_value() == {'sum': 5}


def test_permanent_errors_fail_at_once_transient_ones_are_retried(custom_jobs, redis_conn, burst_worker):
    broken = queues.enqueue('broken', ['w1'], connection=redis_conn)
    flaky = queues.enqueue('flaky', connection=redis_conn)
    burst_worker('custom')
    broken.refresh()
    flaky.refresh()
    assert broken.get_status() == JobStatus.FAILED
    assert 'item w1 does not exist' in error_of(broken)
    assert flaky.get_status() == JobStatus.SCHEDULED
    assert flaky.retries_left == queues.RETRY_MAX - 1


def test_a_forged_job_with_retries_fails_once_with_no_retry_left(redis_conn, burst_worker, tmp_path):
    marker = tmp_path / 'pwned'
    queue = queues.get_queue('default', redis_conn)
    forged = queues.JsonJob.create(
        'os.system', args=[f'touch {marker}'], connection=redis_conn, origin='default', retry=Retry(max=3, interval=60)
    )
    queue.enqueue_job(forged)

    burst_worker('default')
    forged.refresh()
    assert not marker.exists()
    assert forged.get_status() == JobStatus.FAILED  # not scheduled again, nor back on its queue
    assert forged.retries_left == 0
    assert queue.count == 0
    assert forged.id not in queue.scheduled_job_registry.get_job_ids()
    assert "refused to run 'os.system'" in error_of(forged)


# ---- Jobs whose stored fields cannot be read ----

FORGED_FIELDS = {
    'exc_info not UTF-8': {'exc_info': zlib.compress(b'\xff\xfe\xfd not text')},
    'payload not JSON': {'data': zlib.compress(b'\x80\x04garbage')},
    'payload not UTF-8': {'data': b'\xff\xfe\xfd'},
    'created_at not a date': {'created_at': b'yesterday'},
    'origin not UTF-8': {'origin': b'\xff'},
    'no payload': {'data': None},
}


def forge(redis_conn, fields):
    """Enqueue a ping and overwrite fields of its hash in Redis, as a corrupted or forged job."""
    job = queues.enqueue('ping', connection=redis_conn)
    for name, value in fields.items():
        if value is None:
            redis_conn.hdel(f'rq:job:{job.id}', name)
        else:
            redis_conn.hset(f'rq:job:{job.id}', name, value)
    return job.id


@pytest.mark.parametrize('fields', FORGED_FIELDS.values(), ids=FORGED_FIELDS.keys())
def test_a_worker_process_fails_an_unreadable_job_and_goes_on(redis_conn, database, fields):
    forged = forge(redis_conn, fields)
    good = queues.enqueue('ping', connection=redis_conn)

    # Twice: the first worker must not leave the job behind for the next one to trip over.
    for _ in range(2):
        run = run_jobs_cli('worker', '--burst', 'default')
        assert run.returncode == 0, run.stderr
        assert 'Traceback' not in run.stderr
    assert good.get_status() == JobStatus.FINISHED
    assert redis_conn.hget(f'rq:job:{forged}', 'status') == b'failed'
    assert forged in queues.get_queue('default', redis_conn).failed_job_registry.get_job_ids()
    assert not redis_conn.lrange(queues.get_queue('default', redis_conn).intermediate_queue_key, 0, -1)
    assert redis_conn.ttl(f'rq:job:{forged}') > 0
    reason = queues.unreadable_reason(redis_conn, forged)
    assert reason.startswith(f'Job {forged} cannot be read from Redis (forged or corrupted: ')


def test_a_worker_on_several_queues_sets_an_unreadable_job_aside(redis_conn, database, burst_worker):
    forged = forge(redis_conn, FORGED_FIELDS['exc_info not UTF-8'])
    good = queues.enqueue('ping', connection=redis_conn)
    burst_worker('default', 'statistics')
    assert good.get_status() == JobStatus.FINISHED
    assert forged in queues.get_queue('default', redis_conn).failed_job_registry.get_job_ids()


def test_listings_pass_over_unreadable_jobs(redis_conn, database):
    readable = queues.enqueue('ping', connection=redis_conn)
    forged = forge(redis_conn, FORGED_FIELDS['payload not JSON'])
    jobs = queues.JsonJob.fetch_many([forged, readable.id, 'gone'], connection=redis_conn)
    assert jobs[0] is None and jobs[1].id == readable.id and jobs[2] is None
    with pytest.raises(UnreadableJob, match=f'`rqjobs job delete {forged}` removes it'):
        queues.JsonJob.fetch(forged, connection=redis_conn)


# ---- Sizes of what is enqueued ----


def test_arguments_over_the_size_limit_are_refused(redis_conn, custom_jobs, env):
    with pytest.raises(InvalidJobArguments, match=r'take 70\d{3} bytes as JSON, over JOB_ARGS_MAX_SIZE \(65536\)'):
        queues.enqueue('add', ['x' * 70_000], connection=redis_conn)
    refused = CliRunner().invoke(cli.main, ['enqueue', 'add', 'x' * 70_000])
    assert refused.exit_code == 2 and 'over JOB_ARGS_MAX_SIZE (65536); pass an id' in refused.stderr
    assert not redis_conn.keys('rq:job:*')
    # Counted in UTF-8 bytes, kwargs too; the limit is a setting.
    env.setenv('JOB_ARGS_MAX_SIZE', '2048')
    settings_module.reset()
    with pytest.raises(InvalidJobArguments, match=r'over JOB_ARGS_MAX_SIZE \(2048\)'):
        queues.enqueue('add', [1], {'b': 'é' * 1100}, connection=redis_conn)
    assert queues.enqueue('add', [1], {'b': 'é' * 900}, connection=redis_conn).get_status() == JobStatus.QUEUED


def test_a_full_redis_refuses_an_enqueue_in_one_line(full_redis):
    keys = full_redis.dbsize()
    result = run_jobs_cli('enqueue', 'ping')
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines()[-1].startswith(
        'Error: Redis is full (maxmemory reached, no eviction): the job ping was not stored.'
    )
    assert 'Traceback' not in result.stderr
    assert full_redis.dbsize() == keys


@pytest.mark.parametrize('args', [['suspend'], ['schedule', 'register']])
def test_other_commands_against_a_full_redis_are_one_line(full_redis, args):
    result = run_jobs_cli(*args)
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines()[-1].startswith(
        'Error: Redis is full (maxmemory reached, no eviction): the command could not write to it.'
    )
    assert 'Traceback' not in result.stderr
