"""Helpers of the fault tests: real `jobs` processes, a job module of their own, process checks.

Not a conftest: a second `conftest.py` would shadow `tests/conftest.py`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import peewee
import psutil

from helpers import ROOT, commit_files, git, wait_until
from rqjobs import settings
from rqjobs.database import open_database

# The tests' own jobs, on the queue `faults`: sleepers that outlast their time limits, a recorder.
FAULT_JOBS = '''
import subprocess
import time
from pathlib import Path

from rqjobs import limits
from rqjobs.exceptions import SoftTimeLimitExceeded

JOBS = ('nap', 'stubborn', 'with_child', 'mark', 'deaf')


def mark(marker: str, token: str) -> None:
    """Append `token` and the time to `marker`: one line per run."""
    with open(marker, 'a') as out:
        out.write(f'{token} {time.time()}\\n')


def nap(seconds: float = 0.0, marker: str = '') -> dict:
    """Sleep, then append a line to `marker`."""
    time.sleep(seconds)
    if marker:
        with open(marker, 'a') as out:
            out.write('done\\n')
    return {'slept': seconds}


def stubborn(marker: str, seconds: float = 60.0) -> None:
    """Catch the soft limit, record the clean-up, then go on sleeping past the hard limit."""
    try:
        time.sleep(seconds)
    except SoftTimeLimitExceeded:
        Path(marker).write_text('cleaned up')
        time.sleep(seconds)


def deaf(seconds: float = 60.0) -> None:
    """Swallow every exception, the time limits' too, and sleep on."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            time.sleep(max(0.0, end - time.monotonic()))
        except BaseException:
            pass


def with_child(pidfile: str, seconds: float = 60.0) -> None:
    """Start a process in a group of its own, known to the hard limit, and outlast both limits."""
    child = subprocess.Popen(['sleep', '60'], start_new_session=True)
    limits.child_groups.add(child.pid)
    Path(pidfile).write_text(str(child.pid))
    try:
        time.sleep(seconds)
    except SoftTimeLimitExceeded:
        time.sleep(seconds)
'''

FAULT_QUEUE = 'faults'


@contextlib.contextmanager
def fault_jobs(env, tmp_path: Path, monkeypatch) -> Iterator[Path]:
    """Make the tests' job module importable here and in every process started later, on the queue `faults`."""
    directory = tmp_path / 'faultjobs'
    directory.mkdir()
    (directory / 'fault_jobs.py').write_text(textwrap.dedent(FAULT_JOBS))
    monkeypatch.syspath_prepend(str(directory))
    env.setenv('PYTHONPATH', str(directory))
    env.setenv('JOBS_EXTRA_MODULES', f'fault_jobs={FAULT_QUEUE}')
    settings.reset()
    try:
        yield directory
    finally:
        sys.modules.pop('fault_jobs', None)


# ---- Processes ----


def alive(process: psutil.Process) -> bool:
    """Tell whether a process still runs (a zombie waiting to be reaped does not)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def tree(pid: int) -> list[psutil.Process]:
    """Return a process and all its descendants (a work horse is one, in a process group of its own)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def touching(*paths: Path) -> list[psutil.Process]:
    """Return the live processes whose command line or working directory points into one of `paths`."""
    found = []
    marks = [str(path) for path in paths]
    for process in psutil.process_iter(['cmdline', 'cwd']):
        if process.pid == os.getpid():
            continue
        text = ' '.join([*(process.info['cmdline'] or []), process.info['cwd'] or ''])
        if any(mark in text for mark in marks) and alive(process):
            found.append(process)
    return found


def git_processes(*paths: Path) -> list[psutil.Process]:
    """Return the live git processes (git and its helpers) working on one of `paths`."""
    return [process for process in touching(*paths) if process.name().startswith('git')]


class Processes:
    """`jobs` processes started by a test, each in its own session with its output in a log file.

    All are killed at the end.
    """

    def __init__(self, logs: Path):
        self.logs = logs
        self.logs.mkdir(parents=True, exist_ok=True)
        self.started: list[tuple[subprocess.Popen, Path]] = []
        self.seen: list[psutil.Process] = []

    def jobs(self, *args: str, name: str, env: dict | None = None) -> subprocess.Popen:
        """Start `jobs ARGS` as a user would, in a new session (so its whole group can be signalled)."""
        log = self.logs / f'{name}.log'
        with open(log, 'ab') as out:
            process = subprocess.Popen(
                [sys.executable, '-c', 'import cli; cli.main()', *args],
                cwd=ROOT,
                env=env or os.environ.copy(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started.append((process, log))
        return process

    def worker(self, *queues: str, name: str = 'worker', env: dict | None = None) -> subprocess.Popen:
        """Start `jobs worker` on `queues`."""
        return self.jobs('worker', *queues, name=name, env=env)

    def log(self, process: subprocess.Popen) -> str:
        """Return what a process printed so far."""
        for started, log in self.started:
            if started is process:
                return log.read_text(errors='replace')
        return ''

    def logs_text(self, tail: int | None = 4000) -> str:
        """Return every log, the last `tail` characters of each (None: whole, to search them), for a failure message."""
        texts = (log.read_text(errors='replace') for _, log in self.started)
        return '\n'.join(
            f'--- {log.name}\n{text if tail is None else text[-tail:]}'
            for (_, log), text in zip(self.started, texts, strict=True)
        )

    def remember(self, process: subprocess.Popen) -> list[psutil.Process]:
        """Record a process's tree now (its work horse and the horse's children), to check later that none survives."""
        members = tree(process.pid)
        self.seen.extend(members)
        return members

    def kill_group(self, process: subprocess.Popen, sig: int = signal.SIGKILL) -> list[psutil.Process]:
        """Send `sig` to the process group of a started process (the worker and its scheduler).

        Return the process tree as it was before.
        """
        members = self.remember(process)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        return members

    def stop_all(self) -> None:
        """Kill every started process, its group and every descendant seen, and reap them."""
        for process, _ in self.started:
            if process.poll() is None:  # not reaped yet, so its pid is still its own group's
                self.remember(process)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
        for member in self.seen:  # psutil refuses a pid that another process took since
            with contextlib.suppress(psutil.Error):
                member.kill()
        for process, _ in self.started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)


def assert_all_dead(members: list[psutil.Process], timeout: float = 5.0) -> None:
    """Fail unless every process in `members` has ended within `timeout` seconds."""
    wait_until(
        lambda: not [m for m in members if alive(m)],
        timeout,
        'processes outlived their worker',
        details=lambda: repr([m for m in members if alive(m)]),
    )


def assert_no_git(*paths: Path, timeout: float = 5.0) -> None:
    """Fail unless no git process works on `paths` within `timeout` seconds.

    git itself ends at once; helpers it started (upload-pack, pack-objects, index-pack, remote-https) outlive it
    until their next write into a closed pipe, a moment later.
    """
    wait_until(
        lambda: not git_processes(*paths),
        timeout,
        'git processes ended',
        details=lambda: repr([(p.pid, p.info['cmdline']) for p in git_processes(*paths)]),
    )


# ---- A repository whose clone takes a couple of seconds ----

_big_repositories: dict[str, Path] = {}


def big_repository(tmp_path_factory) -> Path:
    """Return the session's big repository (see `make_big_repository`), made on first use."""
    if 'big' not in _big_repositories:
        _big_repositories['big'] = make_big_repository(tmp_path_factory.mktemp('big') / 'upstream' / 'big')
    return _big_repositories['big']


def make_big_repository(path: Path, blob_mb: int = 16, blobs: int = 2, sources: int = 300) -> Path:
    """Create a repository of random blobs (incompressible, left loose) and many small sources; return it.

    A second branch, `copy`, lets a test submit the same repository twice.
    """
    path.mkdir(parents=True)
    git(path, 'init', '-q')
    files: dict[str, Any] = {f'data/blob{i}.bin': os.urandom(blob_mb * 1024 * 1024) for i in range(blobs)}
    files.update(
        {f'src/module{i}.py': f'def function{i}():\n    """Return {i}."""\n    return {i}\n' for i in range(sources)}
    )
    files['README.md'] = '# Big\n\nA large repository whose clone takes a while.\n'
    commit_files(path, files, 'A large repository')
    git(path, 'branch', 'copy')
    return path


# ---- Holding a write lock on a table ----


@contextlib.contextmanager
def write_lock(db: peewee.Database, table: str) -> Iterator[Callable[[psutil.Process], bool]]:
    """Hold a lock that keeps every other writer of `table` waiting (SQLite: the whole database), until the block ends.

    Yields a check that tells whether a process (the work horse) is waiting for the lock.
    """
    if isinstance(db, peewee.SqliteDatabase):
        holder = sqlite3.connect(db.database, timeout=5, isolation_level=None)
        try:
            holder.execute('BEGIN EXCLUSIVE')
            yield sleeping  # SQLite shows no waiter; its busy handler sleeps between tries, and a job does not
        finally:
            holder.execute('ROLLBACK')
            holder.close()
        return
    other = open_database(settings.get_settings().database_url)
    other.connect()
    mysql = isinstance(other, peewee.MySQLDatabase)
    if mysql:
        waiters = (
            'SELECT COUNT(*) FROM information_schema.processlist WHERE id != CONNECTION_ID() '
            "AND state LIKE 'Waiting for table%%'",
            (),
        )
    else:
        waiters = ('SELECT COUNT(*) FROM pg_locks WHERE NOT granted AND relation = %s::regclass', (f'"{table}"',))
    try:
        if mysql:
            other.execute_sql(f'LOCK TABLES `{table}` WRITE')
        else:
            other.execute_sql('BEGIN')
            other.execute_sql(f'LOCK TABLE "{table}" IN EXCLUSIVE MODE')
        yield lambda process: other.execute_sql(*waiters).fetchone()[0] > 0
    finally:
        other.execute_sql('UNLOCK TABLES' if mysql else 'ROLLBACK')
        other.close()


def sleeping(process: psutil.Process) -> bool:
    """Tell whether a process sleeps in nanosleep (Linux's /proc/PID/wchan), as SQLite does between lock attempts."""
    try:
        return Path(f'/proc/{process.pid}/wchan').read_text() in ('hrtimer_nanosleep', 'do_nanosleep')
    except OSError:
        return False
