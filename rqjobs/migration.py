"""Schema and data migration jobs (queue `migration`)."""

from __future__ import annotations

import logging

import models
from rqjobs import database

logger = logging.getLogger(__name__)

JOBS = ('create_schema',)


def create_schema() -> dict:
    """Create every missing table and index of the project's models."""
    # Creation skips what exists, so a second run (a retry, a second `jobs db init`) changes nothing.
    with database.connection() as db:
        before = set(db.get_tables())
        models.create_tables()
        after = set(db.get_tables())
    created = sorted(after - before)
    logger.info('schema: %d tables created, %d present', len(created), len(after))
    return {'created': created, 'tables': len(after)}
