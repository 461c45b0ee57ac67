import json
import os
import subprocess
import sys
import textwrap
import zlib
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner
from rq.job import JobStatus

import cli
import scheduler
from helpers import ROOT, run_worker
from rqjobs import access_log, clock, queues, settings
from rqjobs.contrib import access_log as producer
from rqjobs.exceptions import SettingsError
from scheduler import Entry

START = datetime(2026, 11, 29, 12, 0, 0)
SMALL_PLAN = [
    Entry('ping-often', 'rqjobs.system.ping', every=30),
    Entry('ping-daily', 'rqjobs.system.ping', cron='0 1 * * *'),
]


@pytest.fixture
def now(monkeypatch):
    """A frozen clock that tests move by hand."""
    moment = {'now': START}
    monkeypatch.setattr(clock, 'utcnow', lambda: moment['now'])

    def move(seconds=0, to=None):
        moment['now'] = to if to is not None else moment['now'] + timedelta(seconds=seconds)
        return moment['now']

    return move


def scheduled(redis_conn):
    """The schedule as {id: score as naive UTC}."""
    return {
        key.decode(): datetime.fromtimestamp(score, UTC).replace(tzinfo=None)
        for key, score in redis_conn.zrange('rq:scheduler:scheduled_jobs', 0, -1, withscores=True)
    }


def queued(redis_conn, queue='default'):
    return [job_id.decode() for job_id in redis_conn.lrange(f'rq:queue:{queue}', 0, -1)]


# ---- register() ----


def test_register_is_idempotent_and_keeps_next_times(redis_conn, now):
    first = scheduler.register(redis_conn, SMALL_PLAN)
    assert sorted(first['added']) == ['ping-daily', 'ping-often']
    times = scheduled(redis_conn)
    assert times == {'ping-often': START + timedelta(seconds=30), 'ping-daily': datetime(2026, 11, 30, 1, 0)}
    now(10)
    for _ in range(3):
        assert sorted(scheduler.register(redis_conn, SMALL_PLAN)['kept']) == ['ping-daily', 'ping-often']
    assert scheduled(redis_conn) == times
    assert queued(redis_conn) == []


def test_register_from_many_processes_leaves_one_entry_per_id(redis_conn):
    code = (
        'import scheduler; from rqjobs.connections import get_redis; scheduler.register(get_redis(), '
        '[scheduler.Entry("ping-often", "rqjobs.system.ping", every=30)])'
    )
    processes = [subprocess.Popen([sys.executable, '-c', code], cwd=ROOT, stderr=subprocess.PIPE) for _ in range(4)]
    errors = [process.communicate(timeout=60)[1] for process in processes]
    assert [process.returncode for process in processes] == [0, 0, 0, 0], errors
    assert list(scheduled(redis_conn)) == ['ping-often']
    assert redis_conn.keys('rq:job:ping-often*') == [b'rq:job:ping-often']
    assert queued(redis_conn) == []


def test_changed_entries_are_replaced_and_removed_ones_deleted(redis_conn, now):
    scheduler.register(redis_conn, SMALL_PLAN)
    result = scheduler.register(redis_conn, [Entry('ping-often', 'rqjobs.system.ping', every=60)])
    assert result == {'added': [], 'replaced': ['ping-often'], 'kept': [], 'removed': ['ping-daily']}
    assert scheduled(redis_conn) == {'ping-often': START + timedelta(seconds=60)}
    assert not redis_conn.exists('rq:job:ping-daily')
    assert scheduler.clear(redis_conn) == ['ping-often']
    assert scheduled(redis_conn) == {}


def test_register_keeps_one_off_scheduled_jobs(redis_conn, now):
    build = scheduler.build_scheduler(redis_conn)
    other = build.enqueue_in(timedelta(hours=1), 'rqjobs.system.ping', queue_name='default')
    scheduler.register(redis_conn, SMALL_PLAN)
    scheduler.clear(redis_conn)
    assert list(scheduled(redis_conn)) == [other.id]


def test_an_entry_naming_an_unknown_job_is_refused(redis_conn):
    with pytest.raises(Exception, match='Unknown job'):
        scheduler.register(redis_conn, [Entry('bad', 'os.system', every=30)])
    assert scheduled(redis_conn) == {}


def test_the_default_plan_names_registered_jobs_and_fixed_ids(redis_conn):
    result = scheduler.register(redis_conn)
    ids = {entry.id for entry in scheduler.PLAN}
    assert set(result['added']) == ids == set(scheduled(redis_conn))
    assert all(all(c.isalnum() or c in '_-' for c in entry_id) for entry_id in ids)
    assert {entry.id: entry.when for entry in scheduler.PLAN}['process-access-logs'] == 'every 30 s'


# ---- The plan and its overrides ----


def test_overrides_change_or_disable_entries(env):
    env.setenv('JOBS_SCHEDULE', 'process-access-logs=60; generate-minimaps=off; generate-daily-statistics=30 3 * * *')
    settings.reset()
    entries = {entry.id: entry for entry in scheduler.plan()}
    assert entries['process-access-logs'].every == 60
    assert 'generate-minimaps' not in entries
    assert entries['generate-daily-statistics'].cron == '30 3 * * *'


@pytest.mark.parametrize(
    'value, message',
    [
        ('nope=60', "names 'nope', which is not in the plan"),
        ('process-access-logs=2', 'below 5 s'),
        ('process-access-logs=soon', 'not off, seconds or a 5-field cron string'),
        ('process-access-logs', 'is not ID=VALUE'),
    ],
)
def test_bad_overrides_are_refused(env, value, message):
    env.setenv('JOBS_SCHEDULE', value)
    settings.reset()
    with pytest.raises(SettingsError, match=message):
        scheduler.plan()


# ---- Cron in UTC ----


def test_cron_entries_fire_at_utc_times_whatever_the_timezone(redis_server):
    code = textwrap.dedent("""
        import time, warnings
        warnings.simplefilter('error')
        time.tzset()
        from datetime import datetime
        import scheduler
        print(scheduler.next_cron_time('0 1 * * *', datetime(2026, 11, 29, 12, 0)).isoformat())
        print(scheduler.next_cron_time('0 2 * * *', datetime(2026, 3, 29, 0, 30)).isoformat())
    """)
    for tz in ('Asia/Kolkata', 'America/Los_Angeles', 'Europe/Berlin'):
        result = subprocess.run(
            [sys.executable, '-c', code],
            cwd=ROOT,
            env=dict(os.environ, TZ=tz),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        # 02:00 on the day Berlin skips 02:00 local time is still 02:00 UTC.
        assert result.stdout.split() == ['2026-11-30T01:00:00', '2026-03-29T02:00:00'], tz
        assert 'Warning' not in result.stderr


def test_cron_registration_in_a_non_utc_process(redis_conn):
    code = textwrap.dedent("""
        import time
        time.tzset()
        import scheduler
        from rqjobs.connections import get_redis
        scheduler.register(get_redis(), [scheduler.Entry('daily', 'rqjobs.system.ping', cron='0 1 * * *')])
    """)
    result = subprocess.run(
        [sys.executable, '-W', 'error', '-c', code],
        cwd=ROOT,
        env=dict(os.environ, TZ='Pacific/Auckland'),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    at = scheduled(redis_conn)['daily']
    assert (at.hour, at.minute, at.second) == (1, 0, 0)


# ---- Scheduling steps ----


def test_due_entries_become_fresh_json_runs(redis_conn, now):
    scheduler.register(redis_conn, SMALL_PLAN)
    assert scheduler.tick(redis_conn) == []
    now(30)
    assert scheduler.tick(redis_conn) == ['ping-often']
    slot = int((START + timedelta(seconds=30)).replace(tzinfo=UTC).timestamp())
    run_id = f'ping-often-{slot}'
    assert queued(redis_conn) == [run_id]
    raw = redis_conn.hgetall(f'rq:job:{run_id}')
    assert json.loads(zlib.decompress(raw[b'data'])) == ['rqjobs.system.ping', None, [], {}]
    assert isinstance(queues.JsonJob.fetch(run_id, connection=redis_conn), queues.JsonJob)
    assert scheduled(redis_conn)['ping-often'] == START + timedelta(seconds=60)


def test_a_run_still_queued_is_not_enqueued_again(redis_conn, database, now, burst_worker):
    scheduler.register(redis_conn, SMALL_PLAN)
    now(30)
    scheduler.tick(redis_conn)
    # Workers are down for five minutes: the entry comes due ten times, but one run waits, not eleven.
    for _ in range(10):
        now(30)
        scheduler.tick(redis_conn)
    assert len(queued(redis_conn)) == 1
    burst_worker('default')
    now(30)
    scheduler.tick(redis_conn)
    assert len(queued(redis_conn)) == 1
    template = queues.JsonJob.fetch('ping-often', connection=redis_conn)
    assert template.meta['last_skipped_at']


def test_missed_slots_are_skipped_not_replayed(redis_conn, now):
    scheduler.register(redis_conn, SMALL_PLAN)
    now(30 * 20 + 7)  # the scheduler itself was down for ten minutes
    scheduler.tick(redis_conn)
    assert len(queued(redis_conn)) == 1
    assert scheduled(redis_conn)['ping-often'] == START + timedelta(seconds=30 * 21)


def test_two_schedulers_never_enqueue_a_slot_twice(redis_conn, now):
    scheduler.register(redis_conn, SMALL_PLAN)
    now(30)
    first, second = scheduler.build_scheduler(redis_conn), scheduler.build_scheduler(redis_conn)
    due = first.get_jobs_to_queue(with_times=True)
    # Both saw the same due slot (say the lock expired mid-pass); each handles it.
    for instance in (first, second):
        for job, slot in due:
            instance.enqueue_job(job, slot=slot)
    assert len(queued(redis_conn)) == 1


def test_two_scheduler_processes_at_once(redis_conn):
    scheduler.register(redis_conn, SMALL_PLAN)
    redis_conn.zadd('rq:scheduler:scheduled_jobs', {'ping-often': 1})  # long due
    code = (
        'import scheduler; from rqjobs.connections import get_redis; '
        'scheduler.build_scheduler(get_redis(), interval=1).run(burst=True)'
    )
    processes = [subprocess.Popen([sys.executable, '-c', code], cwd=ROOT, stderr=subprocess.PIPE) for _ in range(2)]
    errors = [process.communicate(timeout=60)[1] for process in processes]
    assert [process.returncode for process in processes] == [0, 0], errors
    assert len(queued(redis_conn)) == 1


def test_a_scheduler_killed_mid_step_loses_nothing(redis_conn, now):
    scheduler.register(redis_conn, SMALL_PLAN)
    now(30)
    instance = scheduler.build_scheduler(redis_conn)
    ((template, slot),) = instance.get_jobs_to_queue(with_times=True)
    # Killed after enqueuing the run, before putting the entry back for its next time.
    instance._run(template, template.meta[scheduler.PLAN_MARK], scheduler._naive_utc(slot))
    assert scheduled(redis_conn)['ping-often'] == START + timedelta(seconds=30)
    scheduler.tick(redis_conn)
    assert len(queued(redis_conn)) == 1
    assert scheduled(redis_conn)['ping-often'] == START + timedelta(seconds=60)


DRAIN_PLAN = [entry for entry in scheduler.PLAN if entry.id == 'process-access-logs']


def access_entries(count):
    return [{'resource_type': 'Page', 'resource_id': f'/page{i}', 'path': f'/page{i}'} for i in range(count)]


@pytest.mark.db
def test_a_run_that_went_on_is_not_joined_by_a_second_one_when_its_time_comes(redis_conn, database, now, env):
    env.setenv('ACCESS_LOG_MAX_PER_RUN', '25')
    env.setenv('ACCESS_LOG_BATCH_SIZE', '10')
    settings.reset()
    assert producer.enqueue_access_logs(access_entries(60), connection=redis_conn) == 60
    scheduler.register(redis_conn, DRAIN_PLAN)
    now(30)
    assert scheduler.tick(redis_conn) == ['process-access-logs']
    (first,) = queued(redis_conn, 'access_log')
    assert run_worker(redis_conn, 'access_log', max_jobs=1)
    # The first run spent its budget and went on in a next run, still queued when the entry's time comes again.
    assert queued(redis_conn, 'access_log') == [f'{first}-c1']
    now(30)
    assert scheduler.tick(redis_conn) == ['process-access-logs']
    assert queued(redis_conn, 'access_log') == [f'{first}-c1']
    template = queues.JsonJob.fetch('process-access-logs', connection=redis_conn)
    assert template.meta['last_run_id'] == f'{first}-c1' and template.meta['last_skipped_at']

    assert run_worker(redis_conn, 'access_log')
    assert redis_conn.llen(access_log.BUFFER_KEY) == 0
    assert queues.latest_run(redis_conn, first) == (f'{first}-c2', False)
    # The chain has ended: the next time enqueues a fresh run.
    now(30)
    scheduler.tick(redis_conn)
    slot = int((START + timedelta(seconds=90)).replace(tzinfo=UTC).timestamp())
    assert queued(redis_conn, 'access_log') == [f'process-access-logs-{slot}']


@pytest.mark.db
def test_the_drain_runs_before_its_time_once_the_buffer_is_a_quarter_full(redis_conn, database, now, env):
    env.setenv('ACCESS_LOG_BUFFER_MAX', '40')
    settings.reset()
    scheduler.register(redis_conn, DRAIN_PLAN)
    producer.enqueue_access_logs(access_entries(9), connection=redis_conn)
    now(5)
    assert scheduler.tick(redis_conn) == [] and queued(redis_conn, 'access_log') == []
    producer.enqueue_access_logs(access_entries(1), connection=redis_conn)
    moment = now(5)
    assert scheduler.tick(redis_conn) == ['process-access-logs']
    early = f'process-access-logs-{int(moment.replace(tzinfo=UTC).timestamp())}'
    assert queued(redis_conn, 'access_log') == [early]
    # Its run is queued: the next looks enqueue no second one, and the entry keeps its times.
    for _ in range(3):
        now(5)
        assert scheduler.tick(redis_conn) == []
    assert queued(redis_conn, 'access_log') == [early]
    assert scheduled(redis_conn)['process-access-logs'] == START + timedelta(seconds=30)
    assert 'last_skipped_at' not in queues.JsonJob.fetch('process-access-logs', connection=redis_conn).meta
    assert run_worker(redis_conn, 'access_log')
    assert redis_conn.llen(access_log.BUFFER_KEY) == 0


def test_early_checks_of_the_plan_are_functions_of_the_code(redis_conn):
    checks = {entry.id: scheduler._function(entry.early) for entry in scheduler.PLAN if entry.early}
    assert checks == {'process-access-logs': access_log.backlogged}
    assert access_log.backlogged(redis_conn) is False


def test_runs_go_through_a_worker(redis_conn, database, now, burst_worker):
    scheduler.register(redis_conn, SMALL_PLAN)
    now(30)
    scheduler.tick(redis_conn)
    burst_worker('default')
    run_id = queues.JsonJob.fetch('ping-often', connection=redis_conn).meta['last_run_id']
    assert queues.JsonJob.fetch(run_id, connection=redis_conn).get_status() == JobStatus.FINISHED


def test_a_forged_scheduled_job_runs_nothing(redis_conn, burst_worker, tmp_path):
    marker = tmp_path / 'pwned'
    build = scheduler.build_scheduler(redis_conn)
    job = build.schedule(
        datetime.now(UTC) - timedelta(seconds=1), 'os.system', args=[f'touch {marker}'], queue_name='default'
    )
    scheduler.tick(redis_conn)
    burst_worker('default')
    assert not marker.exists()
    assert job.get_status() == JobStatus.FAILED


# ---- Inspection and the command line ----


def test_describe_shows_next_and_last_runs_and_one_offs(redis_conn, database, now, burst_worker):
    scheduler.register(redis_conn, SMALL_PLAN)
    now(30)
    scheduler.tick(redis_conn)
    burst_worker('default')
    queues.enqueue('ping', delay=timedelta(minutes=5), connection=redis_conn)
    data = scheduler.describe(redis_conn)
    entries = {entry['id']: entry for entry in data['entries']}
    assert entries['ping-often']['last_run']['status'] == 'finished'
    assert entries['ping-often']['next_run_utc'] == START + timedelta(seconds=60)
    assert entries['ping-daily']['when'] == 'cron 0 1 * * * (UTC)' and entries['ping-daily']['last_run'] is None
    assert [one['source'] for one in data['one_off']] == ['rq (retry or delay)']


def test_describe_gives_a_last_run_permanent_error_in_its_own_words(redis_conn, database, now, burst_worker):
    scheduler.register(
        redis_conn,
        [Entry('cleanup-refused', 'rqjobs.minimap.cleanup_old_minimaps', every=30, kwargs={'days_to_keep': 0})],
    )
    now(30)
    scheduler.tick(redis_conn)
    burst_worker('minimap')
    (last,) = [entry['last_run'] for entry in scheduler.describe(redis_conn)['entries']]
    assert (last['status'], last['error']) == (
        'failed',
        'days_to_keep must be a whole number of days, at least 1 (got 0); for example 90.',
    )


def test_cli_schedule_show_prints_the_last_status_as_a_word(redis_conn, database, now, burst_worker):
    scheduler.register(redis_conn, SMALL_PLAN)
    now(30)
    scheduler.tick(redis_conn)
    burst_worker('default')
    shown = CliRunner().invoke(cli.main, ['schedule', 'show'])
    (row,) = [line for line in shown.output.splitlines() if line.startswith('ping-often ')]
    assert shown.exit_code == 0 and row.split()[-1] == 'finished', shown.output


def test_cli_schedule_commands(redis_conn):
    runner = CliRunner()
    registered = runner.invoke(cli.main, ['schedule', 'register'])
    assert registered.exit_code == 0 and f'{len(scheduler.PLAN)} added' in registered.output
    shown = runner.invoke(cli.main, ['schedule', 'show'])
    assert shown.exit_code == 0 and 'process-access-logs' in shown.output and 'every 30 s' in shown.output
    as_json = runner.invoke(cli.main, ['schedule', 'show', '--json'])
    assert {e['id'] for e in json.loads(as_json.output[as_json.output.index('{') :])['entries']} == {
        entry.id for entry in scheduler.PLAN
    }
    cleared = runner.invoke(cli.main, ['schedule', 'clear'])
    assert cleared.exit_code == 0 and f'{len(scheduler.PLAN)} plan entries removed' in cleared.output
    empty = runner.invoke(cli.main, ['schedule', 'show'])
    assert 'No plan entries' in empty.output


def test_cli_bad_schedule_setting_exits_2(env):
    env.setenv('JOBS_SCHEDULE', 'nope=1')
    settings.reset()
    result = CliRunner().invoke(cli.main, ['schedule', 'register'])
    assert result.exit_code == 2 and 'JOBS_SCHEDULE' in result.output


@pytest.mark.parametrize('command', [['scheduler', '--burst'], ['schedule', 'register']])
def test_a_registration_lock_held_elsewhere_is_named_not_taken_for_a_lost_redis(redis_conn, monkeypatch, command):
    other = redis_conn.lock(scheduler.REGISTER_LOCK, timeout=60)
    assert other.acquire(blocking=False)
    monkeypatch.setattr(scheduler, 'REGISTER_LOCK_WAIT', 0.2)
    refused = CliRunner().invoke(cli.main, command)
    assert refused.exit_code == 1 and 'Traceback' not in refused.output, refused.output
    assert refused.output.splitlines()[-1] == (
        "Error: Another scheduler (or `rqjobs schedule register`) held the plan's registration lock for 0.2 s; nothing "
        'was registered. Check that only one `rqjobs scheduler` runs, then try again.'
    )
    assert scheduled(redis_conn) == {}
    other.release()
    assert CliRunner().invoke(cli.main, command).exit_code == 0


def test_a_registration_that_outlasts_its_lock_still_registers_and_says_so(redis_conn, monkeypatch, caplog):
    first_time = scheduler.first_time

    def expiring(entry, now):
        redis_conn.delete(scheduler.REGISTER_LOCK)  # as if the registration had run past the lock's 30 s
        return first_time(entry, now)

    monkeypatch.setattr(scheduler, 'first_time', expiring)
    result = CliRunner().invoke(cli.main, ['scheduler', '--burst'])
    assert result.exit_code == 0, result.output
    assert set(scheduled(redis_conn)) == {entry.id for entry in scheduler.PLAN}
    assert 'registering the plan outlasted its lock' in caplog.text
