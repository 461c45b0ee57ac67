import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timedelta

import peewee
import pytest
from click.testing import CliRunner

import cli
from helpers import ROOT, run_worker
from models import AccessRecord
from rqjobs import access_log, clock, queues, settings
from rqjobs.access_log import BUFFER_KEY, DEAD_KEY, DROPPED_KEY, LOCK_KEY, PROCESSING_KEY
from rqjobs.contrib import access_log as producer
from rqjobs.exceptions import DatabaseUnavailable, PermanentJobError

NOW = datetime(2025, 6, 1, 12, 0, 0)


def entry(i=0, **fields):
    return {
        'resource_type': 'Repository',
        'resource_id': f'owner/repo{i}',
        'user_id': f'{i:08d}-aaaa-4bbb-8ccc-0123456789ab',
        'ip_address': '203.0.113.7',
        'user_agent': 'Mozilla/5.0 (X11; Linux x86_64)',
        'path': f'/owner/repo{i}/docs',
        'method': 'GET',
        'status_code': 200,
        'response_time': 12,
        **fields,
    }


def raw_entry(**fields):
    """A JSON text as a producer writes it, with fields replaced (None removes one)."""
    data = {
        'event_id': os.urandom(16).hex(),
        'resource_type': 'Page',
        'resource_id': '/about',
        'user_id': None,
        'ip_address': '198.51.100.1',
        'user_agent': 'curl/8',
        'path': '/about',
        'method': 'GET',
        'status_code': 200,
        'response_time': 5,
        'access_time': '2025-01-01T00:00:00.000000',
    }
    data.update(fields)
    return json.dumps(
        {key: value for key, value in data.items() if value is not None}, ensure_ascii=False, separators=(',', ':')
    )


def stored_count():
    return AccessRecord.select().count()


def drain_all():
    results = []
    while True:
        results.append(access_log.process_access_log())
        if results[-1]['remaining'] == 0:
            return results


@pytest.fixture
def small(env):
    """Small caps, so a test exercises batches, budgets and the buffer cap with a few entries."""

    def apply(**values):
        for name, value in values.items():
            env.setenv(name, str(value))
        settings.reset()

    return apply


# ---- The invariant: sent = stored + dead-lettered + drops ----

HOSTILE_RAW = [
    (b'not json at all', 'not JSON'),
    (b'[1, 2, 3]', 'not a JSON object'),
    (b'"a string"', 'not a JSON object'),
    (b'\xff\xfe{"resource_type": "Page"}', 'not UTF-8'),
    (b'{"resource_type": "Page"} trailing', 'not JSON'),
    (b'[' * 30_000 + b']' * 30_000, 'not JSON'),
    (b'{"a": "' + b'x' * 70_000 + b'"}', 'larger than'),
    (raw_entry(response_time=float('nan')).encode(), 'response_time is not a finite number'),
    (raw_entry().replace('"response_time":5', '"response_time":1e999').encode(), 'not a finite number'),
    (raw_entry().replace('"status_code":200', '"status_code":Infinity').encode(), 'status_code'),
    (raw_entry(path='/a\x00b').encode(), 'NUL'),
    (raw_entry(user_agent='x' * 600).encode(), 'user_agent is longer than 512'),
    (raw_entry(resource_id='r' * 192).encode(), 'resource_id is longer than 191'),
    (raw_entry(status_code=-200).encode(), 'status_code'),
    (raw_entry(status_code=42).encode(), 'status_code'),
    (raw_entry(status_code=True).encode(), 'status_code'),
    (raw_entry(status_code='200').encode(), 'status_code'),
    (raw_entry(response_time=-1).encode(), 'response_time -1 is outside'),
    (raw_entry(response_time=4_000_000).encode(), 'response_time 4000000 is outside'),
    (raw_entry(resource_id=42).encode(), 'resource_id must be a string'),
    (raw_entry(resource_type=None).encode(), 'resource_type is missing'),
    (raw_entry(event_id=None).encode(), 'event_id is missing'),
    (raw_entry(event_id='no spaces allowed').encode(), 'event_id'),
    (raw_entry(access_time='yesterday').encode(), 'not an ISO 8601 date'),
    (raw_entry(access_time='9999-12-31T00:00:00').encode(), 'out of range'),
    (raw_entry(access_time=1e300).encode(), 'out of range'),
    (raw_entry(access_time=[2025]).encode(), 'access_time must be'),
    (raw_entry(ip_address='999.1.1.1').encode(), 'not an IP address'),
    (raw_entry().replace('"path":"/about"', '"path":"/\\ud800"').encode(), 'lone surrogate'),
]


@pytest.mark.db
def test_sent_equals_stored_plus_dead_lettered_plus_drops(redis_conn, database, small):
    small(ACCESS_LOG_BUFFER_MAX=40, ACCESS_LOG_BATCH_SIZE=16)
    drops_before = producer.local_drop_count()
    sent = 0
    emoji = entry(100, path='/owner/repo100/文档/😀', user_agent='Agent ✓ 🚀', resource_id='owner/répo-😀')
    valid = [entry(i) for i in range(20)] + [
        emoji,
        entry(101, extra_key='ignored', access_time='2025-01-01T10:00:00Z'),
        entry(102, access_time=1735725600),
        entry(103, status_code=None),
    ]
    for item in valid:
        assert producer.enqueue_access_log(item, connection=redis_conn)
    sent += len(valid)
    refused = [
        entry(0, resource_id=None),
        entry(0, response_time=float('nan')),
        entry(0, status_code=-1),
        entry(0, resource_id='x' * 500),
        entry(0, path='/a\x00b'),
        entry(0, status_code='200'),
        entry(0, access_time='not a date'),
        entry(0, user_id=12),
        'not a mapping',
        None,
        entry(0, event_id='bad id!'),
    ]
    for item in refused:
        assert producer.enqueue_access_log(item, connection=redis_conn) is False
    sent += len(refused)
    # Past the cap of 40 (24 valid entries are in): a batch of 30 gets 16 in, the rest is dropped and counted.
    assert producer.enqueue_access_logs([entry(200 + i) for i in range(30)], connection=redis_conn) == 16
    sent += 30
    redis_conn.rpush(BUFFER_KEY, *[raw for raw, _ in HOSTILE_RAW])
    sent += len(HOSTILE_RAW)

    results = drain_all()
    stored = sum(r['stored'] for r in results)
    dead = redis_conn.llen(DEAD_KEY)
    drops = producer.local_drop_count() - drops_before
    assert stored == stored_count() == 40
    assert dead == sum(r['dead_lettered'] for r in results) == len(HOSTILE_RAW)
    assert drops == len(refused) + 14
    assert sent == stored + dead + drops
    dropped = redis_conn.hgetall(DROPPED_KEY)
    assert int(dropped[b'full']) + int(dropped[b'invalid']) == drops
    assert redis_conn.llen(BUFFER_KEY) == redis_conn.llen(PROCESSING_KEY) == 0

    letters = [json.loads(letter) for letter in redis_conn.lrange(DEAD_KEY, 0, -1)]
    for letter, (raw, reason) in zip(letters, HOSTILE_RAW, strict=True):
        assert reason in letter['reason'], (raw[:60], letter['reason'])
        assert letter['entry'].encode('utf-8', 'surrogateescape') == raw[: access_log.RAW_MAX]
        assert letter['at'].endswith('Z')

    row = AccessRecord.get(AccessRecord.resource_id == 'owner/répo-😀')
    assert (row.path, row.user_agent) == ('/owner/repo100/文档/😀', 'Agent ✓ 🚀')
    assert AccessRecord.get(AccessRecord.resource_id == 'owner/repo101').access_time == datetime(2025, 1, 1, 10)
    assert AccessRecord.get(AccessRecord.resource_id == 'owner/repo102').access_time == datetime(2025, 1, 1, 10)
    assert AccessRecord.get(AccessRecord.resource_id == 'owner/repo103').status_code == 0


def test_producer_normalises_entries(redis_conn):
    redis_conn.script_flush()  # the scripts are loaded again on first use
    at = datetime(2025, 3, 1, 8, 30)
    assert producer.enqueue_access_log(
        entry(
            1,
            ip_address='[2001:DB8::1]:443',
            user_agent='u' * 700,
            path='/p' * 2000,
            access_time=at,
            event_id='given-id.1',
        ),
        connection=redis_conn,
    )
    assert producer.enqueue_access_log(entry(2, ip_address='not an ip'), connection=redis_conn)
    first, second = (json.loads(item) for item in redis_conn.lrange(BUFFER_KEY, 0, -1))
    assert first['event_id'] == 'given-id.1'
    assert first['ip_address'] == '2001:db8::1'
    assert len(first['user_agent']) == producer.USER_AGENT_MAX and len(first['path']) == producer.PATH_MAX
    assert first['access_time'] == '2025-03-01T08:30:00.000000'
    assert second['ip_address'] == ''
    assert len(second['event_id']) == 32 and second['event_id'][12] == '4'
    assert producer.enqueue_access_logs([], connection=redis_conn) == 0


# ---- Crashes, replays, locks ----

CHILD = """
import sys, time
from pathlib import Path
from rqjobs import access_log

marker, point = Path(sys.argv[1]), sys.argv[2]
calls = 0


def stall():
    global calls
    calls += 1
    if calls == 3:
        marker.write_text(point)
        time.sleep(120)


if point == 'after-commit':
    run = access_log._run

    def patched(connection, name, keys, args):
        if name == 'acknowledge':
            stall()
        return run(connection, name, keys, args)

    access_log._run = patched
else:
    insert = access_log._insert

    def patched(db, rows):
        count = insert(db, rows)
        stall()
        return count

    access_log._insert = patched
access_log.process_access_log()
"""


@pytest.mark.db
@pytest.mark.slow
@pytest.mark.parametrize('point', ['before-commit', 'after-commit'])
def test_a_drainer_killed_mid_run_loses_nothing_and_stores_nothing_twice(redis_conn, database, small, tmp_path, point):
    small(ACCESS_LOG_BATCH_SIZE=100)
    assert producer.enqueue_access_logs([entry(i) for i in range(1000)], connection=redis_conn) == 1000
    marker = tmp_path / 'stalled'
    child = subprocess.Popen(
        [sys.executable, '-c', CHILD, str(marker), point],
        cwd=ROOT,
        env=os.environ.copy(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert child.poll() is None, child.stdout.read().decode()
            assert time.monotonic() < deadline, 'the drainer never reached its third batch'
            time.sleep(0.02)
        # Stalled in its third batch: two batches committed, the third in the processing list.
        assert redis_conn.llen(PROCESSING_KEY) == 100
        assert stored_count() == (300 if point == 'after-commit' else 200)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        child.stdout.close()

    # The killed run's lock holds until it expires (within a minute); meanwhile other runs stand aside.
    assert 0 < redis_conn.pttl(LOCK_KEY) <= access_log.LOCK_MS
    assert access_log.process_access_log()['status'] == 'busy'
    redis_conn.delete(LOCK_KEY)  # what the expiry does, without the wait

    result = access_log.process_access_log()
    assert result['status'] == 'done' and result['remaining'] == 0
    assert result['duplicates'] == (100 if point == 'after-commit' else 0)
    assert stored_count() == 1000
    assert AccessRecord.select(peewee.fn.COUNT(AccessRecord.event_id.distinct())).scalar() == 1000
    assert redis_conn.llen(PROCESSING_KEY) == redis_conn.llen(BUFFER_KEY) == 0


@pytest.mark.db
def test_replayed_entries_are_stored_once(redis_conn, database):
    producer.enqueue_access_logs([entry(i) for i in range(50)], connection=redis_conn)
    raws = redis_conn.lrange(BUFFER_KEY, 0, -1)
    assert access_log.process_access_log()['stored'] == 50
    redis_conn.rpush(BUFFER_KEY, *raws)
    redis_conn.rpush(BUFFER_KEY, raws[0], raws[0])
    redis_conn.script_flush()  # the drain loads its scripts again
    result = access_log.process_access_log()
    assert (result['stored'], result['duplicates'], result['dead_lettered']) == (0, 52, 0)
    assert stored_count() == 50


@pytest.mark.db
def test_one_drain_at_a_time(redis_conn, database):
    producer.enqueue_access_log(entry(), connection=redis_conn)
    redis_conn.set(LOCK_KEY, 'another-drainer', px=access_log.LOCK_MS)
    result = access_log.process_access_log()
    assert result['status'] == 'busy' and result['stored'] == 0 and result['remaining'] == 1
    assert redis_conn.get(LOCK_KEY) == b'another-drainer'
    redis_conn.delete(LOCK_KEY)
    assert access_log.process_access_log()['stored'] == 1
    assert not redis_conn.exists(LOCK_KEY)


@pytest.mark.db
def test_work_per_run_is_bounded_and_the_next_run_continues(redis_conn, database, small):
    small(ACCESS_LOG_MAX_PER_RUN=25, ACCESS_LOG_BATCH_SIZE=10)
    producer.enqueue_access_logs([entry(i) for i in range(60)], connection=redis_conn)
    first = access_log.process_access_log()
    assert (first['stored'], first['batches'], first['remaining']) == (25, 3, 35)
    second = access_log.process_access_log()
    assert (second['stored'], second['remaining']) == (25, 10)
    third = access_log.process_access_log()
    assert (third['stored'], third['remaining']) == (10, 0)
    assert set(third) == {
        'status',
        'stored',
        'duplicates',
        'dead_lettered',
        'batches',
        'remaining',
        'elapsed',
        'continued',
    }
    # Outside a worker there is no job to continue: the caller (here, the test) runs the next one.
    assert first['continued'] is None
    assert stored_count() == 60


# ---- Going on: a run that leaves a backlog continues in a next run ----


def results_of(redis_conn):
    """The results of every drain run that finished, by job id."""
    ids = queues.get_queue('access_log', redis_conn).finished_job_registry.get_job_ids()
    return {job_id: queues.JsonJob.fetch(job_id, connection=redis_conn).return_value() for job_id in ids}


@pytest.mark.db
def test_a_backlog_beyond_one_budget_is_drained_by_continuations_without_a_plan_tick(redis_conn, database, small):
    small(ACCESS_LOG_MAX_PER_RUN=25, ACCESS_LOG_BATCH_SIZE=10)
    producer.enqueue_access_logs([entry(i) for i in range(60)], connection=redis_conn)
    queues.enqueue('process_access_log', job_id='process-access-logs-100', retry=None, connection=redis_conn)
    assert run_worker(redis_conn, 'access_log')
    assert stored_count() == 60 and redis_conn.llen(BUFFER_KEY) == 0
    results = results_of(redis_conn)
    assert {job_id: (r['stored'], r['continued']) for job_id, r in results.items()} == {
        'process-access-logs-100': (25, 'process-access-logs-100-c1'),
        'process-access-logs-100-c1': (25, 'process-access-logs-100-c2'),
        'process-access-logs-100-c2': (10, None),
    }
    # Each run names the next in its hash: the plan finds the chain's last run from the first.
    assert queues.latest_run(redis_conn, 'process-access-logs-100') == ('process-access-logs-100-c2', False)
    last = queues.JsonJob.fetch('process-access-logs-100-c2', connection=redis_conn)
    assert (last.meta['chain'], last.meta['link'], last.retries_left) == ('process-access-logs-100', 2, None)


@pytest.mark.db
def test_a_run_that_empties_the_buffer_ends_at_once_and_enqueues_nothing(redis_conn, database, small):
    small(ACCESS_LOG_MAX_PER_RUN=25, ACCESS_LOG_BATCH_SIZE=10)
    producer.enqueue_access_logs([entry(i) for i in range(25)], connection=redis_conn)
    job = queues.enqueue('process_access_log', retry=None, connection=redis_conn)
    started = time.monotonic()
    assert run_worker(redis_conn, 'access_log', max_jobs=1)
    assert time.monotonic() - started < 10
    # The budget was spent to the last entry, and nothing was left: no next run.
    assert job.return_value()['continued'] is None and job.return_value()['remaining'] == 0
    assert queues.get_queue('access_log', redis_conn).count == 0
    assert redis_conn.hget(job.key, queues.CONTINUED_FIELD) is None


@pytest.mark.db
def test_with_continuing_off_a_run_leaves_the_backlog_to_the_plan(redis_conn, database, small):
    small(ACCESS_LOG_MAX_PER_RUN=25, ACCESS_LOG_BATCH_SIZE=10, ACCESS_LOG_CONTINUE='false', ACCESS_LOG_BUFFER_MAX=100)
    producer.enqueue_access_logs([entry(i) for i in range(60)], connection=redis_conn)
    job = queues.enqueue('process_access_log', retry=None, connection=redis_conn)
    assert run_worker(redis_conn, 'access_log')
    assert (job.return_value()['stored'], job.return_value()['continued']) == (25, None)
    assert stored_count() == 25 and redis_conn.llen(BUFFER_KEY) == 35
    assert not access_log.backlogged(redis_conn)  # a third full, past EARLY_FILL, but the plan keeps its times


@pytest.mark.db
def test_a_replayed_run_enqueues_its_continuation_once(redis_conn, database, small):
    small(ACCESS_LOG_MAX_PER_RUN=10, ACCESS_LOG_BATCH_SIZE=10)
    producer.enqueue_access_logs([entry(i) for i in range(30)], connection=redis_conn)
    job = queues.enqueue('process_access_log', job_id='drain-1', retry=None, connection=redis_conn)
    assert run_worker(redis_conn, 'access_log', max_jobs=1)
    assert job.return_value()['continued'] == 'drain-1-c1'
    # The same run once more (a replay): its next run exists already, queued once.
    queues.get_queue('access_log', redis_conn).enqueue_job(job, at_front=True)
    assert run_worker(redis_conn, 'access_log', max_jobs=1)
    assert queues.get_queue('access_log', redis_conn).job_ids == ['drain-1-c1']


@pytest.mark.db
def test_a_run_stops_at_half_its_soft_limit_and_goes_on(redis_conn, database, small):
    small(JOB_TIMEOUT=10, SOFT_TIME_LIMIT=1, ACCESS_LOG_BATCH_SIZE=1)
    assert producer.enqueue_access_logs([entry(i) for i in range(20_000)], connection=redis_conn) == 20_000
    job = queues.enqueue('process_access_log', job_id='slow-1', retry=None, connection=redis_conn)
    assert run_worker(redis_conn, 'access_log', max_jobs=1)
    result = job.return_value()
    # One entry per transaction is far slower than 20,000 in half a second: the run stopped on time, not at its budget.
    assert result['status'] == 'done' and 0 < result['stored'] < 20_000
    assert result['elapsed'] < 0.5 + 2 and result['continued'] == 'slow-1-c1'
    assert result['remaining'] == 20_000 - result['stored']


@pytest.mark.db
@pytest.mark.slow
def test_two_workers_draining_at_once_never_take_the_same_entries(redis_conn, database, small):
    small(ACCESS_LOG_MAX_PER_RUN=300, ACCESS_LOG_BATCH_SIZE=50)
    sent = 6000
    assert producer.enqueue_access_logs([entry(i) for i in range(sent)], connection=redis_conn) == sent
    for number in range(2):
        queues.enqueue('process_access_log', job_id=f'drain-{number}', retry=None, connection=redis_conn)
    command = [sys.executable, '-c', 'import cli; cli.main()', '-q', 'worker', '--burst', 'access_log']
    workers = [subprocess.Popen(command, cwd=ROOT, env=os.environ.copy(), stderr=subprocess.PIPE) for _ in range(2)]
    errors = [worker.communicate(timeout=120)[1] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], errors
    results = results_of(redis_conn).values()
    assert stored_count() == sent == sum(r['stored'] for r in results)
    assert AccessRecord.select(peewee.fn.COUNT(AccessRecord.event_id.distinct())).scalar() == sent
    # No entry was taken twice: a second take would have found its row and counted a duplicate.
    assert sum(r['duplicates'] for r in results) == 0
    assert redis_conn.llen(BUFFER_KEY) == redis_conn.llen(PROCESSING_KEY) == 0


@pytest.mark.db
def test_a_row_the_database_refuses_is_dead_lettered_and_the_rest_stored(redis_conn, database, monkeypatch):
    producer.enqueue_access_logs(
        [entry(i) for i in range(5)] + [entry(99, resource_id='poison/row')], connection=redis_conn
    )
    insert = access_log._insert

    def refusing(db, rows):
        if any(row[2] == 'poison/row' for row in rows):
            raise peewee.IntegrityError('poison refused')
        return insert(db, rows)

    monkeypatch.setattr(access_log, '_insert', refusing)
    result = access_log.process_access_log()
    assert (result['stored'], result['dead_lettered']) == (5, 1)
    letter = json.loads(redis_conn.lindex(DEAD_KEY, 0))
    assert 'refused by the database: poison refused' in letter['reason']
    assert 'poison/row' in letter['entry']


@pytest.mark.db
def test_a_locked_database_fails_the_run_and_keeps_the_entries(redis_conn, database, monkeypatch):
    if not isinstance(database, peewee.SqliteDatabase):
        pytest.skip('holds a SQLite write lock')
    producer.enqueue_access_logs([entry(i) for i in range(30)], connection=redis_conn)
    # The drainer waits 5 s for a lock by default; a test waits less.
    monkeypatch.setattr(
        database, '_pragmas', [(name, 200 if name == 'busy_timeout' else value) for name, value in database._pragmas]
    )
    holder = sqlite3.connect(database.database, timeout=0.1, isolation_level=None)
    try:
        holder.execute('BEGIN EXCLUSIVE')
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailable, match='database is locked.*stay in Redis'):
            access_log.process_access_log()
        assert time.monotonic() - started < 5
        assert redis_conn.llen(BUFFER_KEY) + redis_conn.llen(PROCESSING_KEY) == 30
        assert not redis_conn.exists(LOCK_KEY)
    finally:
        holder.execute('ROLLBACK')
        holder.close()
    result = access_log.process_access_log()
    assert (result['stored'], result['remaining']) == (30, 0)
    assert stored_count() == 30


def test_a_database_that_is_down_fails_the_run_and_keeps_the_entries(redis_conn, env):
    env.setenv('DATABASE_URL', 'postgresql://postgres@127.0.0.1:1/nowhere')
    settings.reset()
    producer.enqueue_access_logs([entry(i) for i in range(5)], connection=redis_conn)
    with pytest.raises(
        DatabaseUnavailable,
        match=r'Cannot reach the database at postgresql://postgres@127\.0\.0\.1:1/nowhere: .*stay in Redis',
    ):
        access_log.process_access_log()
    assert redis_conn.llen(BUFFER_KEY) + redis_conn.llen(PROCESSING_KEY) == 5
    assert not redis_conn.exists(LOCK_KEY)


def test_redis_down_drops_fast_and_counts_locally(env):
    env.setenv('REDIS_URL', 'redis://127.0.0.1:1/0')
    settings.reset()
    before = producer.local_drop_count('unavailable')
    started = time.monotonic()
    assert producer.enqueue_access_log(entry()) is False
    assert producer.enqueue_access_log(entry()) is False
    assert producer.enqueue_access_logs([entry(i) for i in range(10)]) == 0
    assert time.monotonic() - started < 1
    assert producer.local_drop_count('unavailable') - before == 12


# ---- Requests ----


@pytest.mark.parametrize(
    'headers, remote, expected',
    [
        ({'CF-Connecting-IP': '198.51.100.1', 'X-Forwarded-For': '203.0.113.9'}, '10.0.0.1', '198.51.100.1'),
        ({'x-forwarded-for': '203.0.113.9, 10.0.0.2', 'X-Real-IP': '203.0.113.10'}, '10.0.0.1', '203.0.113.9'),
        ({'X-Forwarded-For': 'unknown', 'X-Real-IP': '203.0.113.10'}, '10.0.0.1', '203.0.113.10'),
        ({'X-Client-IP': '203.0.113.11', 'True-Client-IP': '203.0.113.12'}, '10.0.0.1', '203.0.113.11'),
        ({'True-Client-IP': '203.0.113.12', 'X-Cluster-Client-IP': '203.0.113.13'}, None, '203.0.113.12'),
        ({'X-Cluster-Client-IP': '203.0.113.13:8443'}, None, '203.0.113.13'),
        ({'Forwarded': 'for="[2001:db8:cafe::17]:4711";proto=https, for=198.51.100.3'}, None, '2001:db8:cafe::17'),
        ({'Forwarded': 'for=unknown;by=203.0.113.43'}, '10.0.0.1', '10.0.0.1'),
        ({'X-Real-IP': 'garbage'}, '[::1]:5000', '::1'),
        ({}, 'not an address', ''),
    ],
)
def test_client_ip_follows_the_header_precedence(headers, remote, expected):
    assert producer.client_ip(headers, remote) == expected


@pytest.mark.parametrize(
    'path',
    [
        '/static/app.css',
        '/assets/logo.PNG',
        '/_next/chunk.js',
        '/favicon.ico',
        '/a/b/font.woff2',
        '/bundle.js.map',
        '/health',
        '/healthz/ready',
        '/metrics',
        '/swagger/index.html',
        '/openapi.json',
        '/docs',
        '/docs/oauth2-redirect',
        '/robots.txt',
    ],
)
def test_assets_and_machinery_are_not_logged(path):
    assert producer.entry_from_request('GET', path, {}, '10.0.0.1', 200, 1.0) is None


@pytest.mark.parametrize(
    'path, resource',
    [
        ('/', ('Page', '/')),
        ('/login', ('Page', '/login')),
        ('/settings/profile/', ('Page', '/settings/profile')),
        ('/api/Warehouse/GetList/extra', ('API', 'Warehouse/GetList')),
        ('/api/Users', ('API', 'Users')),
        ('/api', ('Page', '/api')),
        ('/admin/users/42', ('Admin', 'users/42')),
        ('/admin', ('Admin', 'index')),
        ('/search/rq jobs', ('Search', 'rq jobs')),
        ('/OpenAI/Whisper/docs/intro', ('Repository', 'openai/whisper')),
        ('/torvalds/linux', ('Repository', 'torvalds/linux')),
        ('/unknown-page', ('Page', '/unknown-page')),
        ('/docsite/x', ('Repository', 'docsite/x')),
    ],
)
def test_resources_are_parsed_from_the_path(path, resource):
    assert producer.resource_of(path) == resource


def test_entry_from_request():
    built = producer.entry_from_request(
        'get',
        '/owner/name/page?token=secret',
        {'user-AGENT': 'A' * 1000, 'X-Forwarded-For': '203.0.113.5'},
        '10.0.0.1',
        404,
        12.6,
        user_id='u1',
    )
    assert built == {
        'resource_type': 'Repository',
        'resource_id': 'owner/name',
        'user_id': 'u1',
        'ip_address': '203.0.113.5',
        'user_agent': 'A' * producer.USER_AGENT_MAX,
        'path': '/owner/name/page',
        'method': 'GET',
        'status_code': 404,
        'response_time': 12.6,
    }


def wsgi_environ(path='/owner/name', **extra):
    return {
        'REQUEST_METHOD': 'POST',
        'PATH_INFO': path.encode('utf-8').decode('latin-1'),
        'QUERY_STRING': 'q=1',
        'REMOTE_ADDR': '10.0.0.1',
        'HTTP_USER_AGENT': 'pytest-agent',
        'HTTP_X_FORWARDED_FOR': '203.0.113.20',
        'wsgi.url_scheme': 'http',
        **extra,
    }


class Body:
    """A response body that remembers whether the server closed it."""

    def __init__(self):
        self.closed = False

    def __iter__(self):
        return iter([b'hello ', b'world'])

    def close(self):
        self.closed = True


def run_wsgi(middleware, environ):
    started = []
    body = middleware(environ, lambda status, headers, exc_info=None: started.append(status))
    try:
        return started, b''.join(body)
    finally:
        body.close()


def test_middleware_records_one_entry_after_the_body_is_closed(redis_conn):
    bodies = []

    def app(environ, start_response):
        environ['rqjobs.user_id'] = 'user-7'
        start_response('201 Created', [('Content-Type', 'text/plain')])
        bodies.append(Body())
        return bodies[-1]

    middleware = producer.AccessLogMiddleware(app, connection=redis_conn)
    assert run_wsgi(middleware, wsgi_environ('/owner/name/文档')) == (['201 Created'], b'hello world')
    assert bodies[0].closed
    (raw,) = redis_conn.lrange(BUFFER_KEY, 0, -1)
    logged = json.loads(raw)
    assert {
        key: logged[key]
        for key in (
            'resource_type',
            'resource_id',
            'user_id',
            'ip_address',
            'user_agent',
            'path',
            'method',
            'status_code',
        )
    } == {
        'resource_type': 'Repository',
        'resource_id': 'owner/name',
        'user_id': 'user-7',
        'ip_address': '203.0.113.20',
        'user_agent': 'pytest-agent',
        'path': '/owner/name/文档',
        'method': 'POST',
        'status_code': 201,
    }
    assert 0 <= logged['response_time'] < 5000

    run_wsgi(middleware, wsgi_environ('/static/app.js'))
    assert redis_conn.llen(BUFFER_KEY) == 1


def test_middleware_records_a_failing_app_as_500(redis_conn):
    def app(environ, start_response):
        raise RuntimeError('boom')

    with pytest.raises(RuntimeError, match='boom'):
        producer.AccessLogMiddleware(app, connection=redis_conn)(wsgi_environ(), lambda *args: None)
    assert json.loads(redis_conn.lindex(BUFFER_KEY, 0))['status_code'] == 500


def test_middleware_never_breaks_the_app(env):
    env.setenv('REDIS_URL', 'redis://127.0.0.1:1/0')
    settings.reset()

    def app(environ, start_response):
        start_response('200 OK', [])
        return [b'still served']

    def broken_user(environ):
        raise LookupError('no session')

    before = producer.local_drop_count()
    started = time.monotonic()
    assert run_wsgi(producer.AccessLogMiddleware(app), wsgi_environ()) == (['200 OK'], b'still served')
    assert run_wsgi(producer.AccessLogMiddleware(app, user_id=broken_user), wsgi_environ()) == (
        ['200 OK'],
        b'still served',
    )
    assert time.monotonic() - started < 1
    assert producer.local_drop_count() - before == 2


# ---- Cleanup ----


def frozen(monkeypatch, moment):
    monkeypatch.setattr(clock, 'utcnow', lambda: moment)


def add_records(ages_in_days):
    AccessRecord.insert_many(
        [
            {
                'event_id': f'age-{i}',
                'resource_type': 'Page',
                'resource_id': '/',
                'access_time': NOW - timedelta(days=age),
            }
            for i, age in enumerate(ages_in_days)
        ]
    ).execute()


@pytest.mark.db
def test_cleanup_of_records_deletes_old_rows_in_chunks(database, monkeypatch):
    frozen(monkeypatch, NOW)
    monkeypatch.setattr(access_log, 'CLEANUP_CHUNK', 3)
    add_records([100] * 7 + [91, 89, 10, 0])
    # A run killed after its first chunks left some old rows behind: the next one finishes the job.
    AccessRecord.delete().where(AccessRecord.event_id.in_(['age-0', 'age-1'])).execute()
    result = access_log.cleanup_old_access_records(90)
    assert result == {'deleted': 6, 'cutoff': '2025-03-03T12:00:00'}
    assert sorted(r.event_id for r in AccessRecord.select()) == ['age-10', 'age-8', 'age-9']
    assert access_log.cleanup_old_access_records(90)['deleted'] == 0
    assert access_log.cleanup_old_access_records(days_to_keep=5)['deleted'] == 2


@pytest.mark.parametrize('days', [0, -1, True, 1.5, '30', None, 10**9])
def test_cleanup_refuses_bad_days(days):
    for job in (access_log.cleanup_old_access_records, access_log.cleanup_old_access_logs):
        with pytest.raises(PermanentJobError, match='days_to_keep must be a whole number of days'):
            job(days)


def test_cleanup_of_logs_trims_old_dead_letters(redis_conn, monkeypatch):
    monkeypatch.setattr(access_log, 'DEAD_CHUNK', 2)
    for age in (40, 35, 31):
        frozen(monkeypatch, NOW - timedelta(days=age))
        redis_conn.rpush(DEAD_KEY, access_log._dead_letter(b'{}', f'{age} days old'))
    redis_conn.rpush(DEAD_KEY, b'not a letter')
    for age in (29, 1):
        frozen(monkeypatch, NOW - timedelta(days=age))
        redis_conn.rpush(DEAD_KEY, access_log._dead_letter(b'{}', f'{age} days old'))
    frozen(monkeypatch, NOW)
    assert access_log.cleanup_old_access_logs() == {'deleted': 4, 'cutoff': '2025-05-02T12:00:00'}
    assert [json.loads(x)['reason'] for x in redis_conn.lrange(DEAD_KEY, 0, -1)] == ['29 days old', '1 days old']
    assert access_log.cleanup_old_access_logs(30)['deleted'] == 0


# ---- Jobs, operator actions and the command line ----


@pytest.mark.db
def test_jobs_are_registered_and_run_in_a_worker(redis_conn, database, burst_worker):
    for name in access_log.JOBS:
        assert queues.find_job(name).queue == 'access_log'
    producer.enqueue_access_logs([entry(i) for i in range(3)], connection=redis_conn)
    job = queues.enqueue('process_access_log', connection=redis_conn)
    assert burst_worker('access_log')
    assert job.return_value()['stored'] == 3


@pytest.mark.db
def test_requeue_dead_restores_the_bytes_sent(redis_conn, database):
    raws = [b'\xff not utf-8', b'{"resource_type": "Page"}', b'{"broken": ']
    redis_conn.rpush(BUFFER_KEY, *raws)
    assert access_log.process_access_log()['dead_lettered'] == 3
    assert access_log.requeue_dead(redis_conn, limit=2) == 2
    assert redis_conn.lrange(BUFFER_KEY, 0, -1) == raws[:2]
    assert access_log.requeue_dead(redis_conn) == 1
    assert redis_conn.lrange(BUFFER_KEY, 0, -1) == raws
    assert redis_conn.llen(DEAD_KEY) == 0


@pytest.mark.db
def test_cli_status_and_requeue_dead(redis_conn, database, small):
    small(ACCESS_LOG_BUFFER_MAX=3)
    runner = CliRunner()
    producer.enqueue_access_logs([entry(i) for i in range(5)] + [entry(9, status_code=1)], connection=redis_conn)
    redis_conn.rpush(BUFFER_KEY, b'garbage', b'[]')
    access_log.process_access_log()
    producer.enqueue_access_log(entry(20), connection=redis_conn)

    result = runner.invoke(cli.main, ['logs', 'status', '--json'], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        'buffer': 1,
        'buffer_max': 3,
        'processing': 0,
        'dead': 2,
        'dropped': 3,
        'dropped_full': 2,
        'dropped_invalid': 1,
        'draining': False,
    }
    human = runner.invoke(cli.main, ['logs', 'status'], catch_exceptions=False)
    assert 'buffer:       1 of 3' in human.stdout and 'dead letters: 2' in human.stdout

    result = runner.invoke(cli.main, ['logs', 'requeue-dead', '--limit', '1'], catch_exceptions=False)
    assert result.exit_code == 0
    assert '1 dead-lettered entries moved back to the buffer.' in result.stdout
    result = runner.invoke(cli.main, ['logs', 'requeue-dead', '--json'], catch_exceptions=False)
    assert json.loads(result.stdout) == {'requeued': 1}
    assert redis_conn.lrange(BUFFER_KEY, 1, -1) == [b'garbage', b'[]']
    assert runner.invoke(cli.main, ['logs', 'requeue-dead', '--limit', '0']).exit_code == 2


# ---- The hand-optimised fast paths against their plain versions ----


def plain_validate(data, now, *, producer_side, latest=None):
    """What `validate` does, field by field and with no shortcut: the specification its fast path must meet."""
    get = data.get
    event_id = get('event_id')
    if event_id is None:
        if not producer_side:
            raise ValueError('event_id is missing')
        event_id = 'made-by-the-producer'
    elif type(event_id) is not str or not producer._EVENT_ID.fullmatch(event_id):
        raise ValueError('event_id must be 1 to 64 letters, digits, _ . : or -')
    resource_type = producer._text(get('resource_type'), 'resource_type', required=True)
    resource_id = producer._text(get('resource_id'), 'resource_id', required=True)
    user_id = producer._text(get('user_id'), 'user_id', nullable=True)
    address = producer._text(get('ip_address', ''), 'ip_address', cut=producer_side)
    user_agent = producer._text(get('user_agent', ''), 'user_agent', cut=producer_side)
    path = producer._text(get('path', ''), 'path', cut=producer_side)
    method = producer._text(get('method', ''), 'method')
    if address:
        ip = producer._parse_ip(address)
        if ip is None and not producer_side:
            raise ValueError('ip_address is not an IP address')
        address = ip or ''
    access_time = get('access_time')
    return (
        event_id,
        resource_type,
        resource_id,
        user_id,
        address,
        user_agent,
        path,
        method,
        producer._status(get('status_code')),
        producer._number(get('response_time'), 'response_time', 0, producer.RESPONSE_TIME_MAX),
        now if access_time is None else producer._moment(access_time, now, latest),
    )


class Text(str):
    """A str subclass, as some web frameworks hand out (markupsafe's Markup, say)."""


TEXTS = [
    '',
    'a',
    'Page',
    'owner/repo',
    'é',
    'répo-😀',
    '文档',
    'e\u0301',
    '\u2028',
    '\x00',
    'a\x00b',
    '\x01\x1f\x7f',
    '\t\n\r',
    '"\\',
    '</script>',
    '\ud800',
    'x\udfff',
    ' ' * 45,
    '9' * 32,
    'x' * 36,
    'x' * 37,
    'y' * 191,
    'y' * 192,
    'u' * 512,
    'u' * 513,
    'p' * 2048,
    'p' * 2049,
    'h' * 100_000,
    '😀' * 300,
    Text('text'),
    None,
    7,
    1.5,
    b'bytes',
    ['list'],
    True,
]
ADDRESSES = [
    '203.0.113.7',
    '[2001:DB8::1]:443',
    '10.0.0.1:80',
    '::ffff:1.2.3.4',
    'not an ip',
    ' 1.2.3.4 ',
    '"1.1.1.1"',
    '1' * 46,
    'fe80::1%eth0',
]
EVENT_IDS = [
    None,
    '',
    'given-id.1',
    'a' * 64,
    'a' * 65,
    'bad id',
    '0123456789abcdef0123456789abcdef',
    '0123456789abcdéf0123456789abcdef',
    'é' * 32,
    5,
]
NUMBERS = [
    None,
    0,
    1,
    99,
    100,
    200,
    404,
    599,
    600,
    -1,
    12.4,
    12.5,
    float('nan'),
    float('inf'),
    10**30,
    True,
    '200',
    3_600_000,
    3_600_001,
]
TIMES = [
    None,
    '2025-01-01T10:00:00',
    '2025-01-01T10:00:00+02:00',
    '1969-12-31T23:59:59',
    '2999-01-01',
    'yesterday',
    'x' * 41,
    1_735_725_600,
    1.5e9,
    -1e20,
    float('nan'),
    datetime(2025, 5, 31),
    [2025],
]


def random_entries(count, seed):
    """Entries with one value or a few drawn from the tables above, the rest ordinary: many ways to be almost right."""
    chooser = random.Random(seed)
    tables = {
        'event_id': EVENT_IDS,
        'resource_type': TEXTS,
        'resource_id': TEXTS,
        'user_id': TEXTS,
        'ip_address': ADDRESSES + TEXTS,
        'user_agent': TEXTS,
        'path': TEXTS,
        'method': TEXTS,
        'status_code': NUMBERS,
        'response_time': NUMBERS,
        'access_time': TIMES,
    }
    for _ in range(count):
        data = {'event_id': 'fixed-id', **entry(chooser.randrange(1000)), 'access_time': '2025-01-01T00:00:00'}
        for name in chooser.sample(sorted(tables), chooser.choice([1, 1, 2, 3])):
            if chooser.random() < 0.1:
                data.pop(name)
            else:
                data[name] = chooser.choice(tables[name])
        yield data


def outcome(function, *args, **kwargs):
    try:
        return 'ok', function(*args, **kwargs)
    except (ValueError, TypeError) as exc:
        return type(exc).__name__, str(exc)


@pytest.mark.parametrize('producer_side', [True, False])
def test_the_combined_validation_decides_as_the_field_by_field_one(producer_side, monkeypatch):
    monkeypatch.setattr(producer, '_new_event_id', lambda: 'made-by-the-producer')
    checked = 0
    for data in random_entries(5000, seed=13 + producer_side):
        assert outcome(producer.validate, data, NOW, producer=producer_side) == outcome(
            plain_validate, data, NOW, producer_side=producer_side
        ), data
        checked += 1
    assert checked == 5000


def test_the_percent_built_json_is_what_json_dumps_writes(monkeypatch):
    monkeypatch.setattr(producer, '_new_event_id', lambda: 'made-by-the-producer')
    written = 0
    for data in random_entries(5000, seed=31):
        try:
            row = producer.validate(data, NOW, producer=True)
        except ValueError:
            continue
        plain = json.dumps(
            dict(zip(producer._ENTRY_KEYS, (*row[:10], row[10].isoformat(timespec='microseconds')), strict=True)),
            ensure_ascii=False,
            separators=(',', ':'),
        ).encode()
        assert producer._payload(data, NOW) == plain
        assert json.loads(plain)['resource_id'] == row[2]
        written += 1
    assert written > 1000  # enough of them valid to mean something


def test_the_drain_reads_entries_as_json_loads_does():
    raws = [raw_entry(event_id=f'e{i}').encode() for i in range(3)] + [
        raw_entry(event_id='spaces').encode() + b' \n\t ',
        b' ' + raw_entry(event_id='lead').encode(),
        raw_entry(event_id='extra').encode() + b'{}',
        raw_entry(event_id='vt').encode() + b'\x0b',
        raw_entry(event_id='nbsp').encode() + '\xa0'.encode(),
        '\u2028'.encode() + raw_entry(event_id='ls').encode(),
        b'\r\n' + raw_entry(event_id='crlf').encode() + b'\r\n',
        b'[1]',
        b'"text"',
        b'{"a": NaN}',
        b'\xff\xfe',
        b'',
        b'{' * 100_000,
        raw_entry(event_id='e0').encode(),
        raw_entry(event_id='big', user_agent='u' * 70_000).encode(),
        raw_entry(event_id='uni', path='/文档/😀\u2028').encode(),
        b'{"event_id": "dup"}' * 2,
    ]

    def plain(raw):
        try:
            data = json.loads(raw)
            return (
                access_log.validate(data, NOW, producer=False, latest=NOW + producer.FUTURE_TOLERANCE)
                if type(data) is dict and len(raw) <= access_log.RAW_MAX
                else None
            )
        except (ValueError, RecursionError):
            return None

    rows, kept, dead = access_log._parse(raws, NOW)
    expected, seen = [], set()
    for raw in raws:
        row = plain(raw)
        if row is not None and row[0] not in seen:
            seen.add(row[0])
            expected.append((raw, (*row, NOW)))
    assert list(zip(kept, rows, strict=True)) == expected
    assert len(kept) + len(dead) + 1 == len(raws)  # the one left over is the repeated e0


@pytest.mark.db
@pytest.mark.parametrize('count', [1, 2, 7])
def test_the_multi_row_insert_is_the_statement_peewee_builds(database, count):
    db = AccessRecord._meta.database
    rows = [
        (f'id{i}', 'Page', f'/p{i}', None, '10.0.0.1', 'agent é😀', f'/p{i}', 'GET', 200, i, NOW, NOW)
        for i in range(count)
    ]
    query = AccessRecord.insert_many(rows, fields=access_log.FIELDS).on_conflict_ignore().returning()
    sql, params = query.sql()
    prefix, group, suffix, _ = access_log._insert_statement(db, AccessRecord._meta.table_name)

    assert prefix + ', '.join([group] * count) + suffix == sql
    assert access_log._values(db, rows) == [
        value.isoformat(' ') if isinstance(value, datetime) and isinstance(db, peewee.SqliteDatabase) else value
        for value in params
    ]
    assert access_log._insert(db, rows) == count
    assert access_log._insert(db, rows) == 0  # the event ids are taken: ignored, as peewee's statement ignores them
    stored = list(AccessRecord.select(*access_log.FIELDS).order_by(AccessRecord.event_id).tuples())
    assert stored == sorted(rows)


def test_the_web_side_imports_no_orm_and_the_earlier_path_still_works():
    code = (
        'import sys\n'
        'from rqjobs.contrib.access_log import AccessLogMiddleware, enqueue_access_log\n'
        'print(sorted(name for name in sys.modules if name.split(".")[0] in {"peewee", "playhouse", "models"}))\n'
        'from rqjobs import access_log\n'
        'assert (access_log.AccessLogMiddleware, access_log.enqueue_access_log) == '
        '(AccessLogMiddleware, enqueue_access_log)\n'
    )
    result = subprocess.run(
        [sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, '[]\n', '')
