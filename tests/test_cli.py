import json
import os
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import cli
from helpers import ROOT, run_jobs_cli


@pytest.fixture
def runner():
    return CliRunner()


def invoke(runner, *args):
    return runner.invoke(cli.main, list(args), catch_exceptions=False)


def test_help_touches_nothing(tmp_path, env):
    env.setenv('REDIS_URL', 'redis://127.0.0.1:1/0')
    env.setenv('JOBS_DATA_DIR', str(tmp_path / 'untouched'))
    started = time.monotonic()
    result = run_jobs_cli('--help', env=os.environ.copy())
    assert result.returncode == 0, result.stderr
    assert 'enqueue' in result.stdout and 'worker' in result.stdout
    assert time.monotonic() - started < 5
    assert not (tmp_path / 'untouched').exists()


def test_importing_the_project_touches_nothing(tmp_path, env):
    env.setenv('JOBS_DATA_DIR', str(tmp_path / 'untouched'))
    env.setenv('REDIS_URL', 'redis://127.0.0.1:1/0')
    code = (
        'import cli, models, scheduler, rqjobs.queues, rqjobs.worker, rqjobs.system, rqjobs.migration, rqjobs.monitor'
    )
    result = subprocess.run(
        [sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / 'untouched').exists()


def imported_command_modules(*args: str) -> list[str]:
    """Run `rqjobs ARGS` in a fresh process; return the command modules it imported (shared helpers aside)."""
    code = (
        'import atexit, json, sys\n'
        'atexit.register(lambda: print(json.dumps(sorted(name for name in sys.modules if name.startswith('
        '"rqjobs.commands.") and name != "rqjobs.commands.helpers")), file=sys.stderr))\n'
        'import cli\n'
        'cli.main()'
    )
    result = subprocess.run(
        [sys.executable, '-c', code, *args], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stderr.splitlines()[-1])


def test_help_imports_no_command_module(env):
    env.setenv('REDIS_URL', 'redis://127.0.0.1:1/0')
    assert imported_command_modules('--help') == []


@pytest.mark.parametrize(
    'group, module',
    [
        ('warehouse', 'warehouse'),
        ('db', 'db'),
        ('minimap', 'minimap'),
        ('job', 'jobs'),
        ('inspect', 'jobs'),
        ('schedule', 'schedule'),
        ('stats', 'stats'),
        ('logs', 'logs'),
        ('redis', 'redis'),
    ],
)
def test_a_group_help_imports_only_its_own_module(env, group, module):
    env.setenv('REDIS_URL', 'redis://127.0.0.1:1/0')
    assert imported_command_modules(group, '--help') == [f'rqjobs.commands.{module}']


def test_the_root_help_lists_each_command_with_its_own_summary():
    for name, (_, summary) in cli.COMMANDS.items():
        command = cli.main.get_command(click.Context(cli.main), name)
        assert command.name == name
        assert ' '.join(command.help.split('\n\n')[0].split()) == summary, name


@pytest.mark.db
def test_db_init_is_safe_twice(runner, database):
    first = invoke(runner, 'db', 'init')
    second = invoke(runner, 'db', 'init')
    assert first.exit_code == 0 and second.exit_code == 0
    assert ': 0 tables created,' in second.output


def test_unknown_job_exits_2_listing_known_ones(runner, redis_conn):
    result = runner.invoke(cli.main, ['enqueue', 'no_such_job'])
    assert result.exit_code == 2
    assert "Unknown job 'no_such_job'" in result.output
    assert 'ping' in result.output and 'create_schema' in result.output


def test_wrong_arguments_exit_2_with_the_signature(runner, redis_conn):
    result = runner.invoke(cli.main, ['enqueue', 'ping', '42'])
    assert result.exit_code == 2
    assert 'expected ping()' in result.output
    result = runner.invoke(cli.main, ['enqueue', 'ping', '--kwarg', 'oops'])
    assert result.exit_code == 2
    assert 'NAME=VALUE' in result.output
    assert redis_conn.llen('rq:queue:default') == 0


def test_enqueue_without_a_name_explains(runner):
    result = runner.invoke(cli.main, ['enqueue'])
    assert result.exit_code == 2
    assert 'jobs enqueue --list' in result.output


def test_enqueue_list_shows_signatures(runner):
    result = invoke(runner, 'enqueue', '--list')
    assert result.exit_code == 0
    assert 'ping()' in result.output and 'migration' in result.output


def test_bad_setting_exits_2_naming_the_variable(runner, env):
    env.setenv('JOB_TIMEOUT', 'soon')
    result = runner.invoke(cli.main, ['status'])
    assert result.exit_code == 2
    assert 'JOB_TIMEOUT' in result.output and 'JOB_TIMEOUT=1800' in result.output


def test_redis_down_fails_fast_with_a_message(env):
    env.setenv('REDIS_URL', 'redis://user:hunter2@127.0.0.1:1/0')
    started = time.monotonic()
    result = run_jobs_cli('status', env=os.environ.copy())
    assert result.returncode == 1
    assert time.monotonic() - started < 10
    assert 'Cannot reach Redis at redis://user:***@127.0.0.1:1/0' in result.stderr
    assert 'hunter2' not in result.stderr + result.stdout
    assert 'Traceback' not in result.stderr


@pytest.mark.db
@pytest.mark.slow
def test_enqueue_worker_status_end_to_end(redis_conn, database):
    """A job enqueued by `jobs enqueue`, run by a real `jobs worker --burst` process, shows in `jobs status`."""
    enqueued = run_jobs_cli('enqueue', 'ping', '--json')
    assert enqueued.returncode == 0, enqueued.stderr
    job = json.loads(enqueued.stdout)
    assert job['queue'] == 'default' and job['status'] == 'queued'
    assert 'Redis: unix://' in enqueued.stderr

    worked = run_jobs_cli('worker', '--burst')
    assert worked.returncode == 0, worked.stderr
    assert job['id'] in worked.stderr

    status = run_jobs_cli('status', '--json')
    assert status.returncode == 0, status.stderr
    counts = {row['queue']: row for row in json.loads(status.stdout)['queues']}
    assert counts['default']['finished'] == 1
    assert counts['default']['queued'] == 0 and counts['default']['failed'] == 0

    human = run_jobs_cli('status')
    assert human.returncode == 0
    assert 'QUEUE' in human.stdout and 'default' in human.stdout


def test_status_lists_a_live_worker_and_its_host(runner, redis_conn, env):
    from rqjobs import settings
    from rqjobs.worker import build_worker

    env.setenv('JOBS_HOST_NAME', 'Build.Example.org')
    settings.reset()
    worker = build_worker(redis_conn, ['default'], name='w-test')
    worker.register_birth()
    try:
        result = invoke(runner, 'status', '--json')
        data = json.loads(result.output[result.output.index('{') :])
        assert [w['name'] for w in data['workers']] == ['w-test']
        assert data['workers'][0]['queues'] == ['host-build-example-org', 'default']
        assert [(h['host'], h['workers'], h['clones']) for h in data['hosts']] == [
            ('build-example-org', ['w-test'], None)
        ]
        assert data['warnings'] == []  # one host alone shares nothing
        assert [row['queue'] for row in data['queues']][-1] == 'host-build-example-org'
        human = invoke(runner, 'status').output
        assert 'build-example-org' in human and 'Warning' not in human
    finally:
        worker.register_death()


@pytest.mark.parametrize('processes', ['1', '2'])
def test_an_in_process_worker_refuses_queues_whose_jobs_want_a_fork(runner, redis_conn, env, processes):
    result = invoke(runner, 'worker', '--in-process', '--processes', processes, 'statistics', 'warehouse')
    assert result.exit_code == 2
    assert result.output.splitlines()[-1] == (
        'Error: An --in-process worker runs only the short jobs of access_log, statistics, not those of warehouse: '
        'run them with a forking worker (rqjobs worker warehouse).'
    )
    assert redis_conn.scard('rq:workers') == 0


def test_an_in_process_worker_serves_its_queues_alone(redis_conn, env):
    from rqjobs.worker import JobsInProcessWorker, build_worker

    worker = build_worker(redis_conn, (), in_process=True)
    assert isinstance(worker, JobsInProcessWorker)
    # Without the host's queue, whose chores (counting a host's clones) may take long.
    assert worker.queue_names() == ['access_log', 'statistics']


def test_embedded_redis_is_used_without_redis_url(env, tmp_path):
    env.delenv('REDIS_URL')
    environ = os.environ.copy()
    try:
        first = run_jobs_cli('enqueue', 'ping', env=environ)
        assert first.returncode == 0, first.stderr
        assert f'embedded (unix://{tmp_path / "var" / "redis" / "redis.sock"})' in first.stderr
        status = run_jobs_cli('status', '--json', env=environ)
        queued = {row['queue']: row['queued'] for row in json.loads(status.stdout)['queues']}
        assert queued['default'] == 1
    finally:
        stopped = run_jobs_cli('redis', 'stop', env=environ)
    assert stopped.returncode == 0 and 'stopped' in stopped.stdout


def test_redis_stop_refuses_when_redis_url_is_set(runner):
    result = runner.invoke(cli.main, ['redis', 'stop'])
    assert result.exit_code == 2
    assert 'REDIS_URL is set' in result.output


def test_redis_url_prints_the_embedded_server_for_rq(env, tmp_path):
    env.delenv('REDIS_URL')
    environ = os.environ.copy()
    try:
        result = run_jobs_cli('redis', 'url', env=environ)
        assert result.returncode == 0, result.stderr
        assert result.stdout == f'unix://{tmp_path / "var" / "redis" / "redis.sock"}\n'
        # What README tells a person to type: rq's own tools reach the same server.
        info = subprocess.run(
            [str(Path(sys.executable).parent / 'rq'), 'info', '--url', result.stdout.strip()],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert info.returncode == 0, info.stderr
        assert '0 workers' in info.stdout
    finally:
        run_jobs_cli('redis', 'stop', env=environ)


def test_redis_url_prints_redis_url_when_it_is_set(runner, env):
    env.setenv('REDIS_URL', 'redis://jobs:secret@redis.internal:6379/2')
    result = runner.invoke(cli.main, ['redis', 'url'])
    assert result.exit_code == 0
    assert result.output == 'redis://jobs:secret@redis.internal:6379/2\n'


def test_bash_completes_the_rqjobs_command():
    """`jobs` is a bash builtin; the `rqjobs` name gets click's completion as docs/cli.md says."""
    script = (
        'eval "$(_RQJOBS_COMPLETE=bash_source rqjobs)"; COMP_WORDS=(rqjobs redis ""); COMP_CWORD=2; '
        '_rqjobs_completion rqjobs; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    environ = dict(os.environ, PATH=f'{Path(sys.executable).parent}{os.pathsep}{os.environ.get("PATH", "")}')
    result = subprocess.run(
        ['bash', '--norc', '--noprofile', '-c', script],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert {'url', 'stop'} <= set(result.stdout.split())


@pytest.mark.db
def test_hints_name_the_command_a_shell_does_not_shadow(runner, redis_conn, database):
    """Typed in bash, `jobs worker` runs the builtin: the hints a person copies say `rqjobs`."""
    status = runner.invoke(cli.main, ['status'])
    assert status.exit_code == 0 and 'No workers. Start one with `rqjobs worker`.' in status.stdout
    listed = runner.invoke(cli.main, ['warehouse', 'list'])
    assert listed.exit_code == 0 and listed.stdout == 'No warehouses. Add one with `rqjobs warehouse add URL`.\n'


@pytest.mark.parametrize(
    'args',
    [
        ['warehouse', 'show', b'\xff'],
        ['warehouse', 'reprocess', b'\xff'],
        ['warehouse', 'remove', b'caf\xe9'],
        ['minimap', 'show', b'\xff'],
        ['minimap', 'regenerate', b'\xff'],
        ['minimap', 'validate', b'\xff'],
        ['warehouse', 'add', 'https://github.com/example/project', '--user', b'\xff'],
        ['warehouse', 'add', 'https://github.com/example/project', '--git-user', b'\xff'],
        ['worker', '--burst', '--name', b'\xff'],
    ],
    ids=lambda args: ' '.join(map(os.fsdecode, args)),
)
def test_arguments_that_are_not_utf8_are_refused_in_one_line(database, args):
    # A terminal in a Latin-1 locale, or a pasted byte, gives arguments Python holds as lone surrogates.
    result = run_jobs_cli(*map(os.fsdecode, args))
    assert result.returncode == 2, result.stderr
    assert 'Traceback' not in result.stderr
    assert result.stderr.splitlines()[-1].endswith(
        'is not UTF-8 text; type it again in a UTF-8 terminal, for example with LANG=C.UTF-8.'
    )
