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
EXIT_FAILED = 1
# `rqjobs enqueue --wait --timeout S` exits with this when the job did not end in time.
EXIT_TIMEOUT = 3


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


def _database_errors() -> tuple[type[Exception], ...]:
    # peewee is looked up only once a command has imported it, so that `jobs --help` loads no ORM.
    peewee = sys.modules.get('peewee')
    return (peewee.OperationalError, peewee.InterfaceError) if peewee else ()


class JobsGroup(click.Group):
    """A click group that turns the project's exceptions into clear messages and exit codes."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (exceptions.SettingsError, exceptions.UnknownJob, exceptions.UnknownQueue,
                exceptions.InvalidJobArguments, exceptions.InvalidSubmission, exceptions.WarehouseNotFound) as exc:
            raise click.UsageError(str(exc), ctx=None) from None
        except exceptions.RqjobsError as exc:
            raise click.ClickException(str(exc)) from None
        except _database_errors() as exc:
            # Connecting fails as DatabaseUnavailable already; this is the database locked or lost mid-command.
            from rqjobs.settings import redact_url

            reason = ' '.join(str(exc).split())
            raise click.ClickException(f'The database at {redact_url(get_settings().database_url)} failed: {reason}; '
                                       f'try the command again.') from None
        except Exception as exc:
            # Any command's write can meet a full Redis; redis is looked up only once a command has imported it.
            redis = sys.modules.get('redis')
            if redis is not None and isinstance(exc, redis.exceptions.OutOfMemoryError):
                from rqjobs import queues

                raise click.ClickException(queues.redis_full_message('the command could not write to it')) from None
            from rqjobs import connections  # only once something failed: --help stays instant

            lost = connections.lost(exc)
            if lost is None:
                raise
            raise click.ClickException(str(lost)) from None


class Utf8Text(click.ParamType):
    """A text argument that must be valid UTF-8, as the database and Redis store it."""

    name = 'text'

    def convert(self, value, param, ctx):
        # Python hands over bytes that are not UTF-8 as lone surrogates, which no database driver can encode.
        try:
            value.encode('utf-8')
        except UnicodeEncodeError:
            self.fail(f'{value!r} is not UTF-8 text; type it again in a UTF-8 terminal, for example with '
                      f'LANG=C.UTF-8.', param, ctx)
        return value


UTF8_TEXT = Utf8Text()


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
@click.version_option(package_name='rqjobs')
@click.pass_context
def main(ctx: click.Context, verbose: int, quiet: bool) -> None:
    """Background jobs of the documentation platform, on RQ.

    Configuration comes from environment variables (see README.md). Without REDIS_URL, an embedded Redis server is
    started under JOBS_DATA_DIR (./var by default): one per data directory, shared by every command run with that
    directory, and left running until `rqjobs redis stop`; `rqjobs redis url` prints its URL.

    `rqjobs` and `jobs` are the same command; type `rqjobs` in a shell, where `jobs` is a builtin.
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
    """Apply pending schema steps and create the first users and roles (safe to run again)."""
    from rqjobs import migration
    from rqjobs.settings import redact_url

    result = migration.create_schema()
    click.echo(f'{redact_url(obj.settings.database_url)}: {len(result["created"])} tables created, '
               f'{result["tables"]} present.')
    users = migration.initialize_users()
    if users['status'] == 'initialized':
        click.echo(f'Roles admin and user created; {users["assigned"]} users assigned.')
    if users.get('password_file'):
        from pathlib import Path

        path = Path(users['password_file'])
        click.echo(f'First admin user "admin" created with password {path.read_text().strip()} '
                   f'(also in {path}, readable only by you; shown once).')


@db.command('upgrade')
@click.pass_obj
def db_upgrade(obj: Context) -> None:
    """Apply the pending schema steps, in order (two at once cannot both apply a step)."""
    from rqjobs import migration

    applied = migration.upgrade()
    if not applied:
        click.echo('Schema is up to date.')
    for step in applied:
        click.echo(f'Applied step {step["version"]}: {step["name"]}')


@db.command('status')
@click.option('--json', 'as_json', is_flag=True, help='Print the steps as JSON.')
@click.pass_obj
def db_status(obj: Context, as_json: bool) -> None:
    """List the schema steps, applied and pending."""
    from rqjobs import migration

    steps = migration.schema_status()
    for step in steps:
        step['state'] = 'applied' if step['applied_at'] else 'pending'
    emit(steps, as_json, lambda rows: table(rows, ['version', 'state', 'applied_at', 'name']))


@db.command('backup')
@click.option('--output', type=click.Path(dir_okay=False, writable=True),
              help='File to write, in a directory that exists [default: BACKUP_DIR/backup-<UTC time>.jsonl.gz]; '
                   'never overwritten.')
@click.option('--json', 'as_json', is_flag=True, help='Print the result as JSON.')
@click.pass_obj
def db_backup(obj: Context, output: str | None, as_json: bool) -> None:
    """Write a consistent backup (no password hashes, no git credentials)."""
    from rqjobs import migration

    result = migration.write_backup(output) if output else migration.backup_data()
    emit(result, as_json, lambda r: click.echo(f'Backup written to {r["path"]} ({sum(r["counts"].values())} rows).'))


@db.command('restore')
@click.argument('path', type=click.Path(exists=True, dir_okay=False))
@click.option('--replace', is_flag=True, help='Replace the rows of a database that is not empty.')
@click.pass_obj
def db_restore(obj: Context, path: str, replace: bool) -> None:
    """Restore a backup into an empty database, all or nothing (users must set new passwords)."""
    from rqjobs import migration

    result = migration.restore_file(path, replace=replace)
    click.echo(f'Restored {sum(result["counts"].values())} rows from {path}.')


# ---- Mind maps ----

@main.group('minimap')
def minimap_group() -> None:
    """Mind maps of warehouses."""


@minimap_group.command('show')
@click.argument('warehouse_id', type=UTF8_TEXT)
@click.option('--json', 'as_json', is_flag=True, help='Print the tree as JSON.')
@click.option('--max-lines', type=click.IntRange(1, 100000), default=500, show_default=True,
              help='Print at most this many lines of the tree.')
def minimap_show(warehouse_id: str, as_json: bool, max_lines: int) -> None:
    """Print a warehouse's mind map as an indented tree."""
    from models import WarehouseStatus
    from rqjobs import minimap
    from rqjobs import warehouse as warehouses

    row = warehouses.get_warehouse(warehouse_id)  # a clear message for an unknown id
    tree = minimap.stored_tree(warehouse_id)
    if tree is None and row.status != WarehouseStatus.COMPLETED:
        raise click.ClickException(f'Warehouse {warehouse_id} has no mind map: it is {row.status}, and mind maps are '
                                   f'built for Completed warehouses.')
    if tree is None:
        raise click.ClickException(f'Warehouse {warehouse_id} has no mind map; make one with '
                                   f'`rqjobs minimap regenerate {warehouse_id}`.')
    emit(tree, as_json, lambda t: print_tree(t, limit=[max_lines]))


@minimap_group.command('regenerate')
@click.argument('warehouse_id', type=UTF8_TEXT)
def minimap_regenerate(warehouse_id: str) -> None:
    """Build a warehouse's mind map again now and replace the stored one."""
    from rqjobs import minimap
    from rqjobs import warehouse as warehouses

    warehouses.get_warehouse(warehouse_id)  # a clear message for an unknown id
    result = minimap.regenerate_minimap(warehouse_id)
    if result['status'] != 'regenerated':
        raise click.ClickException(f'Warehouse {warehouse_id}: {result["message"]}.')
    click.echo(f'Mind map of {warehouse_id} regenerated: {result["nodes"]} nodes.')


@minimap_group.command('validate')
@click.argument('warehouse_id', type=UTF8_TEXT)
@click.option('--json', 'as_json', is_flag=True, help='Print the result as JSON.')
def minimap_validate(warehouse_id: str, as_json: bool) -> None:
    """Check a stored mind map's shape; exit 1 if it is missing or invalid."""
    from rqjobs import minimap
    from rqjobs import warehouse as warehouses

    warehouses.get_warehouse(warehouse_id)  # a clear message for an unknown id
    result = minimap.validate_minimap(warehouse_id)
    emit(result, as_json, lambda r: click.echo(
        f'Valid: {r["nodes"]} nodes, {r["edges"]} edges, depth {r["depth"]}.' if r['valid']
        else f'Not valid: {r["error"]}.'))
    if not result['valid']:
        raise SystemExit(1)


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
@click.option('--at', 'at_text', metavar='TIME', help='Run at this ISO 8601 time (UTC unless an offset is given), '
              'for example 2026-12-01T02:30.')
@click.option('--in', 'in_text', metavar='DURATION', help='Run after this delay, for example 90s, 5m, 2h or 1d.')
@click.option('--retry/--no-retry', default=True, show_default=True,
              help='Retry on a transient error (3 more tries, 60 s apart).')
@click.option('--wait', is_flag=True, help='Wait for the job to end, showing its progress, then print its result.')
@click.option('--timeout', type=click.FloatRange(0.1, 86400), default=None,
              help=f'With --wait: give up waiting after this many seconds (exit {EXIT_TIMEOUT}) [default: none].')
@click.option('--list', 'show_list', is_flag=True, help='List the registered jobs with their signatures and exit.')
@click.option('--json', 'as_json', is_flag=True, help='Print the job (or, with --wait, its outcome) as JSON.')
@click.pass_obj
def enqueue(obj: Context, job: str | None, args: tuple[str, ...], kwargs: tuple[str, ...], queue: str | None,
            at_text: str | None, in_text: str | None, retry: bool, wait: bool, timeout: float | None,
            show_list: bool, as_json: bool) -> None:
    """Enqueue JOB (a registered job's name) with ARGS.

    Each ARG and VALUE is read as JSON when it parses (42, true, null, "42" for the string) and as a plain string
    otherwise. With --wait the exit status is 0 when the job finished, 1 when it failed or was stopped, and
    3 when --timeout passed first (the job goes on). Example: rqjobs enqueue ping --wait
    """
    from rqjobs import control, queues

    if show_list:
        return list_jobs()
    if not job:
        raise click.UsageError('Name the job to enqueue, for example `rqjobs enqueue ping`; `rqjobs enqueue --list` '
                               'lists them.')
    if at_text and in_text:
        raise click.UsageError('Give either --at or --in, not both.')
    if timeout is not None and not wait:
        raise click.UsageError('--timeout goes with --wait.')
    try:
        at = control.parse_time(at_text) if at_text else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint='--at') from None
    try:
        delay = control.parse_duration(in_text) if in_text else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint='--in') from None
    spec = queues.find_job(job, obj.settings)
    values = [parse_value(arg) for arg in args]
    keywords = parse_kwargs(kwargs)
    queues.check_arguments(spec, values, keywords, obj.settings)
    options = {} if retry else {'retry': None}
    rq_job = queues.enqueue(spec.path, values, keywords, queue=queue, at=at, delay=delay, connection=obj.redis,
                            settings=obj.settings, **options)
    if not wait:
        emit({'id': rq_job.id, 'job': spec.path, 'queue': rq_job.origin, 'status': rq_job.get_status().value}, as_json,
             lambda data: click.echo(f'Enqueued {spec.name} as job {data["id"]} on queue {data["queue"]} '
                                     f'({data["status"]}).'))
        return None
    if not as_json:
        click.echo(f'Enqueued {spec.name} as job {rq_job.id} on queue {rq_job.origin}; waiting for it to end…',
                   err=True)
    wait_for(obj, rq_job.id, timeout, as_json)
    return None


def wait_for(obj: Context, job_id: str, timeout: float | None, as_json: bool) -> None:
    """Follow a job until it ends, with a progress bar fed by its progress meta; exit with its outcome."""
    import time

    from rqjobs import monitor

    deadline = None if timeout is None else time.monotonic() + timeout
    details = monitor.job_details(obj.redis, job_id)
    if details['status'] == 'queued' and not monitor.queue_has_worker(obj.redis, details['queue']):
        click.echo(f'No worker listens on queue {details["queue"]}; start one with `rqjobs worker {details["queue"]}`.',
                   err=True)
    shown = 0
    with click.progressbar(length=100, label=details['status'], file=sys.stderr, show_eta=False) as bar:
        while True:
            progress = details['progress'] or {}
            percent = max(shown, int(progress.get('percent', 0)))
            bar.label = progress.get('step') or details['status']
            # update() also prints a changed label when stderr is not a terminal, so logs show queued → started.
            bar.update(percent - shown)
            shown = percent
            if details['status'] in ('finished', 'failed', 'stopped', 'canceled'):
                break
            if deadline is not None and time.monotonic() >= deadline:
                details = None
                break
            time.sleep(0.2)
            details = monitor.job_details(obj.redis, job_id)
    if details is None:
        message = f'Job {job_id} did not end within {timeout:g} s; it goes on (`rqjobs job show {job_id}`).'
        emit({'id': job_id, 'status': 'timeout', 'message': message}, as_json, lambda _: click.echo(message, err=True))
        raise SystemExit(EXIT_TIMEOUT)
    if details['status'] == 'finished':
        emit(details if as_json else details['result'], as_json,
             lambda result: click.echo(json.dumps(result, indent=2, default=str, ensure_ascii=False)))
        return
    emit(details, as_json, print_failure)
    raise SystemExit(EXIT_FAILED)


def print_failure(details: dict) -> None:
    """Print how a job ended: one line for a permanent error (bad input), the traceback for an unexpected one."""
    if details['permanent_error']:
        click.echo(f'Job {details["id"]} {details["status"]}: {details["permanent_error"]}', err=True)
    else:
        click.echo(f'Job {details["id"]} {details["status"]}:\n{details["error"] or ""}'.rstrip(), err=True)


# ---- Single jobs ----

def job_ids_argument(name: str, **kwargs):
    """A JOB_ID argument (or several, with nargs=-1) that refuses what rq cannot take as an id, as a usage error."""
    def check(ctx: click.Context, param: click.Parameter, value):
        from rq.job import JOB_ID_PATTERN

        for job_id in (value if isinstance(value, tuple) else (value,)):
            if not JOB_ID_PATTERN.fullmatch(job_id):
                raise click.BadParameter(f'{job_id!r} is not a job id: an id holds only letters, digits, _ and -, '
                                         f'for example warehouse-42.')
        return value

    return click.argument(name, callback=check, **kwargs)


@main.group('job')
def job_group() -> None:
    """One job: show, cancel, stop or delete it."""


@job_group.command('show')
@job_ids_argument('job_id')
@click.option('--json', 'as_json', is_flag=True, help='Print the job as JSON.')
@click.pass_obj
def job_show(obj: Context, job_id: str, as_json: bool) -> None:
    """Show a job: status, queue, function, arguments, timings, retries left, progress, result or error."""
    from rqjobs import control, monitor

    control.fetch(obj.redis, job_id)  # a clear message for an unknown id
    data = monitor.job_details(obj.redis, job_id)

    def human(d):
        for key in ('id', 'status', 'queue', 'job', 'args', 'kwargs', 'enqueued_at', 'started_at', 'ended_at',
                    'worker', 'timeout', 'retries_left', 'progress'):
            click.echo(f'{key + ":":<14}{_cell(d[key]) if not isinstance(d[key], dict) else json.dumps(d[key])}')
        if d['result'] is not None:
            click.echo(f'{"result:":<14}{json.dumps(d["result"], default=str, ensure_ascii=False)}')
        if d['permanent_error']:
            click.echo(f'{"error:":<14}{d["permanent_error"]}')  # bad input: the traceback adds nothing (--json has it)
        elif d['error']:
            click.echo(f'error:\n{d["error"]}')

    emit(data, as_json, human)


@job_group.command('cancel')
@job_ids_argument('job_id')
@click.pass_obj
def job_cancel(obj: Context, job_id: str) -> None:
    """Cancel a queued, scheduled or deferred job."""
    from rqjobs import control

    status = control.cancel_job(obj.redis, job_id)
    click.echo(f'Job {job_id} ({status}) cancelled.')


@job_group.command('stop')
@job_ids_argument('job_id')
@click.pass_obj
def job_stop(obj: Context, job_id: str) -> None:
    """Stop a running job (its worker kills the work horse; the job ends as stopped)."""
    from rqjobs import control

    control.stop_job(obj.redis, job_id)
    click.echo(f'Stop sent to the worker running {job_id}.')


@job_group.command('delete')
@job_ids_argument('job_id')
@click.pass_obj
def job_delete(obj: Context, job_id: str) -> None:
    """Delete a job that is not running, with its result."""
    from rqjobs import control

    status = control.delete_job(obj.redis, job_id)
    click.echo(f'Job {job_id} ({status}) deleted.')


@main.command()
@job_ids_argument('job_ids', nargs=-1)
@click.option('--queue', help='Only failed jobs of this queue.')
@click.option('--all', 'everything', is_flag=True, help='Requeue every failed job (of --queue, if given).')
@click.pass_obj
def requeue(obj: Context, job_ids: tuple[str, ...], queue: str | None, everything: bool) -> None:
    """Put failed jobs back on their queues: JOB_IDS, or --all."""
    from rqjobs import control, queues

    if bool(job_ids) == everything:
        raise click.UsageError('Name the failed jobs to requeue, or pass --all; for example `rqjobs requeue --all '
                               '--queue warehouse`.')
    if queue:
        queues.get_queue(queue, obj.redis, obj.settings)  # an unknown queue exits 2 listing the known ones
    done = control.requeue_failed(obj.redis, list(job_ids) if job_ids else None, queue, obj.settings)
    click.echo(f'{len(done)} failed jobs requeued.')


@main.command()
@click.option('--failed-older-than', metavar='DURATION', help='Delete failed jobs that ended longer ago than this, '
              'for example 7d.')
@click.option('--finished', is_flag=True, help='Delete finished jobs and their results.')
@click.option('--dead-workers', is_flag=True, help='Remove workers that stopped sending heartbeats from the lists.')
@click.option('--orphan-clones', is_flag=True,
              help='Delete clone directories of warehouses that no longer exist, and what a stopped removal left.')
@click.option('--dry-run', is_flag=True, help='List what would be removed, remove nothing.')
@click.option('--json', 'as_json', is_flag=True, help='Print the report as JSON.')
@click.pass_obj
def cleanup(obj: Context, failed_older_than: str | None, finished: bool, dead_workers: bool, orphan_clones: bool,
            dry_run: bool, as_json: bool) -> None:
    """Trim rq's registries, dead worker entries and orphan clones; nothing is removed without an option."""
    from rqjobs import control

    if not (failed_older_than or finished or dead_workers or orphan_clones):
        raise click.UsageError('Say what to clean up: --failed-older-than 7d, --finished, --dead-workers or '
                               '--orphan-clones (add --dry-run to only list it).')
    try:
        older = control.parse_duration(failed_older_than) if failed_older_than else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint='--failed-older-than') from None
    report = control.cleanup(obj.redis, failed_older_than=older, finished=finished, dead_workers=dead_workers,
                             orphan_clones=orphan_clones, dry_run=dry_run, settings=obj.settings)

    def human(r):
        click.echo(('Would remove: ' if dry_run else 'Removed: ') + control.summary(r) + '.')
        for name, items in r.items():
            for item in items:
                click.echo(f'  {name}: {item}')

    emit(report, as_json, human)


@main.command('suspend')
@click.option('--duration', type=click.IntRange(1, 31 * 86400), help='Resume by itself after this many seconds.')
@click.pass_obj
def suspend_command(obj: Context, duration: int | None) -> None:
    """Stop all workers from taking new jobs; running jobs finish."""
    from rqjobs import control

    control.suspend_workers(obj.redis, duration)
    click.echo('Workers suspended' + (f' for {duration} s.' if duration else '; `rqjobs resume` lets them go on.'))


@main.command('resume')
@click.pass_obj
def resume_command(obj: Context) -> None:
    """Let suspended workers take jobs again."""
    from rqjobs import control

    click.echo('Workers resumed.' if control.resume_workers(obj.redis) else 'Workers were not suspended.')


# ---- Inspection of workers and jobs ----

@main.group('inspect')
def inspect_group() -> None:
    """What the workers are doing and have done."""


def limit_option(function):
    return click.option('--limit', type=click.IntRange(1, 10000), default=50, show_default=True,
                        help='At most this many rows.')(function)


def queue_option(function):
    return click.option('--queue', help='Only this queue.')(function)


def json_option(function):
    return click.option('--json', 'as_json', is_flag=True, help='Print as JSON.')(function)


@inspect_group.command('active')
@json_option
@click.pass_obj
def inspect_active(obj: Context, as_json: bool) -> None:
    """Running jobs, per worker, with their progress."""
    from rqjobs import monitor

    rows = monitor.active_jobs(obj.redis)
    for row in rows:
        progress = row['progress'] or {}
        row['step'] = f'{progress.get("step", "")} {progress.get("percent", "")}'.strip() or None
    emit(rows, as_json, lambda data: table(data, ['worker', 'job_id', 'job', 'queue', 'running_for', 'step'])
         if data else click.echo('No job is running.'))


@inspect_group.command('stats')
@queue_option
@json_option
@click.pass_obj
def inspect_stats(obj: Context, queue: str | None, as_json: bool) -> None:
    """Per worker: jobs, busy time, heartbeat; per job: count, failure rate, p50/p95 run time."""
    from rqjobs import monitor, queues

    if queue:
        queues.get_queue(queue, obj.redis, obj.settings)
    data = {'workers': monitor.worker_statistics(obj.redis),
            'jobs': monitor.job_statistics(obj.redis, obj.settings, queue)}

    def human(d):
        if d['workers']:
            table(d['workers'], ['name', 'state', 'successful_jobs', 'failed_jobs', 'busy_seconds', 'last_heartbeat'])
        else:
            click.echo('No workers.')
        click.echo()
        if d['jobs']:
            table(d['jobs'], ['job', 'count', 'failed', 'failure_rate', 'p50_seconds', 'p95_seconds'])
        else:
            click.echo('No finished or failed jobs kept.')

    emit(data, as_json, human)


@inspect_group.command('scheduled')
@limit_option
@json_option
@click.pass_obj
def inspect_scheduled(obj: Context, limit: int, as_json: bool) -> None:
    """Everything scheduled: the periodic plan and rq's scheduled jobs (retries, delays)."""
    import scheduler

    data = scheduler.describe(obj.redis)
    data['one_off'] = data['one_off'][:limit]
    emit(data, as_json, print_schedule)


@inspect_group.command('failed')
@queue_option
@limit_option
@json_option
@click.pass_obj
def inspect_failed(obj: Context, queue: str | None, limit: int, as_json: bool) -> None:
    """Failed jobs, newest first, with their error in one line."""
    from rqjobs import monitor, queues

    if queue:
        queues.get_queue(queue, obj.redis, obj.settings)
    rows = monitor.failed_jobs(obj.redis, obj.settings, queue, limit)
    emit(rows, as_json, lambda data: table(data, ['id', 'job', 'queue', 'failed_at', 'error']) if data
         else click.echo('No failed jobs.'))


# ---- Processes ----

@main.command()
@click.argument('queues', nargs=-1)
@click.option('--burst/--no-burst', default=False, help='Stop when the queues are empty instead of waiting.')
@click.option('--max-jobs', type=click.IntRange(1), help='Stop after this many jobs.')
@click.option('--name', type=UTF8_TEXT, help='Worker name (default: a unique id).')
@click.pass_context
def worker(ctx: click.Context, queues: tuple[str, ...], burst: bool, max_jobs: int | None, name: str | None) -> None:
    """Run an rq worker on QUEUES (default: all, in priority order)."""
    from rqjobs import connections
    from rqjobs import worker as workers

    obj: Context = ctx.obj
    obj.redis  # noqa: B018 - says which Redis, and fails fast when it is down
    level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
    workers.run_worker(connections.get_redis(obj.settings, shared=False), queues, burst=burst, max_jobs=max_jobs,
                       name=name, logging_level=level, settings=obj.settings)


@main.command('scheduler')
@click.option('--interval', type=click.FloatRange(0.5, 60), default=None,
              help='Seconds between two looks at the schedule [default: 5].')
@click.option('--burst', is_flag=True, help='Enqueue what is due once, then exit.')
@click.pass_obj
def scheduler_command(obj: Context, interval: float | None, burst: bool) -> None:
    """Register the periodic plan, then run the rq-scheduler loop (one active scheduler at a time)."""
    import scheduler

    scheduler.run(obj.redis, interval=interval or scheduler.POLL_INTERVAL, burst=burst)


@main.group('schedule')
def schedule_group() -> None:
    """The periodic plan in Redis."""


@schedule_group.command('show')
@click.option('--json', 'as_json', is_flag=True, help='Print the plan as JSON.')
@click.pass_obj
def schedule_show(obj: Context, as_json: bool) -> None:
    """Show every plan entry with its next and last run, and the one-off jobs waiting (retries, delays)."""
    import scheduler

    emit(scheduler.describe(obj.redis), as_json, print_schedule)


def print_schedule(data: dict) -> None:
    """Print the plan entries with their next and last runs, then the one-off jobs waiting."""
    rows = [{**entry, 'last': (entry['last_run'] or {}).get('status'),
             'next_run_utc': entry['next_run_utc'].isoformat(sep=' ', timespec='seconds'),
             'next_run_local': entry['next_run_local'].isoformat(sep=' ', timespec='seconds')}
            for entry in data['entries']]
    if rows:
        table(rows, ['id', 'when', 'next_run_utc', 'next_run_local', 'last'])
    else:
        click.echo('No plan entries. Create them with `rqjobs schedule register`.')
    if data['one_off']:
        click.echo()
        table(data['one_off'], ['id', 'job', 'queue', 'at', 'source'])


@schedule_group.command('register')
@click.pass_obj
def schedule_register(obj: Context) -> None:
    """Recreate the plan now (the scheduler process does it on start)."""
    import scheduler

    result = scheduler.register(obj.redis)
    click.echo(', '.join(f'{len(ids)} {name}' for name, ids in result.items()) + '.')


@schedule_group.command('clear')
@click.pass_obj
def schedule_clear(obj: Context) -> None:
    """Remove every plan entry (runs already enqueued go on)."""
    import scheduler

    removed = scheduler.clear(obj.redis)
    click.echo(f'{len(removed)} plan entries removed.')


@main.command()
@click.option('--bind', default='127.0.0.1', show_default=True, envvar='DASHBOARD_BIND',
              help='Address to listen on; keep the default unless a proxy with authentication is in front.')
@click.option('--port', type=click.IntRange(1, 65535), default=9181, show_default=True, envvar='DASHBOARD_PORT',
              help='Port to listen on.')
@click.option('--username', envvar='DASHBOARD_USERNAME', help='Basic-auth user name (required off localhost).')
@click.option('--password-env', default='DASHBOARD_PASSWORD', show_default=True, metavar='VAR',
              help='Environment variable holding the basic-auth password (never pass it as an argument).')
@click.pass_obj
def dashboard(obj: Context, bind: str, port: int, username: str | None, password_env: str) -> None:
    """Run rq-dashboard on the project's Redis, reading the JSON job payloads.

    It listens on 127.0.0.1 by default. To listen on another address, set DASHBOARD_USERNAME and
    DASHBOARD_PASSWORD: basic auth is then required.
    """
    import errno
    import ipaddress
    import logging as logging_module
    import os
    import socket

    from werkzeug import serving

    from rqjobs import connections
    from rqjobs import dashboard as dashboard_module

    password = os.environ.get(password_env) or None
    local = bind == 'localhost' or _is_loopback(bind, ipaddress)
    if bool(username) != bool(password):
        raise click.UsageError(f'Set both DASHBOARD_USERNAME and {password_env} for basic auth, or neither.')
    if not local and not username:
        raise click.UsageError(f'The dashboard shows and deletes jobs: to listen on {bind}, set DASHBOARD_USERNAME '
                               f'and {password_env} (basic auth), or keep --bind 127.0.0.1.')
    obj.redis  # noqa: B018 - fail fast, and start the embedded server, before the web server starts
    app = dashboard_module.create_app(connections.redis_url(obj.settings), username, password)
    logging_module.getLogger('werkzeug').setLevel(logging_module.WARNING)
    # Flask's app.run() lets werkzeug print a failed bind in several lines and exit by itself: bind here, say why
    # in one line, and hand werkzeug the listening socket.
    family = serving.select_address_family(bind, port)
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as werkzeug does
    try:
        listener.bind(serving.get_sockaddr(bind, port, family))
        listener.listen()
    except OSError as exc:
        listener.close()
        if exc.errno == errno.EADDRINUSE:
            raise click.ClickException(f'Port {port} on {bind} is in use by another program; stop that program or '
                                       f'pick another port, for example --port {port % 65535 + 1}.') from None
        raise click.ClickException(f'Cannot listen on {bind}:{port} ({exc.strerror or exc}); check --bind, for '
                                   f'example --bind 127.0.0.1.') from None
    server = serving.make_server(bind, port, app, threaded=True, fd=listener.fileno())
    click.echo(f'rq-dashboard on http://{bind}:{port}/' + (' (basic auth)' if username else ''), err=True)
    server.serve_forever()


def _is_loopback(address: str, ipaddress) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


# ---- Warehouses ----

@main.group()
def warehouse() -> None:
    """Warehouses: git repositories documented by the warehouse jobs."""


@warehouse.command('add')
@click.argument('url')
@click.option('--branch', help='Branch to document [default: the repository\'s default branch].')
@click.option('--user', 'user_id', type=UTF8_TEXT,
              help='Id of the user who owns the warehouse (counts toward their limit).')
@click.option('--git-user', type=UTF8_TEXT, help='User name for the repository, if it needs one.')
@click.option('--token-env', metavar='VAR',
              help='Name of an environment variable holding the access token (never pass a token as an argument).')
@click.option('--json', 'as_json', is_flag=True, help='Print the warehouse as JSON.')
@click.pass_obj
def warehouse_add(obj: Context, url: str, branch: str | None, user_id: str | None, git_user: str | None,
                  token_env: str | None, as_json: bool) -> None:
    """Register the repository at URL and queue it for documentation.

    URL is an https:// address on a public host, such as https://github.com/org/repo. ssh addresses need
    GIT_ALLOW_SSH=true, local paths ALLOW_LOCAL_REPOSITORIES=true (here and in the workers, which check it again),
    and hosts on your own network GIT_ALLOW_PRIVATE_HOSTS=true.
    """
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
    warning = warehouses.local_path_warning(row, obj.redis)
    if warning:
        click.echo(f'Warning: {warning}', err=True)
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
         if data else click.echo('No warehouses. Add one with `rqjobs warehouse add URL`.'))


@warehouse.command('show')
@click.argument('warehouse_id', type=UTF8_TEXT)
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
@click.argument('warehouse_id', type=UTF8_TEXT)
@click.pass_obj
def warehouse_reprocess(obj: Context, warehouse_id: str) -> None:
    """Document a warehouse again from scratch (it goes back to Pending)."""
    from rqjobs import warehouse as warehouses

    row = warehouses.reprocess(warehouse_id, obj.redis)
    click.echo(f'Warehouse {row.id} is {row.status} again.')


@warehouse.command('remove')
@click.argument('warehouse_id', type=UTF8_TEXT)
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
    from rqjobs import migration, minimap, queues, settings
    from rqjobs import warehouse as warehouses
    from rqjobs import worker as workers

    os.environ['ALLOW_LOCAL_REPOSITORIES'] = 'true'
    settings.reset()
    obj: Context = ctx.obj
    obj.__dict__.pop('settings', None)
    migration.create_schema()
    repository = demo_module.build_repository(obj.settings.data_dir / 'demo' / 'inkwell')
    click.echo(f'Repository: {repository}')
    row = demo_module.submit(repository, obj.redis, obj.settings)
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
    print_tree(minimap.stored_tree(row.id) or {'title': '(none)', 'url': '', 'nodes': []}, depth=1)
    timings = ', '.join(f'{name} {seconds:.2f} s' for name, seconds in result.get('timings', {}).items())
    click.echo(f'\nTimings: {timings}')
    if not obj.settings.redis_url:
        from rqjobs.embedded import EmbeddedRedis

        server = EmbeddedRedis(obj.settings.data_dir / 'redis')
        click.echo(f'\nThe embedded Redis keeps running at {server.url} for later commands on the data directory '
                   f'{obj.settings.data_dir}; `rqjobs redis url` prints its URL, `rqjobs redis stop` stops it.')


# ---- Statistics ----

def stats_date(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Check a --date value (a past or present UTC day as YYYY-MM-DD); a bad one is a usage error."""
    from rqjobs import statistics

    if value is None:
        return None
    try:
        return statistics.parse_day(value).isoformat()
    except statistics.InvalidStatisticsDate as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


def print_statistics(data: dict) -> None:
    """Print a day's statistics and the latest system and access snapshots for people."""
    daily, system, access = data['daily'], data['system'], data['access']
    if daily is None:
        click.echo(f'No statistics for {data["date"]} yet; make them with '
                   f'`rqjobs stats generate --date {data["date"]}`.')
    else:
        click.echo(f'Statistics of {data["date"]} (UTC), made {daily["updated_at"]}:')
        for key in ('new_users', 'new_repositories', 'new_documents', 'page_views', 'unique_visitors', 'active_users'):
            click.echo(f'  {key.replace("_", " ") + ":":<18}{daily[key]}')
    if system:
        totals, growth = system['totals'], system['growth']
        click.echo(f'\nSystem on {system["date"]}: {totals["users"]} users, {totals["warehouses"]} warehouses, '
                   f'{totals["documents"]} documents, {totals["pages"]} pages, {totals["access_records"]} accesses.')
        click.echo('  new this month (growth on last month): ' + ', '.join(
            f'{name} {count} ({growth[name]:+}%)' for name, count in system['this_month'].items()))
    if access:
        click.echo(f'\nAccess on {access["date"]}: ' + ', '.join(
            f'{access[period]["views"]} views by {access[period]["unique_visitors"]} visitors {label}'
            for period, label in (('today', 'today'), ('week', 'this week'), ('month', 'this month'))) + '.')
        if access['top_resources']:
            table(access['top_resources'], ['resource_type', 'resource_id', 'views'])


@main.group('stats')
def stats() -> None:
    """Daily statistics and snapshots of the platform (the `statistics` jobs)."""


@stats.command('show')
@click.option('--date', 'day', metavar='YYYY-MM-DD', callback=stats_date,
              help='UTC day to show, for example 2026-11-28 [default: yesterday].')
@click.option('--json', 'as_json', is_flag=True, help='Print the statistics as JSON.')
def stats_show(day: str | None, as_json: bool) -> None:
    """Show one day's statistics and the latest system and access snapshots."""
    from rqjobs import statistics

    emit(statistics.show(day), as_json, print_statistics)


@stats.command('generate')
@click.option('--date', 'day', metavar='YYYY-MM-DD', callback=stats_date,
              help='UTC day to count, for example 2026-11-28 [default: yesterday].')
@click.option('--json', 'as_json', is_flag=True, help='Print the statistics as JSON.')
def stats_generate(day: str | None, as_json: bool) -> None:
    """Count one day's statistics and take today's system and access snapshots now, in this process."""
    from rqjobs import statistics

    emit(statistics.generate(day), as_json, print_statistics)


# ---- Access logs ----

@main.group()
def logs() -> None:
    """Access logs: the Redis buffer the web side fills and `process_access_log` drains."""


@logs.command('status')
@click.option('--json', 'as_json', is_flag=True, help='Print the counts as JSON.')
@click.pass_obj
def logs_status(obj: Context, as_json: bool) -> None:
    """Show the buffer, processing and dead-letter lengths and the drop counts."""
    from rqjobs import access_log

    def human(d):
        click.echo(f'buffer:       {d["buffer"]} of {d["buffer_max"]}')
        click.echo(f'processing:   {d["processing"]}' + (' (a drain is running)' if d['draining'] else ''))
        hint = '; fix the cause, then `rqjobs logs requeue-dead`' if d['dead'] else ''
        click.echo(f'dead letters: {d["dead"]}{hint}')
        click.echo(f'dropped:      {d["dropped"]} ({d["dropped_full"]} over the cap, {d["dropped_invalid"]} invalid)')

    emit(access_log.status(obj.redis, obj.settings), as_json, human)


@logs.command('requeue-dead')
@click.option('--limit', type=click.IntRange(1), help='Move at most this many entries, oldest first [default: all].')
@click.option('--json', 'as_json', is_flag=True, help='Print the count as JSON.')
@click.pass_obj
def logs_requeue_dead(obj: Context, limit: int | None, as_json: bool) -> None:
    """Move dead-lettered entries back to the buffer, for the next drain to try again (after a fix)."""
    from rqjobs import access_log

    moved = access_log.requeue_dead(obj.redis, limit)
    emit({'requeued': moved}, as_json,
         lambda d: click.echo(f'{d["requeued"]} dead-lettered entries moved back to the buffer.'))


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
            click.echo('No workers. Start one with `rqjobs worker`.')

    emit(data, as_json, human)


# ---- Embedded Redis ----

@main.group('redis')
def redis_group() -> None:
    """The embedded Redis server (used when REDIS_URL is unset), one per data directory."""


@redis_group.command('url')
@click.pass_obj
def redis_url(obj: Context) -> None:
    """Print the URL of the project's Redis (starting the embedded one if needed), for rq and rq-dashboard.

    With REDIS_URL set, that URL is printed as it is, password included. Example:
    rq info --url "$(rqjobs redis url)"
    """
    from rqjobs import connections

    click.echo(connections.redis_url(obj.settings))


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
