"""Jobs about the job system itself (queue `default`)."""

from __future__ import annotations

import logging
import os
import socket

import models
from rqjobs import clock, database

logger = logging.getLogger(__name__)

JOBS = ('ping',)


def ping() -> dict:
    """Report that a worker runs jobs and reaches the database."""
    # Read-only, so running it twice is harmless. It reports a missing schema rather than failing on it.
    with database.connection(schema=False) as db:
        tables = set(db.get_tables())
    missing = sorted(model._meta.table_name for model in models.MODELS if model._meta.table_name not in tables)
    result = {
        'pong': True,
        'host': socket.gethostname(),
        'pid': os.getpid(),
        'database': type(db).__name__,
        'schema_ready': not missing,
        'missing_tables': missing,
        'at': clock.utcnow().isoformat(timespec='seconds') + 'Z',
    }
    logger.info('ping: pid %s, schema ready %s', result['pid'], result['schema_ready'])
    return result
