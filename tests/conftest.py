"""Fixtures: a private real Redis server for the session, a fresh database per test, real workers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import models
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
    yield monkeypatch
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
def database(env):
    """The test database (TEST_DATABASE_URL or a fresh SQLite file) with every table, dropped afterwards."""
    from rqjobs import database as database_module

    db = database_module.database()
    with db.connection_context():
        models.drop_tables()
        models.create_tables()
    yield db
    if not db.is_closed():
        db.close()
    with db.connection_context():
        models.drop_tables()


@pytest.fixture
def burst_worker(redis_conn):
    """Run a real rq worker (forking a work horse per job) in burst mode on the given queues."""
    from rqjobs.worker import build_worker

    def run(*queue_names: str) -> bool:
        worker = build_worker(redis_conn, queue_names)
        return worker.work(burst=True, with_scheduler=False, logging_level='WARNING')

    return run


def run_jobs_cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the `jobs` command line in a subprocess, as a user would."""
    return subprocess.run([sys.executable, '-c', 'import cli; cli.main()', *args], cwd=ROOT, env=env or os.environ.copy(),
                          capture_output=True, text=True, timeout=timeout, check=False)
