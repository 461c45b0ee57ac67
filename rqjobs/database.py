"""The database named by `DATABASE_URL`, bound to the models' `db` proxy on first use."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import peewee

import models
from rqjobs.settings import Settings, get_settings

_bound_url: str | None = None
# Connections a forked child inherited: kept referenced, never used or closed (closing a PostgreSQL connection in
# the child would end the parent's session).
_inherited: list = []


def database(settings: Settings | None = None) -> peewee.Database:
    """Return the project's database, binding it to `models.db` if this process has not yet."""
    global _bound_url
    settings = settings or get_settings()
    if _bound_url != settings.database_url or models.db.obj is None:
        models.init_database(settings.database_url)
        _bound_url = settings.database_url
    return models.db.obj


@contextlib.contextmanager
def connection(settings: Settings | None = None) -> Iterator[peewee.Database]:
    """Open a connection for the length of one job or command, and close it afterwards."""
    db = database(settings)
    with db.connection_context():
        yield db


def _drop_inherited_connection() -> None:
    database = models.db.obj
    if database is not None and not database.is_closed():
        _inherited.append(database._state.conn)
        database._state.reset()


# rq runs every job in a forked work horse: the job must open its own connection, never share its parent's.
os.register_at_fork(after_in_child=_drop_inherited_connection)
