"""A newcomer's walk through the command line, in real processes.

Every group's and command's `--help`, then every command with minimal plausible arguments against a fresh data
directory, a database that is down (PostgreSQL on a closed port, SQLite in a directory that cannot exist) and a Redis
that is down, and every required argument with a byte that is not UTF-8. Each must end with a status README
documents and, when it fails, one line on stderr, never a traceback. The command tree is read from click, so a new
command is walked without editing this module.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import cli
from rqjobs.embedded import EmbeddedRedis
from rqjobs.settings import VARIABLES

ROOT = Path(__file__).resolve().parent.parent

SCENARIOS = ('fresh', 'postgresql-down', 'sqlite-unreachable', 'redis-down')

# A value for each required argument, by its name; a new command with a new argument name needs a line here.
PLACEHOLDERS = {
    'warehouse_id': '1',
    'job_id': 'no-such-job',
    'url': 'https://github.com/example/project',
    'path': 'backup.jsonl.gz',
}

# Options a command needs to do anything at all, or to end by itself (long-running commands).
OPTIONS = {
    'enqueue': ['ping'],
    'requeue': ['--all'],
    'cleanup': ['--finished', '--dry-run'],
    'worker': ['--burst'],
    'scheduler': ['--burst'],
}

# Commands that would run on for a newcomer, left out where they cannot fail fast: the demo documents a whole
# repository when everything works (tests/test_demo.py runs it); the dashboard gets a busy port (see `walk`).
SKIPPED = {
    ('fresh', 'demo'): 'a working demo runs for a while; tests/test_demo.py covers it',
}

PER_COMMAND_TIMEOUT = 60
# The installed command, as a person types it.
JOBS = str(Path(sys.executable).with_name('jobs'))


def command_paths(group: click.Group = cli.main, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and group under `group`, as the words a person types after `jobs`."""
    paths = []
    for name in group.list_commands(click.Context(group)):  # the root group loads its commands on demand
        command = group.get_command(click.Context(group), name)
        path = prefix + (name,)
        paths.append(path)
        if isinstance(command, click.Group):
            paths.extend(command_paths(command, path))
    return paths


def command_of(path: tuple[str, ...]) -> click.Command:
    command = cli.main
    for name in path:
        command = command.get_command(click.Context(command), name)
    return command


LEAVES = [path for path in command_paths() if not isinstance(command_of(path), click.Group)]


def arguments(path: tuple[str, ...], workdir: Path) -> list[str]:
    """Minimal plausible arguments for the command at `path`."""
    values = []
    for param in command_of(path).params:
        if isinstance(param, click.Argument) and param.required:
            assert param.name in PLACEHOLDERS, f'add a placeholder for argument {param.name} of `jobs {" ".join(path)}`'
            value = PLACEHOLDERS[param.name]
            values.append(str(workdir / value) if param.name == 'path' else value)
    return values + OPTIONS.get(' '.join(path), [])


def documented_exit_statuses() -> set[int]:
    """The exit statuses README's command-line section lists."""
    text = (ROOT / 'README.md').read_text()
    section = text.split('\n## Command line\n', 1)[1].split('\n## ', 1)[0]
    statuses = {int(code) for code in re.findall(r'^- `(\d+)`:', section, flags=re.MULTILINE)}
    assert statuses, 'README lists no exit statuses under "Command line"'
    return statuses


def base_env(**values: str) -> dict:
    env = {name: value for name, value in os.environ.items() if name not in VARIABLES}
    env.pop('DASHBOARD_USERNAME', None)
    env.pop('DASHBOARD_PASSWORD', None)
    env.update(values)
    return env


def run(args: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    """Run `jobs ARGS` in a subprocess, as a person does in a terminal; one that hangs fails its own case only."""
    try:
        return subprocess.run(
            [JOBS, *args],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=PER_COMMAND_TIMEOUT,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        return subprocess.CompletedProcess(
            exc.cmd, -1, str(exc.stdout or ''), f'(still running after {PER_COMMAND_TIMEOUT} s; killed)'
        )


@pytest.fixture(scope='module')
def closed_port():
    """A loopback port bound by no listener: connecting to it is refused at once, for as long as the module runs."""
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        yield sock.getsockname()[1]


@pytest.fixture(scope='module')
def busy_port():
    """A loopback port something else already listens on."""
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.fixture(scope='module')
def walk(tmp_path_factory, redis_server, closed_port, busy_port):
    """Run every command in every scenario, in parallel; map (scenario, command) to its finished process."""
    root = tmp_path_factory.mktemp('walk')
    jobs = {}
    for scenario in SCENARIOS:
        for path in LEAVES:
            name = ' '.join(path)
            if (scenario, name) in SKIPPED:
                continue
            workdir = root / scenario / name.replace(' ', '-')
            workdir.mkdir(parents=True)
            (workdir / PLACEHOLDERS['path']).write_bytes(b'')
            data_dir = workdir / 'var'
            env = base_env(JOBS_DATA_DIR=str(data_dir), REDIS_TIMEOUT='1')
            if scenario == 'postgresql-down':
                env.update(REDIS_URL=redis_server.url, DATABASE_URL=f'postgresql://postgres@127.0.0.1:{closed_port}/x')
            elif scenario == 'sqlite-unreachable':
                # Under a regular file: no directory can be made there, not even by root.
                (workdir / 'a-file').write_text('')
                env.update(REDIS_URL=redis_server.url, DATABASE_URL=f'sqlite:///{workdir}/a-file/jobs.db')
            elif scenario == 'redis-down':
                env.update(REDIS_URL=f'redis://127.0.0.1:{closed_port}/0')
            args = arguments(path, workdir)
            if path == ('dashboard',):
                # A port taken by another program: the dashboard must say so rather than serve on.
                args += ['--port', str(busy_port)]
            jobs[scenario, name] = (list(path) + args, env, workdir)
    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            futures = {key: pool.submit(run, *job) for key, job in jobs.items()}
            yield {key: future.result() for key, future in futures.items()}
    finally:
        # A fresh data directory starts its own embedded Redis; stop each one.
        for scenario, name in jobs:
            if scenario == 'fresh':
                EmbeddedRedis(root / scenario / name.replace(' ', '-') / 'var' / 'redis').stop()


def cases():
    for scenario in SCENARIOS:
        for path in LEAVES:
            name = ' '.join(path)
            marks = []
            if (scenario, name) in SKIPPED:
                marks.append(pytest.mark.skip(reason=SKIPPED[scenario, name]))
            yield pytest.param(scenario, name, marks=marks, id=f'{scenario}:{name}')


def test_jobs_help_is_instant_and_touches_nothing(tmp_path):
    data_dir = tmp_path / 'var'
    env = base_env(JOBS_DATA_DIR=str(data_dir), DATABASE_URL=f'sqlite:///{tmp_path}/no/such/dir/jobs.db')
    result = run(['--help'], env, tmp_path)
    assert (result.returncode, result.stderr) == (0, '')
    for path in command_paths():
        assert f'  {path[0]} ' in result.stdout
    assert not data_dir.exists(), 'importing the command line must not start Redis or write to the data directory'


@pytest.mark.parametrize('path', command_paths(), ids=' '.join)
def test_help_of_every_command_and_group(path, tmp_path, env):
    # In this process, to keep the walk quick; `jobs --help` above runs as a real process.
    env.setenv('JOBS_DATA_DIR', str(tmp_path / 'var'))
    env.delenv('REDIS_URL')
    result = CliRunner().invoke(cli.main, [*path, '--help'])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f'Usage: main {" ".join(path)} ')
    assert not (tmp_path / 'var').exists()


@pytest.mark.slow
@pytest.mark.parametrize('scenario, command', list(cases()))
def test_every_command_ends_in_one_clear_line(walk, scenario, command):
    result = walk[scenario, command]
    shown = f'jobs {command} ({scenario}) exited {result.returncode}\nout:\n{result.stdout}\nerr:\n{result.stderr}'
    assert 'Traceback' not in result.stdout + result.stderr, shown
    assert result.returncode in documented_exit_statuses(), shown
    if result.returncode != 0:
        lines = error_lines(result.stderr)
        assert len(lines) == 1 and lines[0].startswith('Error: '), shown


# What stderr may hold besides the error: the line saying which Redis a command uses, progress logged below WARNING,
# and the usage lines click puts above a usage error.
NOT_ERRORS = re.compile(r"Redis: |\d{4}-\d\d-\d\d [\d:,]+ (DEBUG|INFO) |Usage: |Try '.*' for help\.$")


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip() and not NOT_ERRORS.match(line)]


@pytest.mark.slow
@pytest.mark.parametrize('command', [['worker'], ['scheduler'], ['dashboard'], ['demo']], ids=' '.join)
def test_long_running_commands_stop_at_once_without_redis(command, tmp_path, closed_port):
    # Without --burst these run until stopped: when Redis is down they must say so and exit, not wait.
    env = base_env(
        JOBS_DATA_DIR=str(tmp_path / 'var'), REDIS_URL=f'redis://127.0.0.1:{closed_port}/0', REDIS_TIMEOUT='1'
    )
    result = run(command, env, tmp_path)
    assert result.returncode == 1, result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith(f'Error: Cannot reach Redis at redis://127.0.0.1:{closed_port}/0')


def with_arguments() -> list:
    """The commands that take a required argument."""
    return [
        pytest.param(path, id=' '.join(path))
        for path in LEAVES
        if any(isinstance(param, click.Argument) and param.required for param in command_of(path).params)
    ]


@pytest.mark.slow
@pytest.mark.parametrize('path', with_arguments())
def test_every_argument_that_is_not_utf8_ends_in_one_clear_line(path, tmp_path, redis_server):
    # What a terminal in a Latin-1 locale sends for "é": Python holds the byte as a lone surrogate.
    not_utf8 = os.fsdecode(b'caf\xe9')
    args = [
        not_utf8 if isinstance(param, click.Argument) and param.required else None for param in command_of(path).params
    ]
    env = base_env(JOBS_DATA_DIR=str(tmp_path / 'var'), REDIS_URL=redis_server.url)
    result = run([*path, *filter(None, args)], env, tmp_path)
    shown = f'exited {result.returncode}\nout:\n{result.stdout}\nerr:\n{result.stderr}'
    assert 'Traceback' not in result.stdout + result.stderr, shown
    assert result.returncode in documented_exit_statuses() - {0}, shown
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith('Error: '), shown
