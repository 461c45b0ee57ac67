"""`rqjobs scheduler` and `rqjobs schedule`: the periodic plan and the process that enqueues it."""

from __future__ import annotations

import click

from rqjobs.commands.helpers import emit, json_option, print_schedule


@click.command('scheduler')
@click.option(
    '--interval',
    type=click.FloatRange(0.5, 60),
    default=None,
    help='Seconds between two looks at the schedule [default: 5].',
)
@click.option('--burst', is_flag=True, help='Enqueue what is due once, then exit.')
@click.pass_obj
def scheduler_command(obj, interval: float | None, burst: bool) -> None:
    """Register the periodic plan, then run the rq-scheduler loop (one active scheduler at a time)."""
    import scheduler

    scheduler.run(obj.redis, interval=interval or scheduler.POLL_INTERVAL, burst=burst)


@click.group('schedule')
def schedule_group() -> None:
    """The periodic plan in Redis."""


@schedule_group.command('show')
@json_option('the plan')
@click.pass_obj
def schedule_show(obj, as_json: bool) -> None:
    """Show every plan entry with its next and last run, and the one-off jobs waiting (retries, delays)."""
    import scheduler

    emit(scheduler.describe(obj.redis), as_json, print_schedule)


@schedule_group.command('register')
@click.pass_obj
def schedule_register(obj) -> None:
    """Recreate the plan now (the scheduler process does it on start)."""
    import scheduler

    result = scheduler.register(obj.redis)
    click.echo(', '.join(f'{len(ids)} {name}' for name, ids in result.items()) + '.')


@schedule_group.command('clear')
@click.pass_obj
def schedule_clear(obj) -> None:
    """Remove every plan entry (runs already enqueued go on)."""
    import scheduler

    removed = scheduler.clear(obj.redis)
    click.echo(f'{len(removed)} plan entries removed.')
