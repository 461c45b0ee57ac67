"""What several benchmarks share: the `jobs` command as a user runs it, and a plan with the drain alone."""

from __future__ import annotations

import os
import sys

from scheduler import PLAN

DRAIN_ENTRY = 'process-access-logs'


def jobs_command(*args: str) -> list[str]:
    """Return the command line that runs `jobs ARGS` with this interpreter."""
    return [sys.executable, '-c', 'import cli; cli.main()', *args]


def drain_alone_env(directory: str, redis_url: str, **extra: str) -> dict[str, str]:
    """Return an environment on `redis_url` and a SQLite database in `directory`, whose plan runs the drain alone."""
    env = dict(
        os.environ,
        REDIS_URL=redis_url,
        JOBS_DATA_DIR=directory,
        DATABASE_URL=f'sqlite:///{directory}/bench.db',
        # Every other entry is switched off, so that the drain has the worker to itself.
        JOBS_SCHEDULE='; '.join(f'{entry.id}=off' for entry in PLAN if entry.id != DRAIN_ENTRY),
        **extra,
    )
    env.pop('TEST_DATABASE_URL', None)
    return env
