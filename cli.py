"""`jobs`: the command line of rqjobs.

Commands are thin: they parse, call one function of the `rqjobs` package and print. Nothing here touches Redis, the
database or the disk until a command runs, so `jobs --help` is instant.
"""

from __future__ import annotations

import json
import logging
import sys
from functools import cached_property

import click

from rqjobs import exceptions
from rqjobs.settings import get_settings

EXIT_OK = 0


class Context:
    """What the commands share: the settings and a Redis connection, both made on first use."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet

    @cached_property
    def settings(self):
        return get_settings()

    @cached_property
    def redis(self):
        from rqjobs import connections

        connection = connections.get_redis(self.settings)
        if not self.quiet:
            click.echo(f'Redis: {connections.describe(self.settings)}', err=True)
        return connection


class JobsGroup(click.Group):
    """A click group that turns the project's exceptions into clear messages and exit codes."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (exceptions.SettingsError, exceptions.UnknownJob, exceptions.UnknownQueue,
                exceptions.InvalidJobArguments) as exc:
            raise click.UsageError(str(exc), ctx=None) from None
        except exceptions.RqjobsError as exc:
            raise click.ClickException(str(exc)) from None


def emit(data, as_json: bool, human) -> None:
    """Print `data` as JSON, or through `human(data)` for people."""
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str, ensure_ascii=False))
    else:
        human(data)


def table(rows: list[dict], columns: list[str]) -> None:
    """Print rows as a plain aligned table."""
    widths = [max([len(column)] + [len(_cell(row.get(column))) for row in rows]) for column in columns]
    click.echo('  '.join(column.upper().ljust(width) for column, width in zip(columns, widths)).rstrip())
    for row in rows:
        click.echo('  '.join(_cell(row.get(column)).ljust(width) for column, width in zip(columns, widths)).rstrip())


def _cell(value) -> str:
    if value is None:
        return '-'
    if isinstance(value, list | tuple):
        return ','.join(map(str, value))
    return str(value)


@click.group(cls=JobsGroup, context_settings={'help_option_names': ['-h', '--help']})
@click.option('-v', '--verbose', count=True, help='Log more (repeat for debug output).')
@click.option('-q', '--quiet', is_flag=True, help='Log only warnings and errors.')
@click.version_option(package_name='rqjobs', prog_name='jobs')
@click.pass_context
def main(ctx: click.Context, verbose: int, quiet: bool) -> None:
    """Background jobs of the documentation platform, on RQ.

    Configuration comes from environment variables (see README.md). Without REDIS_URL, an embedded Redis server is
    started under JOBS_DATA_DIR and shared by every `jobs` command on this machine.
    """
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, stream=sys.stderr, format='%(asctime)s %(levelname)s %(name)s: %(message)s')
    ctx.obj = Context(quiet=quiet)


# ---- Database ----

@main.group()
def db() -> None:
    """Database schema commands."""


@db.command('init')
@click.pass_obj
def db_init(obj: Context) -> None:
    """Create the tables and indexes that are missing (safe to run again)."""
    from rqjobs import migration
    from rqjobs.settings import redact_url

    result = migration.create_schema()
    click.echo(f'{redact_url(obj.settings.database_url)}: {len(result["created"])} tables created, '
               f'{result["tables"]} present.')


# ---- Jobs ----

def parse_value(raw: str):
    """Read one command-line value: JSON when it parses (42, true, null, [1], {"a": 1}), else the plain string."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def parse_kwargs(pairs: tuple[str, ...]) -> dict:
    kwargs = {}
    for pair in pairs:
        name, sep, value = pair.partition('=')
        if not sep or not name.isidentifier():
            raise click.BadParameter(f'{pair!r} is not NAME=VALUE; for example --kwarg days_to_keep=30.',
                                     param_hint='--kwarg')
        kwargs[name] = parse_value(value)
    return kwargs


def list_jobs() -> None:
    from rqjobs import queues

    for spec in sorted(queues.registered_jobs().values(), key=lambda spec: (spec.queue, spec.name)):
        click.echo(f'{spec.queue:<11} {spec.signature}\n{"":<11}   {spec.summary}')


@main.command(context_settings={'ignore_unknown_options': True})
@click.argument('job', required=False)
@click.argument('args', nargs=-1, type=click.UNPROCESSED)
@click.option('-k', '--kwarg', 'kwargs', multiple=True, metavar='NAME=VALUE', help='A keyword argument (repeatable).')
@click.option('--queue', help='Put the job on this queue instead of its module\'s queue.')
@click.option('--list', 'show_list', is_flag=True, help='List the registered jobs with their signatures and exit.')
@click.option('--json', 'as_json', is_flag=True, help='Print the job as JSON.')
@click.pass_obj
def enqueue(obj: Context, job: str | None, args: tuple[str, ...], kwargs: tuple[str, ...], queue: str | None,
            show_list: bool, as_json: bool) -> None:
    """Enqueue JOB (a registered job's name) with ARGS.

    Each ARG and VALUE is read as JSON when it parses (42, true, null, "42" for the string) and as a plain string
    otherwise. Example: jobs enqueue ping
    """
    from rqjobs import queues

    if show_list:
        return list_jobs()
    if not job:
        raise click.UsageError('Name the job to enqueue, for example `jobs enqueue ping`; `jobs enqueue --list` '
                               'lists them.')
    spec = queues.find_job(job, obj.settings)
    values = [parse_value(arg) for arg in args]
    keywords = parse_kwargs(kwargs)
    queues.check_arguments(spec, values, keywords)
    rq_job = queues.enqueue(spec.path, values, keywords, queue=queue, connection=obj.redis, settings=obj.settings)
    emit({'id': rq_job.id, 'job': spec.path, 'queue': rq_job.origin, 'status': rq_job.get_status()}, as_json,
         lambda data: click.echo(f'Enqueued {spec.name} as job {data["id"]} on queue {data["queue"]}.'))


# ---- Processes ----

@main.command()
@click.argument('queues', nargs=-1)
@click.option('--burst/--no-burst', default=False, help='Stop when the queues are empty instead of waiting.')
@click.option('--max-jobs', type=click.IntRange(1), help='Stop after this many jobs.')
@click.option('--name', help='Worker name (default: a unique id).')
@click.pass_context
def worker(ctx: click.Context, queues: tuple[str, ...], burst: bool, max_jobs: int | None, name: str | None) -> None:
    """Run an rq worker on QUEUES (default: all, in priority order)."""
    from rqjobs import worker as workers

    obj: Context = ctx.obj
    level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
    workers.run_worker(obj.redis, queues, burst=burst, max_jobs=max_jobs, name=name, logging_level=level,
                       settings=obj.settings)


@main.command('scheduler')
@click.option('--interval', type=click.FloatRange(0.5, 60), default=None,
              help='Seconds between two looks at the schedule [default: 5].')
@click.option('--burst', is_flag=True, help='Enqueue what is due once, then exit.')
@click.pass_obj
def scheduler_command(obj: Context, interval: float | None, burst: bool) -> None:
    """Run the rq-scheduler process."""
    import scheduler

    scheduler.run(obj.redis, interval=interval or scheduler.POLL_INTERVAL, burst=burst)


@main.command()
@click.option('--bind', default='127.0.0.1', show_default=True, envvar='DASHBOARD_BIND',
              help='Address to listen on; keep the default unless a proxy with authentication is in front.')
@click.option('--port', type=click.IntRange(1, 65535), default=9181, show_default=True, envvar='DASHBOARD_PORT',
              help='Port to listen on.')
@click.pass_obj
def dashboard(obj: Context, bind: str, port: int) -> None:
    """Run rq-dashboard on the project's Redis, reading the JSON job payloads."""
    import os

    from rq_dashboard.cli import run

    from rqjobs import connections

    obj.redis  # noqa: B018 - fail fast, and start the embedded server, before the web server starts
    # The URL goes through the environment, not argv, so a password in it never shows in `ps`.
    os.environ['RQ_DASHBOARD_REDIS_URL'] = connections.redis_url(obj.settings)
    run.main(['--bind', bind, '--port', str(port), '--json'], prog_name='jobs dashboard',
             auto_envvar_prefix='RQ_DASHBOARD')


# ---- Inspection ----

@main.command()
@click.option('--json', 'as_json', is_flag=True, help='Print the status as JSON.')
@click.pass_obj
def status(obj: Context, as_json: bool) -> None:
    """Show every queue's job counts and every worker's state."""
    from rqjobs import connections, monitor

    data = {
        'redis': connections.describe(obj.settings),
        'queues': monitor.queue_counts(obj.redis, obj.settings),
        'workers': monitor.worker_states(obj.redis),
    }

    def human(data):
        table(data['queues'], ['queue', 'queued', 'started', 'finished', 'failed', 'scheduled', 'deferred'])
        click.echo()
        if data['workers']:
            table(data['workers'], ['name', 'state', 'queues', 'current_job', 'last_heartbeat'])
        else:
            click.echo('No workers. Start one with `jobs worker`.')

    emit(data, as_json, human)


# ---- Embedded Redis ----

@main.group('redis')
def redis_group() -> None:
    """The embedded Redis server (used when REDIS_URL is unset)."""


@redis_group.command('stop')
@click.pass_obj
def redis_stop(obj: Context) -> None:
    """Stop the embedded Redis server; its data stays on disk for the next start."""
    from rqjobs.embedded import EmbeddedRedis

    if obj.settings.redis_url:
        raise click.UsageError('REDIS_URL is set, so no embedded Redis is in use; stop that server with its own tools.')
    server = EmbeddedRedis(obj.settings.data_dir / 'redis')
    click.echo('Embedded Redis stopped.' if server.stop() else 'Embedded Redis was not running.')


if __name__ == '__main__':
    main()
