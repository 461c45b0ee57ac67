"""The database named by `DATABASE_URL`: opened from its URL and bound to the models' `db` proxy on first use."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import peewee
from playhouse import db_url

import models
from rqjobs.exceptions import DatabaseUnavailable, SettingsError
from rqjobs.settings import EXAMPLE_URLS, SUPPORTED_SCHEMES, Settings, get_settings, redact_url

SQLITE_PRAGMAS = {
    # WAL lets the web side read while a worker writes; the busy timeout makes a writer wait for the lock instead
    # of failing at once; SQLite enforces ON DELETE CASCADE only with foreign_keys on.
    'journal_mode': 'wal',
    'busy_timeout': 5000,
    'foreign_keys': 1,
    'synchronous': 'normal',
}

_bound_url: str | None = None
# The URL whose schema this process found current: checked once, not on every connection.
_schema_current: str | None = None
# Connections a forked child inherited: kept referenced, never used or closed (closing a PostgreSQL connection in
# the child would end the parent's session).
_inherited: list = []


def database(settings: Settings | None = None) -> peewee.Database:
    """Return the project's database, binding it to `models.db` if this process has not yet."""
    global _bound_url
    settings = settings or get_settings()
    if _bound_url != settings.database_url or models.db.obj is None:
        url = redact_url(settings.database_url)
        try:
            models.db.initialize(open_database(settings.database_url, settings.database_connect_timeout))
        except ValueError as exc:
            raise SettingsError(f'DATABASE_URL={url!r}: {exc}') from None
        except OSError as exc:  # the directory of a SQLite file cannot be made
            raise DatabaseUnavailable(
                f'Cannot reach the database at {url}: cannot create {exc.filename} ({exc.strerror or exc}); set '
                f'JOBS_DATA_DIR or DATABASE_URL to a place you can write, for example '
                f'JOBS_DATA_DIR=$HOME/.local/share/rqjobs.'
            ) from None
        _bound_url = settings.database_url
    return models.db.obj


def open_database(url: str, connect_timeout: int | None = None) -> peewee.Database:
    """Build the database that `url` names, without connecting to it.

    `connect_timeout` bounds, in seconds, the wait for a server to accept a connection (a `connect_timeout` in the
    URL wins); SQLite has no server to wait for.
    """
    scheme = urlsplit(url).scheme
    if scheme not in SUPPORTED_SCHEMES:
        raise ValueError(f'Unsupported database URL scheme {scheme!r}; use a URL such as {EXAMPLE_URLS}.')
    try:
        params = db_url.parse(url, unquote_password=True, unquote_user=True)
    except ValueError:
        # urllib's message quotes the text it took for a port, which may be part of a password.
        raise ValueError(f'The {scheme} database URL has an invalid port; use a URL such as {EXAMPLE_URLS}.') from None
    if not params.get('database'):
        raise ValueError(f'The {scheme} database URL names no database; use a URL such as {EXAMPLE_URLS}.')

    database_class = db_url.schemes[scheme]
    if issubclass(database_class, peewee.MySQLDatabase):
        if 'passwd' in params:
            # db_url passes the password as `passwd`, which PyMySQL deprecates.
            params['password'] = params.pop('passwd')
        # Older peewee releases connected as 3-byte utf8, which cannot store emoji.
        params.setdefault('charset', 'utf8mb4')
        # Plain DATETIME drops microseconds; the other databases keep them.
        params['field_types'] = {'DATETIME': 'DATETIME(6)'}
    else:
        params['field_types'] = {'LONGTEXT': 'TEXT'}
    if connect_timeout and not issubclass(database_class, peewee.SqliteDatabase):
        # Both drivers (psycopg2, PyMySQL) take this keyword; without it a server that drops packets hangs a command.
        params.setdefault('connect_timeout', connect_timeout)
    if issubclass(database_class, peewee.SqliteDatabase):
        params['pragmas'] = SQLITE_PRAGMAS
        # A transaction takes the write lock when it begins, waiting for it up to busy_timeout. One that began by
        # reading and then writes (a page stored by one of several page workers) would otherwise fail at once with
        # "database is locked" whenever another connection wrote since its read: SQLite cannot wait there.
        params['lock_type'] = 'IMMEDIATE'
        if params['database'] != ':memory:' and not params['database'].startswith('file:'):
            # An OSError here (a directory that cannot be made) is put in one line by database().
            Path(params['database']).parent.mkdir(parents=True, exist_ok=True)
    return database_class(**params)


@contextlib.contextmanager
def connection(settings: Settings | None = None, *, schema: bool = True) -> Iterator[peewee.Database]:
    """Open a connection for the length of one job or command, and close it afterwards.

    With `schema` (the default), the schema is made sure of first: on SQLite pending steps are applied, elsewhere a
    missing or older schema raises `SchemaNotCurrent`. Schema commands themselves pass `schema=False`.
    """
    global _schema_current
    settings = settings or get_settings()
    db = database(settings)
    _connect(db, settings.database_url)
    with db.connection_context():
        if schema and _schema_current != settings.database_url:
            from rqjobs import migration  # migration imports this module; the check needs its schema steps

            migration.ensure_schema()
            _schema_current = settings.database_url
        yield db


def _connect(db: peewee.Database, url: str) -> None:
    """Open `db`'s connection unless open, or raise `DatabaseUnavailable` in one line that says why."""
    if not db.is_closed():
        return
    try:
        db.connect()
    except (peewee.OperationalError, peewee.InterfaceError) as exc:
        raise DatabaseUnavailable(
            f'Cannot reach the database at {redact_url(url)}: {_sentence(exc)} Start that server or create that '
            f'database, or fix DATABASE_URL (for example '
            f'DATABASE_URL=postgresql://user:password@127.0.0.1:5432/rqjobs).'
        ) from None


def _sentence(exc: BaseException) -> str:
    text = ' '.join(str(exc).split()) or type(exc).__name__  # drivers' messages span lines
    return text if text.endswith(('.', '?', '!')) else text + '.'


def reset() -> None:
    """Forget that the schema was found current, so the next connection checks it again."""
    global _schema_current
    _schema_current = None


def _drop_inherited_connection() -> None:
    database = models.db.obj
    if database is not None and not database.is_closed():
        _inherited.append(database._state.conn)
        database._state.reset()


# rq runs every job in a forked work horse: the job must open its own connection, never share its parent's.
os.register_at_fork(after_in_child=_drop_inherited_connection)


def record_id(*parts: str) -> str:
    """Return a UUID-shaped id derived from `parts`: a replayed insert hits the same key instead of adding a twin."""
    digest = hashlib.sha256('\0'.join(parts).encode('utf-8', 'surrogatepass')).hexdigest()
    return f'{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}'
