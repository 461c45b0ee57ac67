"""`rqjobs enqueue`, `job`, `requeue`, `cleanup`, `suspend`, `resume`, `inspect` and `status`: jobs and workers."""

from __future__ import annotations

import json
import sys

import click

from rqjobs.commands.helpers import (
    EXIT_FAILED,
    EXIT_TIMEOUT,
    cell,
    emit,
    job_ids_argument,
    json_option,
    limit_option,
    print_schedule,
    queue_option,
    table,
)


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
            raise click.BadParameter(
                f'{pair!r} is not NAME=VALUE; for example --kwarg days_to_keep=30.', param_hint='--kwarg'
            )
        kwargs[name] = parse_value(value)
    return kwargs


def list_jobs() -> None:
    from rqjobs import queues

    for spec in sorted(queues.registered_jobs().values(), key=lambda spec: (spec.queue, spec.name)):
        click.echo(f'{spec.queue:<11} {spec.signature}\n{"":<11}   {spec.summary}')


@click.command(context_settings={'ignore_unknown_options': True})
@click.argument('job', required=False)
@click.argument('args', nargs=-1, type=click.UNPROCESSED)
@click.option('-k', '--kwarg', 'kwargs', multiple=True, metavar='NAME=VALUE', help='A keyword argument (repeatable).')
@queue_option("Put the job on this queue instead of its module's queue.")
@click.option(
    '--at',
    'at_text',
    metavar='TIME',
    help='Run at this ISO 8601 time (UTC unless an offset is given), for example 2026-12-01T02:30.',
)
@click.option('--in', 'in_text', metavar='DURATION', help='Run after this delay, for example 90s, 5m, 2h or 1d.')
@click.option(
    '--retry/--no-retry', default=True, show_default=True, help='Retry on a transient error (3 more tries, 60 s apart).'
)
@click.option('--wait', is_flag=True, help='Wait for the job to end, showing its progress, then print its result.')
@click.option(
    '--timeout',
    type=click.FloatRange(0.1, 86400),
    default=None,
    help=f'With --wait: give up waiting after this many seconds (exit {EXIT_TIMEOUT}) [default: none].',
)
@click.option('--list', 'show_list', is_flag=True, help='List the registered jobs with their signatures and exit.')
@json_option('the job (or, with --wait, its outcome)')
@click.pass_obj
def enqueue(
    obj,
    job: str | None,
    args: tuple[str, ...],
    kwargs: tuple[str, ...],
    queue: str | None,
    at_text: str | None,
    in_text: str | None,
    retry: bool,
    wait: bool,
    timeout: float | None,
    show_list: bool,
    as_json: bool,
) -> None:
    """Enqueue JOB (a registered job's name) with ARGS.

    Each ARG and VALUE is read as JSON when it parses (42, true, null, "42" for the string) and as a plain string
    otherwise. With --wait the exit status is 0 when the job finished, 1 when it failed or was stopped, and
    3 when --timeout passed first (the job goes on). Example: rqjobs enqueue ping --wait
    """
    from rqjobs import control, queues

    if show_list:
        return list_jobs()
    if not job:
        raise click.UsageError(
            'Name the job to enqueue, for example `rqjobs enqueue ping`; `rqjobs enqueue --list` lists them.'
        )
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
    rq_job = queues.enqueue(
        spec.path,
        values,
        keywords,
        queue=queue,
        at=at,
        delay=delay,
        connection=obj.redis,
        settings=obj.settings,
        **options,
    )
    if not wait:
        emit(
            {'id': rq_job.id, 'job': spec.path, 'queue': rq_job.origin, 'status': rq_job.get_status().value},
            as_json,
            lambda data: click.echo(
                f'Enqueued {spec.name} as job {data["id"]} on queue {data["queue"]} ({data["status"]}).'
            ),
        )
        return None
    if not as_json:
        click.echo(
            f'Enqueued {spec.name} as job {rq_job.id} on queue {rq_job.origin}; waiting for it to end…', err=True
        )
    wait_for(obj, rq_job.id, timeout, as_json)
    return None


def wait_for(obj, job_id: str, timeout: float | None, as_json: bool) -> None:
    """Follow a job with a progress bar fed by its progress meta, print how it ended and exit with that."""
    from rqjobs import monitor

    details = monitor.job_details(obj.redis, job_id)
    if details['status'] == 'queued' and not monitor.queue_has_worker(obj.redis, details['queue']):
        click.echo(
            f'No worker listens on queue {details["queue"]}; start one with `rqjobs worker {details["queue"]}`.',
            err=True,
        )
    with click.progressbar(length=100, label=details['status'], file=sys.stderr, show_eta=False) as bar:

        def show(details: dict) -> None:
            progress = details['progress'] or {}
            percent = max(bar.pos, int(progress.get('percent', 0)))
            bar.label = progress.get('step') or details['status']
            # update() also prints a changed label when stderr is not a terminal, so logs show queued → started.
            bar.update(percent - bar.pos)

        details = monitor.wait_for_job(obj.redis, job_id, timeout, on_update=show)
    if details is None:
        message = f'Job {job_id} did not end within {timeout:g} s; it goes on (`rqjobs job show {job_id}`).'
        emit({'id': job_id, 'status': 'timeout', 'message': message}, as_json, lambda _: click.echo(message, err=True))
        raise SystemExit(EXIT_TIMEOUT)
    if details['status'] == 'finished':
        emit(
            details if as_json else details['result'],
            as_json,
            lambda result: click.echo(json.dumps(result, indent=2, default=str, ensure_ascii=False)),
        )
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


@click.group('job')
def job_group() -> None:
    """One job: show, cancel, stop or delete it."""


@job_group.command('show')
@job_ids_argument('job_id')
@json_option('the job')
@click.pass_obj
def job_show(obj, job_id: str, as_json: bool) -> None:
    """Show a job: status, queue, function, arguments, timings, retries left, progress, result or error."""
    from rqjobs import control, monitor

    control.fetch(obj.redis, job_id)  # a clear message for an unknown id
    data = monitor.job_details(obj.redis, job_id)

    def human(d):
        for key in (
            'id',
            'status',
            'queue',
            'job',
            'args',
            'kwargs',
            'enqueued_at',
            'started_at',
            'ended_at',
            'worker',
            'timeout',
            'retries_left',
            'progress',
        ):
            click.echo(f'{key + ":":<14}{cell(d[key]) if not isinstance(d[key], dict) else json.dumps(d[key])}')
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
def job_cancel(obj, job_id: str) -> None:
    """Cancel a queued, scheduled or deferred job."""
    from rqjobs import control

    status = control.cancel_job(obj.redis, job_id)
    click.echo(f'Job {job_id} ({status}) cancelled.')


@job_group.command('stop')
@job_ids_argument('job_id')
@click.pass_obj
def job_stop(obj, job_id: str) -> None:
    """Stop a running job (its worker kills the work horse; the job ends as stopped)."""
    from rqjobs import control

    control.stop_job(obj.redis, job_id)
    click.echo(f'Stop sent to the worker running {job_id}.')


@job_group.command('delete')
@job_ids_argument('job_id')
@click.pass_obj
def job_delete(obj, job_id: str) -> None:
    """Delete a job that is not running, with its result."""
    from rqjobs import control

    status = control.delete_job(obj.redis, job_id)
    click.echo(f'Job {job_id} ({status}) deleted.')


@click.command()
@job_ids_argument('job_ids', nargs=-1)
@queue_option('Only failed jobs of this queue.')
@click.option('--all', 'everything', is_flag=True, help='Requeue every failed job (of --queue, if given).')
@click.pass_obj
def requeue(obj, job_ids: tuple[str, ...], queue: str | None, everything: bool) -> None:
    """Put failed jobs back on their queues: JOB_IDS, or --all."""
    from rqjobs import control, queues

    if bool(job_ids) == everything:
        raise click.UsageError(
            'Name the failed jobs to requeue, or pass --all; for example `rqjobs requeue --all --queue warehouse`.'
        )
    if queue:
        queues.get_queue(queue, obj.redis, obj.settings)  # an unknown queue exits 2 listing the known ones
    done = control.requeue_failed(obj.redis, list(job_ids) if job_ids else None, queue, obj.settings)
    click.echo(f'{len(done)} failed jobs requeued.')


@click.command()
@click.option(
    '--failed-older-than',
    metavar='DURATION',
    help='Delete failed jobs that ended longer ago than this, for example 7d.',
)
@click.option('--finished', is_flag=True, help='Delete finished jobs and their results.')
@click.option('--dead-workers', is_flag=True, help='Remove workers that stopped sending heartbeats from the lists.')
@click.option(
    '--orphan-clones',
    is_flag=True,
    help='Delete clone directories of warehouses that no longer exist, and what a stopped removal left.',
)
@click.option(
    '--host-timeout',
    type=click.FloatRange(0.1),
    default=30,
    show_default=True,
    help='Seconds to wait for each live host to remove its own orphan clones; a host silent that long is named.',
)
@click.option('--dry-run', is_flag=True, help='List what would be removed, remove nothing.')
@json_option('the report')
@click.pass_obj
def cleanup(
    obj,
    failed_older_than: str | None,
    finished: bool,
    dead_workers: bool,
    orphan_clones: bool,
    host_timeout: float,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Trim rq's registries, dead worker entries and orphan clones; nothing is removed without an option."""
    from rqjobs import control

    if not (failed_older_than or finished or dead_workers or orphan_clones):
        raise click.UsageError(
            'Say what to clean up: --failed-older-than 7d, --finished, --dead-workers or '
            '--orphan-clones (add --dry-run to only list it).'
        )
    try:
        older = control.parse_duration(failed_older_than) if failed_older_than else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint='--failed-older-than') from None
    report = control.cleanup(
        obj.redis,
        failed_older_than=older,
        finished=finished,
        dead_workers=dead_workers,
        orphan_clones=orphan_clones,
        dry_run=dry_run,
        host_timeout=host_timeout,
        settings=obj.settings,
    )

    def human(r):
        click.echo(('Would remove: ' if dry_run else 'Removed: ') + control.summary(r) + '.')
        for name, items in r.items():
            for item in items:
                click.echo(f'  {name}: {item}')

    emit(report, as_json, human)


@click.command('suspend')
@click.option('--duration', type=click.IntRange(1, 31 * 86400), help='Resume by itself after this many seconds.')
@click.pass_obj
def suspend_command(obj, duration: int | None) -> None:
    """Stop all workers from taking new jobs; running jobs finish."""
    from rqjobs import control

    control.suspend_workers(obj.redis, duration)
    click.echo('Workers suspended' + (f' for {duration} s.' if duration else '; `rqjobs resume` lets them go on.'))


@click.command('resume')
@click.pass_obj
def resume_command(obj) -> None:
    """Let suspended workers take jobs again."""
    from rqjobs import control

    click.echo('Workers resumed.' if control.resume_workers(obj.redis) else 'Workers were not suspended.')


# ---- Inspection of workers and jobs ----


@click.group('inspect')
def inspect_group() -> None:
    """What the workers are doing and have done."""


@inspect_group.command('active')
@json_option()
@click.pass_obj
def inspect_active(obj, as_json: bool) -> None:
    """Running jobs, per worker, with their progress."""
    from rqjobs import monitor

    rows = monitor.active_jobs(obj.redis)
    for row in rows:
        progress = row['progress'] or {}
        row['step'] = f'{progress.get("step", "")} {progress.get("percent", "")}'.strip() or None
    emit(
        rows,
        as_json,
        lambda data: (
            table(data, ['worker', 'job_id', 'job', 'queue', 'running_for', 'step'])
            if data
            else click.echo('No job is running.')
        ),
    )


@inspect_group.command('stats')
@queue_option()
@json_option()
@click.pass_obj
def inspect_stats(obj, queue: str | None, as_json: bool) -> None:
    """Per worker: jobs, busy time, heartbeat; per job: count, failure rate, p50/p95 run time."""
    from rqjobs import monitor, queues

    if queue:
        queues.get_queue(queue, obj.redis, obj.settings)
    data = {
        'workers': monitor.worker_statistics(obj.redis),
        'jobs': monitor.job_statistics(obj.redis, obj.settings, queue),
    }

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
@limit_option()
@json_option()
@click.pass_obj
def inspect_scheduled(obj, limit: int, as_json: bool) -> None:
    """Everything scheduled: the periodic plan and rq's scheduled jobs (retries, delays)."""
    import scheduler

    data = scheduler.describe(obj.redis)
    data['one_off'] = data['one_off'][:limit]
    emit(data, as_json, print_schedule)


@inspect_group.command('failed')
@queue_option()
@limit_option()
@json_option()
@click.pass_obj
def inspect_failed(obj, queue: str | None, limit: int, as_json: bool) -> None:
    """Failed jobs, newest first, with their error in one line."""
    from rqjobs import monitor, queues

    if queue:
        queues.get_queue(queue, obj.redis, obj.settings)
    rows = monitor.failed_jobs(obj.redis, obj.settings, queue, limit)
    emit(
        rows,
        as_json,
        lambda data: (
            table(data, ['id', 'job', 'queue', 'failed_at', 'error']) if data else click.echo('No failed jobs.')
        ),
    )


@click.command()
@json_option('the status')
@click.pass_obj
def status(obj, as_json: bool) -> None:
    """Show every queue's job counts, the jobs waiting for a rate limit's slot, every worker's state and every host."""
    from rqjobs import connections, monitor

    data = {
        'redis': connections.location(obj.settings),
        'queues': monitor.queue_counts(obj.redis, obj.settings),
        'workers': monitor.worker_states(obj.redis),
        'rate_limits': monitor.rate_limits(obj.redis),
        **monitor.host_states(obj.redis),
    }

    def human(data):
        table(data['queues'], ['queue', 'queued', 'started', 'finished', 'failed', 'scheduled', 'deferred'])
        click.echo()
        if data['rate_limits']:
            # Page jobs for a model server: `running` holds a slot (queued or started), `waiting` waits for one.
            table(data['rate_limits'], ['rate_limit', 'concurrency', 'running', 'waiting'])
            click.echo()
        if data['workers']:
            table(data['workers'], ['name', 'state', 'queues', 'current_job', 'last_heartbeat'])
            click.echo()
            table(
                [
                    {
                        **row,
                        'workers': len(row['workers']),
                        'clone_disk': '?' if row['clone_bytes'] is None else f'{row["clone_bytes"] / 2**20:.1f} MB',
                        'clones': '?' if row['clones'] is None else row['clones'],
                    }
                    for row in data['hosts']
                ],
                ['host', 'workers', 'queues', 'clones', 'clone_disk', 'measured_at'],
            )
        else:
            click.echo('No workers. Start one with `rqjobs worker`.')
        for warning in data['warnings']:
            click.echo(f'Warning: {warning}')

    emit(data, as_json, human)
