"""Tests of opening the database: a schema that is missing or behind, a database that cannot be reached."""

import os
import socket
import sqlite3
import time
from urllib.parse import urlsplit, urlunsplit

import peewee
import pytest
from click.testing import CliRunner

import cli
import models
from helpers import run_jobs_cli
from models import SchemaVersion, Warehouse
from rqjobs import database as database_module
from rqjobs import migration, queues, settings
from rqjobs.migration import MIGRATIONS, Migration

# Commands that read or write the platform's tables, each on a database that is not ready.
TABLE_COMMANDS = (
    ['warehouse', 'list'],
    ['warehouse', 'add', 'https://github.com/octo/hello'],
    ['stats', 'show'],
    ['warehouse', 'show', 'nope'],
    ['db', 'backup'],
)


def server_scheme() -> str | None:
    """'postgresql' or 'mysql' when TEST_DATABASE_URL names a server, else None."""
    scheme = urlsplit(os.environ.get('TEST_DATABASE_URL', '')).scheme
    return {'postgres': 'postgresql', 'postgresql': 'postgresql', 'mysql': 'mysql'}.get(scheme)


def server_only():
    return pytest.mark.skipif(server_scheme() is None, reason='needs TEST_DATABASE_URL on PostgreSQL or MySQL')


def other_database(path: str = '', user: str | None = None) -> str:
    """TEST_DATABASE_URL with another database name or user."""
    parts = urlsplit(os.environ['TEST_DATABASE_URL'])
    netloc = parts.netloc if user is None else f'{user}:not-the-password@{parts.netloc.rpartition("@")[2]}'
    return urlunsplit(parts._replace(netloc=netloc, path=path or parts.path))


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        return probe.getsockname()[1]


def assert_one_line_error(result, *phrases: str) -> str:
    output = (
        result.stdout + result.stderr
        if hasattr(result, 'stderr') and isinstance(result.stderr, str)
        else (result.output)
    )
    assert 'Traceback' not in output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    for phrase in phrases:
        assert phrase in lines[0]
    return lines[0]


def drop_schema(db: peewee.Database) -> None:
    with db.connection_context():
        models.drop_tables()
    database_module.reset()


def extra_step(calls: list) -> Migration:
    def record(migrator):
        calls.append(Warehouse.select().count())

    return Migration(max(step.version for step in MIGRATIONS) + 1, 'a later step', record)


# ---- A database without the schema ----


def test_a_fresh_sqlite_database_gets_its_schema_on_first_use(tmp_path, env):
    env.delenv('DATABASE_URL')
    for command in (['warehouse', 'list'], ['stats', 'show'], ['warehouse', 'list']):
        result = run_jobs_cli('-q', *command, env=os.environ.copy())
        assert result.returncode == 0, result.stderr
        assert 'Traceback' not in result.stderr
    settings.reset()
    with database_module.connection(schema=False):
        assert [row.version for row in SchemaVersion.select()] == [step.version for step in MIGRATIONS]


@pytest.mark.db
def test_a_schema_that_is_behind_is_upgraded_on_sqlite_and_named_elsewhere(database, monkeypatch):
    calls = []
    monkeypatch.setattr(migration, 'MIGRATIONS', (*MIGRATIONS, extra_step(calls)))
    database_module.reset()
    result = CliRunner().invoke(cli.main, ['-q', 'warehouse', 'list'])
    if isinstance(database, peewee.SqliteDatabase):
        assert result.exit_code == 0, result.output
        assert calls == [0]
        return
    assert result.exit_code == 1
    pending = f'steps {max(step.version for step in MIGRATIONS) + 1} pending'
    assert_one_line_error(result, 'is behind', pending, '`rqjobs db upgrade`')
    assert CliRunner().invoke(cli.main, ['-q', 'db', 'upgrade']).exit_code == 0
    assert CliRunner().invoke(cli.main, ['-q', 'warehouse', 'list']).exit_code == 0


@pytest.mark.db
def test_a_schema_newer_than_this_version_is_said_and_used(database, caplog):
    SchemaVersion.create(version=999, name='a step of a newer rqjobs')
    database_module.reset()
    result = CliRunner().invoke(cli.main, ['warehouse', 'list'])
    assert result.exit_code == 0, result.output
    assert 'schema steps this version of rqjobs does not know (999): a newer version upgraded it' in caplog.text
    assert 'No warehouses' in result.stdout


@pytest.mark.db
@server_only()
@pytest.mark.parametrize('command', TABLE_COMMANDS, ids=' '.join)
def test_a_server_database_without_the_schema_names_jobs_db_upgrade(database, command):
    drop_schema(database)
    result = CliRunner().invoke(cli.main, ['-q', *command])
    assert result.exit_code == 1
    assert_one_line_error(result, 'has no schema yet', '`rqjobs db upgrade`')


@pytest.mark.db
@server_only()
def test_a_job_on_a_database_without_the_schema_fails_and_is_retried(database, redis_conn, burst_worker):
    drop_schema(database)
    job = queues.enqueue('regenerate_minimap', ['no-such-warehouse'], connection=redis_conn)
    burst_worker('minimap')
    job.refresh()
    assert job.get_status().value == 'scheduled' and job.retries_left == queues.RETRY_MAX - 1


# ---- A database that cannot be reached ----


def unreachable_urls() -> list:
    urls = [
        pytest.param(
            f'postgresql://jobs:s3cret@127.0.0.1:{closed_port()}/rqjobs', 'Connection refused', id='postgresql down'
        ),
        pytest.param(f'mysql://jobs:s3cret@127.0.0.1:{closed_port()}/rqjobs', 'Connection refused', id='mysql down'),
    ]
    if server_scheme() == 'postgresql':
        urls += [
            pytest.param(other_database('/nosuchdb'), 'database "nosuchdb" does not exist', id='no database'),
            pytest.param(other_database(user='nosuchrole'), 'nosuchrole', id='unknown user'),
        ]
    elif server_scheme() == 'mysql':
        urls += [
            pytest.param(other_database('/nosuchdb'), "Unknown database 'nosuchdb'", id='no database'),
            pytest.param(other_database(user='nosuchrole'), "Access denied for user 'nosuchrole'", id='unknown user'),
        ]
    return urls


@pytest.mark.db
@pytest.mark.parametrize('url, reason', unreachable_urls())
def test_a_database_that_cannot_be_reached_is_one_line_and_exit_1(env, url, reason):
    env.setenv('DATABASE_URL', url)
    env.setenv('DATABASE_CONNECT_TIMEOUT', '2')
    for command in (['warehouse', 'list'], ['db', 'init'], ['db', 'status']):
        started = time.monotonic()
        result = run_jobs_cli('-q', *command, env=os.environ.copy())
        assert time.monotonic() - started < 30
        assert result.returncode == 1
        line = assert_one_line_error(result, 'Error: Cannot reach the database at ', reason, 'DATABASE_URL')
        assert 's3cret' not in line and 'not-the-password' not in line
        assert settings.redact_url(url) in line


def test_a_server_that_never_answers_fails_within_the_connect_timeout(env):
    # A listening socket that is never accepted: the TCP handshake succeeds, the server never speaks.
    with socket.socket() as silent:
        silent.bind(('127.0.0.1', 0))
        silent.listen(8)
        env.setenv('DATABASE_URL', f'postgresql://jobs@127.0.0.1:{silent.getsockname()[1]}/rqjobs')
        env.setenv('DATABASE_CONNECT_TIMEOUT', '2')
        started = time.monotonic()
        result = run_jobs_cli('-q', 'warehouse', 'list', env=os.environ.copy())
        elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert_one_line_error(result, 'Cannot reach the database at', 'timeout expired')
    assert elapsed < 15


def test_a_sqlite_file_that_cannot_be_made_is_one_line(env, tmp_path):
    blocker = tmp_path / 'a-file'
    blocker.write_text('')
    env.setenv('DATABASE_URL', f'sqlite:///{blocker}/rqjobs.db')
    result = run_jobs_cli('-q', 'warehouse', 'list', env=os.environ.copy())
    assert result.returncode == 1
    assert_one_line_error(result, f'Cannot reach the database at sqlite:///{blocker}/rqjobs.db')


def test_a_database_url_that_names_no_database_is_a_usage_error(env):
    env.setenv('DATABASE_URL', 'postgresql://jobs:s3cret@127.0.0.1:5432/')
    result = run_jobs_cli('-q', 'warehouse', 'list', env=os.environ.copy())
    assert result.returncode == 2
    line = [line for line in result.stderr.splitlines() if line.startswith('Error:')][0]
    assert 'names no database' in line and 's3cret' not in result.stderr and 'Traceback' not in result.stderr


@pytest.mark.db
def test_a_job_on_an_unreachable_database_fails_in_one_line_and_is_retried(env, redis_conn, burst_worker):
    env.setenv('DATABASE_URL', f'postgresql://jobs:s3cret@127.0.0.1:{closed_port()}/rqjobs')
    settings.reset()
    retried = queues.enqueue('ping', connection=redis_conn)
    once = queues.enqueue('ping', connection=redis_conn, retry=None)
    burst_worker('default')
    retried.refresh()
    assert retried.get_status().value == 'scheduled' and retried.retries_left == queues.RETRY_MAX - 1
    assert once.get_status().value == 'failed'
    error = once.latest_result().exc_string.strip().splitlines()[-1]
    assert error.startswith(
        'rqjobs.exceptions.DatabaseUnavailable: Cannot reach the database at postgresql://jobs:***@'
    )
    assert 's3cret' not in once.latest_result().exc_string


# ---- A database that fails mid-command ----


@pytest.mark.db
def test_a_database_locked_mid_command_is_one_line(database, monkeypatch):
    if not isinstance(database, peewee.SqliteDatabase):
        pytest.skip('holds a SQLite write lock')
    # The command waits 5 s for a lock by default; a test waits less.
    monkeypatch.setattr(
        database, '_pragmas', [(name, 100 if name == 'busy_timeout' else value) for name, value in database._pragmas]
    )
    holder = sqlite3.connect(database.database, timeout=0.1, isolation_level=None)
    try:
        holder.execute('BEGIN EXCLUSIVE')
        result = CliRunner().invoke(cli.main, ['-q', 'warehouse', 'add', 'https://github.com/octo/hello'])
    finally:
        holder.execute('ROLLBACK')
        holder.close()
    assert result.exit_code == 1
    assert_one_line_error(
        result, 'Error: The database at sqlite:///', 'failed: database is locked', 'try the command again'
    )


@pytest.mark.db
def test_a_sqlite_transaction_that_reads_then_writes_holds_the_write_lock_from_its_start(database):
    if not isinstance(database, peewee.SqliteDatabase):
        pytest.skip('SQLite locking')
    warehouse = Warehouse.create(organization_name='o', name='n', address='https://github.com/o/n')
    other = sqlite3.connect(database.database, timeout=0.1, isolation_level=None)
    update = f"UPDATE {Warehouse._meta.table_name} SET description = 'other' WHERE id = ?"
    try:
        with database.atomic():
            Warehouse.get_by_id(warehouse.id)
            # Begun deferred, the transaction would let this write through and then fail on its own write below.
            with pytest.raises(sqlite3.OperationalError, match='database is locked'):
                other.execute(update, (warehouse.id,))
            Warehouse.update(description='mine').where(Warehouse.id == warehouse.id).execute()
    finally:
        other.close()
    assert Warehouse.get_by_id(warehouse.id).description == 'mine'
