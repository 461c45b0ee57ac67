"""Fixtures: a private real Redis server for the session, a fresh database per test, real workers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import models
from rqjobs import database as database_module
from rqjobs import settings as settings_module
from rqjobs.embedded import EmbeddedRedis
from rqjobs.settings import VARIABLES

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope='session')
def redis_server(tmp_path_factory):
    """A private Redis server (the embedded binary) for the whole test session."""
    server = EmbeddedRedis(tmp_path_factory.mktemp('redis'))
    server.ensure_running()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def env(monkeypatch, tmp_path, redis_server):
    """A clean environment per test: the private Redis, a data directory under tmp_path, fresh settings."""
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv('JOBS_DATA_DIR', str(tmp_path / 'var'))
    monkeypatch.setenv('REDIS_URL', redis_server.url)
    monkeypatch.setenv('DATABASE_URL', os.environ.get('TEST_DATABASE_URL') or f'sqlite:///{tmp_path / "test.db"}')
    settings_module.reset()
    database_module.reset()
    yield monkeypatch
    settings_module.reset()
    database_module.reset()


@pytest.fixture
def local(env):
    """Allow local repositories as warehouses, as the tests and the demo do."""
    env.setenv('ALLOW_LOCAL_REPOSITORIES', 'true')
    settings_module.reset()


@pytest.fixture
def redis_conn(redis_server):
    """A client of the private Redis server, emptied for this test."""
    from rqjobs.connections import get_redis

    connection = get_redis()
    connection.flushall()
    yield connection
    connection.close()


@pytest.fixture
def full_redis(env, tmp_path):
    """A private Redis at its maxmemory (noeviction), set as REDIS_URL: every write is refused, reads still answer."""
    import redis as redis_module

    from rqjobs.embedded import server_binary

    socket = tmp_path / 'full.sock'
    server = subprocess.Popen([server_binary(), '--port', '0', '--unixsocket', str(socket), '--save', '',
                               '--appendonly', 'no', '--maxmemory-policy', 'noeviction'],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis_module.Redis(unix_socket_path=str(socket))
    deadline = time.monotonic() + 10
    while not socket.exists() and server.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)  # redis-server has no readiness signal but its socket
    client.ping()
    for number in range(20):
        client.set(f'filler:{number}', b'x' * 100_000)
    # Well under what is used, so that a new client's buffers cannot bring it back below the limit.
    client.config_set('maxmemory', client.info('memory')['used_memory'] - 1_000_000)
    env.setenv('REDIS_URL', f'unix://{socket}')
    settings_module.reset()
    yield client
    client.close()
    server.terminate()
    server.wait(timeout=10)


@pytest.fixture
def database(env):
    """The test database (TEST_DATABASE_URL or a fresh SQLite file) with the current schema, dropped afterwards."""
    from rqjobs import migration

    db = database_module.database()
    with db.connection_context():
        models.drop_tables()
    migration.upgrade()
    yield db
    if not db.is_closed():
        db.close()
    with db.connection_context():
        models.drop_tables()


@pytest.fixture
def burst_worker(redis_conn):
    """Run a real rq worker (forking a work horse per job) in burst mode on the given queues."""
    from rqjobs.connections import get_redis
    from rqjobs.worker import build_worker

    # A client of its own: the worker raises its read timeout, which must not reach the test's client.
    connection = get_redis(shared=False)

    def run(*queue_names: str) -> bool:
        worker = build_worker(connection, queue_names)
        return worker.work(burst=True, with_scheduler=False, logging_level='WARNING')

    yield run
    connection.close()


@pytest.fixture
def processes(tmp_path):
    """Real worker and scheduler processes for the fault suite, all stopped afterwards."""
    # Imported here: faultkit lives beside the fault tests and imports this module itself.
    from faultkit import Processes

    started = Processes(tmp_path / 'logs')
    yield started
    started.stop_all()


@pytest.fixture
def faults(env, tmp_path, monkeypatch):
    """The fault suite's own job module (sleepers and the like), importable by worker processes."""
    from faultkit import fault_jobs

    with fault_jobs(env, tmp_path, monkeypatch) as directory:
        yield directory


def run_jobs_cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the `jobs` command line in a subprocess, as a user would."""
    return subprocess.run([sys.executable, '-c', 'import cli; cli.main()', *args], cwd=ROOT, env=env or os.environ.copy(),
                          capture_output=True, text=True, timeout=timeout, check=False)


# ---- Git repositories built by the tests ----

GIT_ENV = {'GIT_AUTHOR_NAME': 'Test Author', 'GIT_AUTHOR_EMAIL': 'author@example.invalid',
           'GIT_COMMITTER_NAME': 'Test Author', 'GIT_COMMITTER_EMAIL': 'author@example.invalid',
           'GIT_CONFIG_NOSYSTEM': '1', 'GIT_CONFIG_GLOBAL': '/dev/null'}


def git(repo: Path, *args: str) -> str:
    """Run git in a test repository and return its output."""
    result = subprocess.run(['git', '-c', 'init.defaultBranch=main', *args], cwd=repo, capture_output=True,
                            env={**os.environ, **GIT_ENV}, check=True)
    return result.stdout.decode('utf-8', 'replace').strip()


def commit_files(repo: Path, files: dict, message: str) -> str:
    """Write files (str or bytes; None deletes) into a repository, commit them, and return the new HEAD."""
    for name, content in files.items():
        target = repo / os.fsdecode(name)
        if content is None:
            git(repo, 'rm', '-q', '--', os.fsdecode(name))
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content if isinstance(content, bytes) else content.encode())
        # Only the named files: `add -A` would also stage the removal of a gitlink that has no directory.
        git(repo, 'add', '--', os.fsdecode(name))
    git(repo, 'commit', '-q', '-m', message)
    return git(repo, 'rev-parse', 'HEAD')


SAMPLE_FILES = {
    'README.md': '# Sample\n\nSample is a small tool that greets people.\n\n## Installation\n\npip install sample\n',
    'pyproject.toml': '[project]\nname = "sample"\n\n[project.scripts]\nsample = "sample.cli:main"\n',
    'sample/__init__.py': '"""Sample package."""\n',
    'sample/core.py': ('"""Greeting logic."""\n\n\nclass Greeter:\n    """Say hello."""\n\n'
                       '    def greet(self, name: str = "world") -> str:\n        """Return a greeting."""\n'
                       '        return f"hello {name}"\n\n\ndef shout(text: str) -> str:\n    return text.upper()\n'),
    'sample/cli.py': 'import argparse\n\n\ndef main() -> int:\n    """Run the command line."""\n    return 0\n',
    'web/app.js': 'export function render(items) {\n  return items.join(",");\n}\n',
    'cmd/tool/main.go': 'package main\n\n// Run starts the tool.\nfunc Run() error {\n\treturn nil\n}\n',
}


@pytest.fixture
def sample_repo(tmp_path):
    """A real git repository in several languages with three commits, a branch and awkward content."""
    repo = tmp_path / 'upstream' / 'sample'
    repo.mkdir(parents=True)
    git(repo, 'init', '-q')
    commit_files(repo, SAMPLE_FILES, 'Initial version')
    commit_files(repo, {'assets/logo.png': b'\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR' + bytes(range(256)) * 4,
                        'data/big.txt': ('x' * 99 + '\n') * 11000,
                        b'docs/caf\xe9.md': b'# Caf\xe9\n',
                        'docs/données/été.md': '# Été\n\nUnicode name.\n'}, 'Add assets, data and docs')
    (repo / 'outside-link').symlink_to('/etc/passwd')
    (repo / '.gitmodules').write_text('[submodule "vendor/lib"]\n\tpath = vendor/lib\n\turl = https://example.invalid/lib.git\n')
    git(repo, 'add', '-A')
    git(repo, 'update-index', '--add', '--cacheinfo', '160000,' + 'a' * 40 + ',vendor/lib')
    git(repo, 'commit', '-q', '-m', 'Add a symlink and a submodule entry')
    git(repo, 'branch', 'feature')
    return repo


def redis_contents(connection) -> bytes:
    """Everything stored in Redis as bytes, with rq's zlib-compressed fields expanded, to search for secrets."""
    import zlib

    chunks = []
    for key in connection.scan_iter(count=1000):
        kind = connection.type(key)
        if kind == b'string':
            values = [connection.get(key)]
        elif kind == b'hash':
            values = [item for pair in connection.hgetall(key).items() for item in pair]
        elif kind == b'list':
            values = connection.lrange(key, 0, -1)
        elif kind == b'set':
            values = list(connection.smembers(key))
        elif kind == b'zset':
            values = connection.zrange(key, 0, -1)
        elif kind == b'stream':
            values = [item for _, fields in connection.xrange(key) for pair in fields.items() for item in pair]
        else:
            values = []
        chunks.append(key)
        for value in values:
            chunks.append(value)
            try:
                chunks.append(zlib.decompress(value))
            except zlib.error:
                pass
    return b'\n'.join(chunks)
