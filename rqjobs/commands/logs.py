"""`rqjobs logs`: the access-log buffer in Redis."""

from __future__ import annotations

import click

from rqjobs.commands.helpers import emit, json_option, limit_option


@click.group()
def logs() -> None:
    """Access logs: the Redis buffer the web side fills and `process_access_log` drains."""


@logs.command('status')
@json_option('the counts')
@click.pass_obj
def logs_status(obj, as_json: bool) -> None:
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
@limit_option(default=None, help='Move at most this many entries, oldest first [default: all].', maximum=None)
@json_option('the count')
@click.pass_obj
def logs_requeue_dead(obj, limit: int | None, as_json: bool) -> None:
    """Move dead-lettered entries back to the buffer, for the next drain to try again (after a fix)."""
    from rqjobs import access_log

    moved = access_log.requeue_dead(obj.redis, limit)
    emit(
        {'requeued': moved},
        as_json,
        lambda d: click.echo(f'{d["requeued"]} dead-lettered entries moved back to the buffer.'),
    )
