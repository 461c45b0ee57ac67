"""Operating the system from the command line: enqueue and wait, single jobs, inspection, requeue, cleanup."""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import zlib
from datetime import UTC, timedelta

import pytest
from click.testing import CliRunner
from rq.job import JobStatus
from rq.suspension import is_suspended

import cli
from helpers import ROOT, run_jobs_cli, wait_until
from rqjobs import clock, control, monitor, queues, settings
from rqjobs.exceptions import InvalidJobId
from rqjobs.repository import storage

pytestmark = pytest.mark.db

OPS_JOBS = '''
import os
import time

from rqjobs.exceptions import PermanentJobError
from rqjobs.queues import report_progress

JOBS = ('nap', 'explode', 'count_in')


def nap(seconds: float = 0.0) -> dict:
    """Sleep, reporting progress."""
    report_progress('napping', 50)
    time.sleep(seconds)
    return {'slept': seconds}


def explode(reason: str = 'boom') -> None:
    """Fail with a clear error."""
    raise ValueError(f'exploded: {reason}')


def count_in(path: str) -> int:
    """Return the number written in a file; a missing file is bad input."""
    if not os.path.exists(path):
        raise PermanentJobError(f'No file at {path}.')
    with open(path) as file:
        return int(file.read())
'''


@pytest.fixture
def ops(env, tmp_path, monkeypatch, redis_conn, database):
    """A job module of the operator's own (a sleeper and a failure) on the `ops` queue, for workers in and out."""
    (tmp_path / 'ops_jobs.py').write_text(textwrap.dedent(OPS_JOBS))
    monkeypatch.syspath_prepend(str(tmp_path))
    env.setenv('PYTHONPATH', str(tmp_path))
    env.setenv('JOBS_EXTRA_MODULES', 'ops_jobs=ops')
    settings.reset()
    yield redis_conn
    sys.modules.pop('ops_jobs', None)


def invoke(*args):
    result = CliRunner().invoke(cli.main, list(args))
    return result


def data(result):
    return json.loads(result.stdout)


@pytest.fixture
def worker_process(ops):
    """A real `jobs worker` process on the `ops` queue, stopped afterwards."""
    process = subprocess.Popen(
        [sys.executable, '-c', 'import cli; cli.main()', '-q', 'worker', 'ops', 'default'],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    yield process
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=30)


# ---- Parsing ----


@pytest.mark.parametrize(
    'text, seconds', [('90', 90), ('90s', 90), ('5m', 300), ('2h', 7200), ('1d', 86400), ('1.5h', 5400)]
)
def test_durations(text, seconds):
    assert control.parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize('text', ['', 'soon', '-5m', '0', '5 weeks', '400d'])
def test_bad_durations(text):
    with pytest.raises(ValueError, match='for example'):
        control.parse_duration(text)


def test_times_are_utc_unless_they_say_otherwise():
    assert control.parse_time('2026-12-01T02:30').isoformat() == '2026-12-01T02:30:00'
    assert control.parse_time('2026-12-01T03:30+01:00').isoformat() == '2026-12-01T02:30:00'
    assert control.parse_time('2026-12-01T02:30Z').isoformat() == '2026-12-01T02:30:00'
    with pytest.raises(ValueError, match='for example 2026-12-01T02:30'):
        control.parse_time('tomorrow')


# ---- enqueue --at / --in / --wait ----


def test_enqueue_later(ops):
    later = invoke('enqueue', 'nap', '--in', '5m', '--json')
    assert later.exit_code == 0 and data(later)['status'] == 'scheduled'
    at = invoke('enqueue', 'nap', '--at', '2030-01-01T00:00', '--json')
    assert at.exit_code == 0 and data(at)['status'] == 'scheduled'
    scheduled = queues.get_queue('ops', ops).scheduled_job_registry
    assert len(scheduled.get_job_ids()) == 2


@pytest.mark.parametrize(
    'args, message',
    [
        (['--in', 'soon'], 'is not a duration'),
        (['--at', 'tomorrow'], 'is not an ISO 8601 time'),
        (['--at', '2030-01-01', '--in', '5m'], 'either --at or --in'),
        (['--timeout', '5'], '--timeout goes with --wait'),
    ],
)
def test_enqueue_refuses_bad_options(ops, args, message):
    result = invoke('enqueue', 'nap', *args)
    assert result.exit_code == 2 and message in result.output
    assert ops.llen('rq:queue:ops') == 0


@pytest.mark.slow
def test_enqueue_wait_prints_the_result_or_the_error(ops, worker_process):
    done = invoke('enqueue', 'nap', '0.2', '--wait', '--timeout', '60')
    assert done.exit_code == 0, done.output
    assert '"slept": 0.2' in done.output
    failed = invoke('enqueue', 'explode', '"disk full"', '--no-retry', '--wait', '--timeout', '60')
    assert failed.exit_code == 1
    assert 'ValueError: exploded: disk full' in failed.output


def test_statuses_print_as_words(ops):
    later = invoke('enqueue', 'nap', '--in', '5m')
    assert later.exit_code == 0 and later.output.rstrip().endswith('(scheduled).'), later.output
    job_id = later.output.split(' as job ')[1].split()[0]
    stop = invoke('job', 'stop', job_id)
    assert stop.exit_code == 1 and f'Job {job_id} is scheduled, not running' in stop.output
    assert invoke('job', 'cancel', job_id).output.endswith(f'Job {job_id} (scheduled) cancelled.\n')
    refused = invoke('job', 'cancel', job_id)
    assert refused.exit_code == 1 and f'Job {job_id} is canceled;' in refused.output
    assert invoke('job', 'delete', job_id).output.endswith(f'Job {job_id} (canceled) deleted.\n')
    assert 'JobStatus' not in later.output + stop.output + refused.output


def test_enqueue_wait_without_a_worker_says_queued(ops):
    result = invoke('enqueue', 'nap', '--wait', '--timeout', '0.3')
    assert result.exit_code == cli.EXIT_TIMEOUT
    lines = result.output.splitlines()[2:]
    assert lines[:2] == ['No worker listens on queue ops; start one with `rqjobs worker ops`.', 'queued'], lines
    assert len(lines) == 3 and 'did not end within 0.3 s' in lines[2]


@pytest.mark.slow
def test_enqueue_wait_shows_a_permanent_error_in_one_line(ops, worker_process):
    wait_until(lambda: monitor.queue_has_worker(ops, 'ops'), 30, 'the worker registered itself')
    refused = invoke('enqueue', 'generate_statistics', 'yesterday', '--queue', 'ops', '--wait', '--timeout', '60')
    assert refused.exit_code == 1
    assert re.fullmatch(
        r"Job \S+ failed: Date 'yesterday' is not a day written as YYYY-MM-DD; for example "
        r'\d{4}-\d\d-\d\d\.',
        refused.output.splitlines()[-1],
    ), refused.output
    assert 'Traceback' not in refused.output and 'No worker listens' not in refused.output
    as_json = invoke(
        'enqueue', 'generate_statistics', 'yesterday', '--queue', 'ops', '--wait', '--timeout', '60', '--json'
    )
    assert data(as_json)['permanent_error'].startswith("Date 'yesterday' is not a day")
    unexpected = invoke('enqueue', 'explode', '"disk full"', '--no-retry', '--wait', '--timeout', '60')
    assert unexpected.exit_code == 1 and 'Traceback' in unexpected.output


def test_enqueue_wait_times_out_with_its_own_code(ops):
    result = invoke('enqueue', 'nap', '--wait', '--timeout', '0.3')
    assert result.exit_code == cli.EXIT_TIMEOUT == 3
    assert 'did not end within 0.3 s' in result.output


def test_waiting_ends_at_once_on_a_cancelled_job_and_gives_up_at_its_timeout(ops):
    waiting = queues.enqueue('nap', [1], connection=ops)
    seen = []
    assert monitor.wait_for_job(ops, waiting.id, timeout=0, on_update=seen.append) is None  # no worker: still queued
    assert [details['status'] for details in seen] == ['queued']
    control.cancel_job(ops, waiting.id)
    assert monitor.wait_for_job(ops, waiting.id)['status'] == 'canceled'  # no timeout: returns because it ended


# ---- Single jobs ----


def test_job_show_cancel_delete(ops):
    job = queues.enqueue('nap', [1], connection=ops)
    shown = invoke('job', 'show', job.id, '--json')
    assert shown.exit_code == 0
    details = data(shown)
    assert (details['status'], details['queue'], details['job'], details['args']) == (
        'queued',
        'ops',
        'ops_jobs.nap',
        [1],
    )
    assert details['retries_left'] == queues.RETRY_MAX
    human = invoke('job', 'show', job.id)
    assert 'status:       queued' in human.output
    stop = invoke('job', 'stop', job.id)
    assert stop.exit_code == 1 and 'not running' in stop.output
    assert invoke('job', 'cancel', job.id).exit_code == 0
    assert job.get_status() == JobStatus.CANCELED
    again = invoke('job', 'cancel', job.id)
    assert again.exit_code == 1 and 'only queued, scheduled, deferred or rate-limited' in again.output
    assert invoke('job', 'delete', job.id).exit_code == 0
    gone = invoke('job', 'show', job.id)
    assert gone.exit_code == 1 and 'No job' in gone.output


def test_a_permanent_error_is_one_line_in_job_show_and_the_failed_list(ops, burst_worker):
    refused = queues.enqueue('generate_statistics', ['yesterday'], queue='ops', connection=ops)
    unexpected = queues.enqueue('explode', ['disk full'], retry=None, connection=ops)
    burst_worker('ops')
    message = r"Date 'yesterday' is not a day written as YYYY-MM-DD; for example \d{4}-\d\d-\d\d\."
    shown = invoke('job', 'show', refused.id)
    assert shown.exit_code == 0 and 'Traceback' not in shown.output, shown.output
    assert re.fullmatch(r'error: +' + message, shown.output.splitlines()[-1]), shown.output
    as_json = data(invoke('job', 'show', refused.id, '--json'))
    assert re.fullmatch(message, as_json['permanent_error']) and 'Traceback' in as_json['error']
    traced = invoke('job', 'show', unexpected.id)
    assert 'Traceback' in traced.output and traced.output.splitlines()[-1] == 'ValueError: exploded: disk full'
    errors = {row['id']: row['error'] for row in data(invoke('inspect', 'failed', '--queue', 'ops', '--json'))}
    assert re.fullmatch(message, errors[refused.id]) and errors[unexpected.id] == 'ValueError: exploded: disk full'
    assert re.search(r'\s' + message, invoke('inspect', 'failed').output)


def test_a_requeued_job_does_not_keep_its_old_permanent_error(ops, burst_worker, tmp_path):
    note = tmp_path / 'note'
    job = queues.enqueue('count_in', [str(note)], retry=None, connection=ops)
    burst_worker('ops')
    assert invoke('job', 'show', job.id).output.splitlines()[-1] == f'error:        No file at {note}.'
    note.write_text('many')
    assert invoke('requeue', job.id).exit_code == 0
    burst_worker('ops')
    shown = invoke('job', 'show', job.id)
    assert 'Traceback' in shown.output and 'No file at' not in shown.output, shown.output
    assert shown.output.splitlines()[-1] == "ValueError: invalid literal for int() with base 10: 'many'"


@pytest.mark.slow
def test_job_stop_stops_a_running_job(ops, worker_process):
    job = queues.enqueue('nap', [60], connection=ops)
    wait_until(lambda: job.get_status() == JobStatus.STARTED, 30, 'the job started')
    active = invoke('inspect', 'active', '--json')
    assert [row['job_id'] for row in data(active)] == [job.id]
    assert data(active)[0]['progress']['step'] == 'napping'
    refused = invoke('job', 'delete', job.id)
    assert refused.exit_code == 1 and 'stop it first' in refused.output
    assert invoke('job', 'stop', job.id).exit_code == 0
    wait_until(lambda: job.get_status() != JobStatus.STARTED, 30, 'the job left Started')
    assert job.get_status() == JobStatus.STOPPED


# ---- Inspection ----


def test_inspect_stats_and_failed(ops, burst_worker):
    for seconds in (0, 0, 0.05):
        queues.enqueue('nap', [seconds], connection=ops)
    queues.enqueue('explode', ['bad input'], retry=None, connection=ops)
    burst_worker('ops')
    stats = data(invoke('inspect', 'stats', '--json'))
    by_job = {row['job']: row for row in stats['jobs']}
    assert (by_job['ops_jobs.nap']['count'], by_job['ops_jobs.nap']['failed']) == (3, 0)
    assert by_job['ops_jobs.explode']['failure_rate'] == 1.0
    assert by_job['ops_jobs.nap']['p95_seconds'] >= by_job['ops_jobs.nap']['p50_seconds'] >= 0
    failed = data(invoke('inspect', 'failed', '--queue', 'ops', '--json'))
    assert [(row['job'], row['error']) for row in failed] == [('ops_jobs.explode', 'ValueError: exploded: bad input')]
    human = invoke('inspect', 'failed')
    assert 'ValueError: exploded: bad input' in human.output
    assert 'ops_jobs.nap' in invoke('inspect', 'stats').output


def test_inspect_scheduled_lists_plan_and_delayed_jobs(ops):
    import scheduler

    scheduler.register(ops, [scheduler.Entry('nap-often', 'ops_jobs.nap', every=60)])
    queues.enqueue('nap', delay=timedelta(minutes=5), connection=ops)
    result = invoke('inspect', 'scheduled', '--json')
    assert result.exit_code == 0
    listed = data(result)
    assert [entry['id'] for entry in listed['entries']] == ['nap-often']
    assert [one['queue'] for one in listed['one_off']] == ['ops']


@pytest.mark.parametrize(
    'args',
    [
        ['inspect', 'failed', '--limit', '0'],
        ['inspect', 'failed', '--limit', '10001'],
        ['inspect', 'failed', '--queue', 'nope'],
        ['inspect', 'stats', '--queue', 'nope'],
        ['inspect', 'nothing'],
    ],
)
def test_inspect_refuses_bad_filters(ops, args):
    assert invoke(*args).exit_code == 2


# ---- Requeue and cleanup ----


def test_requeue(ops, burst_worker):
    first = queues.enqueue('explode', retry=None, connection=ops)
    second = queues.enqueue('explode', retry=None, connection=ops)
    burst_worker('ops')
    assert invoke('requeue').exit_code == 2
    assert invoke('requeue', '--all', first.id).exit_code == 2
    missing = invoke('requeue', 'nope')
    assert missing.exit_code == 1 and 'nope' in missing.output
    assert 'requeued' in invoke('requeue', first.id).output
    assert first.get_status() == JobStatus.QUEUED
    assert invoke('requeue', '--all', '--queue', 'ops').stdout.startswith('1 failed jobs requeued')
    assert second.get_status() == JobStatus.QUEUED
    assert invoke('requeue', '--all', '--queue', 'nope').exit_code == 2


def test_cleanup_removes_only_what_it_is_told(ops, burst_worker, monkeypatch):
    done = queues.enqueue('nap', connection=ops)
    old = queues.enqueue('explode', retry=None, connection=ops)
    burst_worker('ops')
    assert invoke('cleanup').exit_code == 2
    assert invoke('cleanup', '--failed-older-than', 'soon').exit_code == 2
    later = clock.utcnow() + timedelta(days=8)
    monkeypatch.setattr(clock, 'utcnow', lambda: later)
    dry = invoke('cleanup', '--failed-older-than', '7d', '--finished', '--dry-run', '--json')
    assert data(dry) == {'failed_jobs': [old.id], 'finished_jobs': [done.id]}
    assert old.get_status() == JobStatus.FAILED and done.get_status() == JobStatus.FINISHED
    real = invoke('cleanup', '--failed-older-than', '7d')
    assert real.exit_code == 0 and 'Removed: 1 failed jobs' in real.output
    assert not ops.exists(f'rq:job:{old.id}') and done.get_status() == JobStatus.FINISHED
    assert 'Removed: 1 finished jobs' in invoke('cleanup', '--finished').output


def test_cleanup_dead_workers_and_orphan_clones(ops, local, sample_repo, burst_worker):
    from rqjobs import warehouse as warehouses

    ops.sadd('rq:workers', 'rq:worker:ghost')
    ops.sadd('rq:workers:ops', 'rq:worker:ghost')
    row = warehouses.submit_warehouse(str(sample_repo), connection=ops)
    burst_worker('warehouse')
    root = settings.get_settings().repo_root
    orphan, orphan_partial, live_partial = root / 'no-such-warehouse', root / 'gone.partial', root / f'{row.id}.partial'
    # What a killed background removal left in the trash: no clone, but removed too.
    leftover = root / storage.TRASH_DIR / 'w-old.0123456789ab'
    for directory in (orphan, orphan_partial, live_partial, leftover / 'docs'):
        directory.mkdir(parents=True)
    dry = data(invoke('cleanup', '--dead-workers', '--orphan-clones', '--dry-run', '--json'))
    assert dry == {'dead_workers': ['ghost'], 'orphan_clones': ['gone.partial', 'no-such-warehouse']}
    assert orphan.exists() and ops.sismember('rq:workers', 'rq:worker:ghost')
    invoke('cleanup', '--dead-workers', '--orphan-clones')
    for remover in storage._removers:
        remover.wait(timeout=60)
    assert not orphan.exists() and not orphan_partial.exists() and (root / row.id).is_dir()
    assert list((root / storage.TRASH_DIR).iterdir()) == []
    assert live_partial.is_dir()  # maybe a clone in progress: the warehouse's next try removes it
    assert not ops.sismember('rq:workers', 'rq:worker:ghost') and not ops.sismember('rq:workers:ops', 'rq:worker:ghost')


def test_suspend_and_resume(ops):
    assert 'for 60 s' in invoke('suspend', '--duration', '60').output
    assert is_suspended(ops)
    assert invoke('resume').stdout.strip() == 'Workers resumed.'
    assert not is_suspended(ops)
    assert invoke('resume').stdout.strip() == 'Workers were not suspended.'
    assert invoke('suspend', '--duration', '0').exit_code == 2


def test_time_helpers_use_the_clock(monkeypatch):
    moment = clock.utcnow()
    monkeypatch.setattr(clock, 'utcnow', lambda: moment)
    assert clock.utcnow().replace(tzinfo=UTC).tzinfo is UTC


# ---- Jobs that cannot be read ----


def forge(redis_conn, job, fields=None):
    """Overwrite fields of a job's hash in Redis with bytes rq cannot decode, as a forged or corrupted job."""
    redis_conn.hset(f'rq:job:{job.id}', mapping=fields or {'exc_info': zlib.compress(b'\xff\xfe not text')})
    return job.id


def test_operator_commands_pass_over_an_unreadable_job(ops, burst_worker):
    failed = queues.enqueue('explode', retry=None, connection=ops)
    forged = forge(ops, queues.enqueue('nap', connection=ops))
    burst_worker('ops')
    delayed = forge(
        ops, queues.enqueue('nap', delay=timedelta(minutes=5), connection=ops), {'created_at': b'not a date'}
    )

    listed = data(invoke('inspect', 'failed', '--json'))
    assert {row['id']: row['job'] for row in listed} == {failed.id: 'ops_jobs.explode', forged: None}
    assert [row['error'] for row in listed if row['id'] == forged][0].startswith(f'Job {forged} cannot be read')
    for args in (
        ['status'],
        ['inspect', 'stats'],
        ['inspect', 'active'],
        ['inspect', 'scheduled'],
        ['cleanup', '--failed-older-than', '1s', '--finished', '--dry-run'],
    ):
        result = invoke(*args)
        assert result.exit_code == 0, (args, result.output)
    for args in (['job', 'show', forged], ['job', 'cancel', delayed], ['job', 'stop', forged]):
        refused = invoke(*args)
        assert refused.exit_code == 1 and refused.stderr.splitlines()[-1].startswith('Error: Job '), refused.output
        assert 'cannot be read from Redis' in refused.stderr and 'Traceback' not in refused.output

    requeued = invoke('requeue', '--all')
    assert requeued.exit_code == 1 and '1 requeued; 1 cannot be read and stay failed' in requeued.output
    assert failed.get_status() == JobStatus.QUEUED

    for job_id in (forged, delayed):
        deleted = invoke('job', 'delete', job_id)
        assert deleted.exit_code == 0, deleted.output
        assert not ops.exists(f'rq:job:{job_id}')
    assert forged not in queues.get_queue('ops', ops).failed_job_registry.get_job_ids()
    assert delayed not in queues.get_queue('ops', ops).scheduled_job_registry.get_job_ids()


def test_workers_and_schedulers_pass_over_unreadable_jobs(ops):
    import scheduler

    # Due in rq's scheduled jobs, in rq-scheduler's, and abandoned in the started jobs: all unreadable.
    due = forge(ops, queues.enqueue('nap', delay=timedelta(minutes=5), connection=ops))
    ops.zadd('rq:scheduled:ops', {due: 1})
    abandoned = forge(ops, queues.enqueue('nap', connection=ops))
    ops.lrem('rq:queue:ops', 0, abandoned)
    ops.zadd('rq:wip:ops', {f'{abandoned}:0123456789abcdef': 1})  # as rq keeps it: job id and execution id
    ops.hset(f'rq:job:{abandoned}', 'status', 'started')
    # Left in the intermediate queue by a worker that crashed on it before unreadable jobs were set aside.
    stuck = forge(ops, queues.enqueue('nap', connection=ops), {'data': b'\xff'})
    ops.lmove('rq:queue:ops', queues.get_queue('ops', ops).intermediate_queue_key, 'RIGHT', 'LEFT')
    forge(ops, scheduler.build_scheduler(ops).enqueue_at(clock.utcnow() - timedelta(minutes=1), 'ops_jobs.nap'))
    good = queues.enqueue('nap', connection=ops)

    assert scheduler.tick(ops) == []
    # A real worker process, which runs its maintenance (abandoned jobs) and rq's scheduler before the queue.
    run = run_jobs_cli('worker', '--burst', 'ops')
    assert run.returncode == 0 and 'Traceback' not in run.stderr, run.stderr
    assert good.get_status() == JobStatus.FINISHED
    failed = queues.get_queue('ops', ops).failed_job_registry.get_job_ids()
    for job_id in (due, abandoned, stuck):
        assert job_id in failed
        assert f'{job_id}: set aside as failed on queue ops' in run.stderr
    assert not ops.lrange(queues.get_queue('ops', ops).intermediate_queue_key, 0, -1)
    assert not ops.zrange('rq:wip:ops', 0, -1)


@pytest.mark.parametrize(
    'args', [['job', 'show'], ['job', 'cancel'], ['job', 'stop'], ['job', 'delete'], ['requeue', 'fine-id']]
)
@pytest.mark.parametrize('job_id', ['a b', '../x', 'x:y', ''])
def test_commands_refuse_an_id_rq_cannot_take(redis_conn, args, job_id):
    result = invoke(*args, job_id)
    assert result.exit_code == 2, result.output
    assert f'{job_id!r} is not a job id: an id holds only letters, digits, _ and -' in result.stderr
    assert 'Traceback' not in result.output


@pytest.mark.parametrize(
    'action', [control.cancel_job, control.stop_job, control.delete_job, control.fetch], ids=lambda f: f.__name__
)
@pytest.mark.parametrize('job_id', ['a b', '../x', 'x:y', ''])
def test_the_job_actions_refuse_an_id_rq_cannot_take_from_python_too(redis_conn, action, job_id):
    with pytest.raises(InvalidJobId, match='is not a job id: an id holds only letters, digits, _ and -'):
        action(redis_conn, job_id)
