"""Fixtures: a private real Redis server for the session, a fresh database per test, real workers."""

from __future__ import annotations

import os
import subprocess

import pytest

import models
from helpers import API_KEY, SAMPLE_FILES, commit_files, git, wait_until
from rqjobs import database as database_module
from rqjobs import settings as settings_module
from rqjobs.embedded import EmbeddedRedis
from rqjobs.settings import VARIABLES


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
    server = subprocess.Popen(
        [
            server_binary(),
            '--port',
            '0',
            '--unixsocket',
            str(socket),
            '--save',
            '',
            '--appendonly',
            'no',
            '--maxmemory-policy',
            'noeviction',
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis_module.Redis(unix_socket_path=str(socket))
    # redis-server has no readiness signal but its socket (or its exit, which the ping below reports).
    wait_until(
        lambda: socket.exists() or server.poll() is not None, 10, 'redis-server opened its socket', interval=0.02
    )
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
    # Imported here: faultkit lives beside the fault tests, on the path once they are collected.
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


@pytest.fixture
def sample_repo(tmp_path):
    """A real git repository in several languages with three commits, a branch and awkward content."""
    repo = tmp_path / 'upstream' / 'sample'
    repo.mkdir(parents=True)
    git(repo, 'init', '-q')
    commit_files(repo, SAMPLE_FILES, 'Initial version')
    commit_files(
        repo,
        {
            'assets/logo.png': b'\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR' + bytes(range(256)) * 4,
            'data/big.txt': ('x' * 99 + '\n') * 11000,
            b'docs/caf\xe9.md': b'# Caf\xe9\n',
            'docs/données/été.md': '# Été\n\nUnicode name.\n',
        },
        'Add assets, data and docs',
    )
    (repo / 'outside-link').symlink_to('/etc/passwd')
    (repo / '.gitmodules').write_text(
        '[submodule "vendor/lib"]\n\tpath = vendor/lib\n\turl = https://example.invalid/lib.git\n'
    )
    git(repo, 'add', '-A')
    git(repo, 'update-index', '--add', '--cacheinfo', '160000,' + 'a' * 40 + ',vendor/lib')
    git(repo, 'commit', '-q', '-m', 'Add a symlink and a submodule entry')
    git(repo, 'branch', 'feature')
    return repo


@pytest.fixture
def chat(env, local):
    """A local chat-completions server, the model of this test and of the workers it starts (fast retries)."""
    from chat_server import ChatServer

    server = ChatServer()
    server.start()
    env.setenv('LLM_BASE_URL', server.base_url)
    env.setenv('LLM_MODEL', 'test-model')
    env.setenv('LLM_API_KEY', API_KEY)
    env.setenv('LLM_RETRY_BACKOFF', '1')
    env.setenv('LLM_TIMEOUT', '5')
    settings_module.reset()
    yield server
    server.stop()
