"""The database named by `DATABASE_URL`, bound to the models' `db` proxy on first use."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import peewee

import models
from rqjobs.exceptions import DatabaseUnavailable, SettingsError
from rqjobs.settings import Settings, get_settings, redact_url

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
            models.init_database(settings.database_url, settings.database_connect_timeout)
        except ValueError as exc:
            raise SettingsError(f'DATABASE_URL={url!r}: {exc}') from None
        except OSError as exc:  # the directory of a SQLite file cannot be made
            raise DatabaseUnavailable(
                f'Cannot reach the database at {url}: cannot create {exc.filename} ({exc.strerror or exc}); set '
                f'JOBS_DATA_DIR or DATABASE_URL to a place you can write, for example '
                f'JOBS_DATA_DIR=$HOME/.local/share/rqjobs.') from None
        _bound_url = settings.database_url
    return models.db.obj


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
