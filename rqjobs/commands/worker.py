"""`rqjobs worker`: run an rq worker."""

from __future__ import annotations

import functools
import logging

import click

from rqjobs.commands.helpers import UTF8_TEXT


@click.command()
@click.argument('queues', nargs=-1)
@click.option('--burst/--no-burst', default=False, help='Stop when the queues are empty instead of waiting.')
@click.option(
    '--max-jobs', type=click.IntRange(1), help='Stop after this many jobs (with --processes, replace the worker).'
)
@click.option('--name', type=UTF8_TEXT, help='Worker name (default: a unique id; with --processes, a prefix).')
@click.option(
    '--processes',
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help='Run this many workers, each a process of its own, supervised by this one.',
)
@click.option(
    '--in-process/--fork',
    default=False,
    help='Run each job in the worker process instead of a fork of it (several times the jobs per second for '
    'short ones), on the queues access_log and statistics only (without QUEUES: both).',
)
@click.pass_obj
def worker(
    obj,
    queues: tuple[str, ...],
    burst: bool,
    max_jobs: int | None,
    name: str | None,
    processes: int,
    in_process: bool,
) -> None:
    """Run an rq worker on its host's queue, then QUEUES (default: all, in priority order), or a pool of them."""
    from rqjobs import connections
    from rqjobs import worker as workers

    obj.redis  # noqa: B018 - says which Redis, and fails fast when it is down
    level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
    run = workers.run_worker if processes == 1 else functools.partial(workers.run_pool, processes=processes)
    try:
        run(
            connections.get_redis(obj.settings, shared=False),
            queues,
            burst=burst,
            max_jobs=max_jobs,
            name=name,
            in_process=in_process,
            logging_level=level,
            settings=obj.settings,
        )
    except KeyboardInterrupt:
        # Ctrl-C before rq installs its signal handlers (while the worker registers itself) arrives as an exception,
        # which click would end with `Aborted!` and exit 1: it is the same requested stop as later, so exit 0.
        click.echo('Worker stopped (Ctrl-C) before it took any job.', err=True)
