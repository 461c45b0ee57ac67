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
                exceptions.InvalidJobArguments, exceptions.InvalidSubmission) as exc:
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


# ---- Warehouses ----

@main.group()
def warehouse() -> None:
    """Warehouses: git repositories documented by the warehouse jobs."""


@warehouse.command('add')
@click.argument('url')
@click.option('--branch', help='Branch to document [default: the repository\'s default branch].')
@click.option('--user', 'user_id', help='Id of the user who owns the warehouse (counts toward their limit).')
@click.option('--git-user', help='User name for the repository, if it needs one.')
@click.option('--token-env', metavar='VAR',
              help='Name of an environment variable holding the access token (never pass a token as an argument).')
@click.option('--json', 'as_json', is_flag=True, help='Print the warehouse as JSON.')
@click.pass_obj
def warehouse_add(obj: Context, url: str, branch: str | None, user_id: str | None, git_user: str | None,
                  token_env: str | None, as_json: bool) -> None:
    """Register the repository at URL and queue it for documentation."""
    import os

    from rqjobs import warehouse as warehouses

    token = None
    if token_env:
        token = os.environ.get(token_env)
        if not token:
            raise click.BadParameter(f'environment variable {token_env} is empty or unset; for example '
                                     f'export GIT_TOKEN=... and pass --token-env GIT_TOKEN.', param_hint='--token-env')
    row = warehouses.submit_warehouse(url, branch, user_id, git_user, token, connection=obj.redis,
                                      settings=obj.settings)
    data = warehouses.describe(row.id, obj.redis)
    emit(data, as_json, lambda d: click.echo(f'Warehouse {d["id"]} ({d["organization"]}/{d["name"]}) is '
                                             f'{d["status"]}' + ('; queued.' if d['jobs'] else
                                                                 '; waiting for room in its owner\'s limit.')))


@warehouse.command('list')
@click.option('--status', type=click.Choice(['Pending', 'Processing', 'Completed', 'Canceled', 'Unauthorized',
                                             'Failed']), help='Only warehouses in this state.')
@click.option('--limit', type=click.IntRange(1, 10000), default=100, show_default=True, help='At most this many.')
@click.option('--json', 'as_json', is_flag=True, help='Print the warehouses as JSON.')
@click.pass_obj
def warehouse_list(obj: Context, status: str | None, limit: int, as_json: bool) -> None:
    """List warehouses, newest first."""
    from rqjobs import warehouse as warehouses

    rows = warehouses.list_warehouses(status, limit)
    for row in rows:
        row['repository'] = f'{row["organization"]}/{row["name"]}'
        row['version'] = (row['version'] or '')[:10] or None
    emit(rows, as_json, lambda data: table(data, ['id', 'repository', 'branch', 'status', 'version', 'updated_at'])
         if data else click.echo('No warehouses. Add one with `jobs warehouse add URL`.'))


@warehouse.command('show')
@click.argument('warehouse_id')
@click.option('--json', 'as_json', is_flag=True, help='Print the warehouse as JSON.')
@click.pass_obj
def warehouse_show(obj: Context, warehouse_id: str, as_json: bool) -> None:
    """Show a warehouse: state, version, documentation counts, and the progress of its job."""
    from rqjobs import warehouse as warehouses

    data = warehouses.describe(warehouse_id, obj.redis)
    data['catalog'] = warehouses.catalog_tree(warehouse_id)

    def human(d):
        for key in ('id', 'organization', 'name', 'branch', 'address', 'status', 'version', 'classify', 'error',
                    'pages', 'commits', 'minimap_nodes', 'created_at', 'updated_at'):
            click.echo(f'{key + ":":<15}{_cell(d[key])}')
        for job in d['jobs']:
            progress = job['progress'] or {}
            click.echo(f'{"job:":<15}{job["id"]} {job["status"]} {progress.get("step", "")} '
                       f'{progress.get("percent", "")}{"%" if progress else ""}'.rstrip())
        if d['catalog']:
            click.echo('catalog:')
            print_catalog(d['catalog'], depth=1)

    emit(data, as_json, human)


def print_catalog(entries: list[dict], depth: int = 0) -> None:
    for entry in entries:
        click.echo(f'{"  " * depth}- {entry["title"]} ({entry["url"]})')
        print_catalog(entry['children'], depth + 1)


def print_tree(node: dict, depth: int = 0, limit: list[int] | None = None) -> None:
    """Print a mind map indented, at most `limit[0]` lines."""
    limit = limit if limit is not None else [60]
    if limit[0] <= 0:
        return
    limit[0] -= 1
    click.echo(f'{"  " * depth}{node["title"]}' + (f'  [{node["url"]}]' if node['url'] else ''))
    for child in node['nodes']:
        print_tree(child, depth + 1, limit)


@warehouse.command('reprocess')
@click.argument('warehouse_id')
@click.pass_obj
def warehouse_reprocess(obj: Context, warehouse_id: str) -> None:
    """Document a warehouse again from scratch (it goes back to Pending)."""
    from rqjobs import warehouse as warehouses

    row = warehouses.reprocess(warehouse_id, obj.redis)
    click.echo(f'Warehouse {row.id} is {row.status} again.')


@warehouse.command('remove')
@click.argument('warehouse_id')
@click.pass_obj
def warehouse_remove(obj: Context, warehouse_id: str) -> None:
    """Remove a warehouse: cancel its queued jobs, delete its clone, soft-delete its row."""
    from rqjobs import warehouse as warehouses

    warehouses.remove(warehouse_id, obj.redis)
    click.echo(f'Warehouse {warehouse_id} removed.')


@main.command()
@click.pass_context
def demo(ctx: click.Context) -> None:
    """Document a generated local repository end to end with a real worker, offline.

    Builds (or reuses) a git repository in five languages under JOBS_DATA_DIR/demo, submits it, runs a worker
    until its job ends, and prints the catalog, the start of the overview, the mind map and the timings. Local
    repositories are allowed for this command only.
    """
    import os

    from rqjobs import demo as demo_module
    from rqjobs import migration, queues, settings
    from rqjobs import warehouse as warehouses
    from rqjobs import worker as workers

    os.environ['ALLOW_LOCAL_REPOSITORIES'] = 'true'
    settings.reset()
    obj: Context = ctx.obj
    obj.__dict__.pop('settings', None)
    migration.create_schema()
    repository = demo_module.build_repository(obj.settings.data_dir / 'demo' / 'inkwell')
    click.echo(f'Repository: {repository}')
    existing = [row for row in warehouses.list_warehouses(limit=10000)
                if (row['organization'], row['name']) == ('demo', 'inkwell')]
    if existing:
        row = warehouses.reprocess(existing[0]['id'], obj.redis)
    else:
        row = warehouses.submit_warehouse(str(repository), connection=obj.redis, settings=obj.settings)
    click.echo(f'Warehouse {row.id} submitted; running a worker until its job ends…')
    workers.run_worker(obj.redis, [queues.WAREHOUSE], burst=True, logging_level='WARNING', settings=obj.settings)
    job = queues.JsonJob.fetch(warehouses.process_job_id(row.id), connection=obj.redis)
    data = warehouses.describe(row.id, obj.redis)
    if data['status'] != 'Completed':
        raise click.ClickException(f'Warehouse {row.id} ended {data["status"]}: {data["error"]}')
    result = job.return_value() or {}
    click.echo(f'\nCompleted {data["organization"]}/{data["name"]} at {data["version"][:12]} '
               f'({data["classify"]}): {result.get("files")} files, {data["pages"]} pages, {data["commits"]} commits.')
    click.echo('\nCatalog:')
    print_catalog(warehouses.catalog_tree(row.id), depth=1)
    overview = warehouses.page_content(row.id, 'overview') or ''
    click.echo('\nOverview (start):')
    for line in overview.splitlines()[:16]:
        click.echo(f'  {line}')
    click.echo('\nMind map:')
    print_tree(warehouses.minimap_of(row.id) or {'title': '(none)', 'url': '', 'nodes': []}, depth=1)
    timings = ', '.join(f'{name} {seconds:.2f} s' for name, seconds in result.get('timings', {}).items())
    click.echo(f'\nTimings: {timings}')


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
