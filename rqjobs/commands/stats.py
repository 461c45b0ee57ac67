"""`rqjobs stats`: daily statistics and snapshots of the platform."""

from __future__ import annotations

import click

from rqjobs.commands.helpers import emit, json_option, table


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
        click.echo(
            f'No statistics for {data["date"]} yet; make them with `rqjobs stats generate --date {data["date"]}`.'
        )
    else:
        click.echo(f'Statistics of {data["date"]} (UTC), made {daily["updated_at"]}:')
        for key in ('new_users', 'new_repositories', 'new_documents', 'page_views', 'unique_visitors', 'active_users'):
            click.echo(f'  {key.replace("_", " ") + ":":<18}{daily[key]}')
    if system:
        totals, growth = system['totals'], system['growth']
        click.echo(
            f'\nSystem on {system["date"]}: {totals["users"]} users, {totals["warehouses"]} warehouses, '
            f'{totals["documents"]} documents, {totals["pages"]} pages, {totals["access_records"]} accesses.'
        )
        click.echo(
            '  new this month (growth on last month): '
            + ', '.join(f'{name} {count} ({growth[name]:+}%)' for name, count in system['this_month'].items())
        )
    if access:
        click.echo(
            f'\nAccess on {access["date"]}: '
            + ', '.join(
                f'{access[period]["views"]} views by {access[period]["unique_visitors"]} visitors {label}'
                for period, label in (('today', 'today'), ('week', 'this week'), ('month', 'this month'))
            )
            + '.'
        )
        if access['top_resources']:
            table(access['top_resources'], ['resource_type', 'resource_id', 'views'])
    tokens = data.get('tokens')
    if tokens and tokens['pages']:
        click.echo(
            f'\nModel tokens: {tokens["tokens_in"]:,} in, {tokens["tokens_out"]:,} out, over {tokens["pages"]} pages.'
        )
        table(tokens['warehouses'], ['repository', 'tokens_in', 'tokens_out'])
        table(tokens['users'], ['user', 'tokens_in', 'tokens_out'])


@click.group('stats')
def stats() -> None:
    """Daily statistics and snapshots of the platform (the `statistics` jobs)."""


@stats.command('show')
@click.option(
    '--date',
    'day',
    metavar='YYYY-MM-DD',
    callback=stats_date,
    help='UTC day to show, for example 2026-11-28 [default: yesterday].',
)
@json_option('the statistics')
def stats_show(day: str | None, as_json: bool) -> None:
    """Show one day's statistics and the latest system and access snapshots."""
    from rqjobs import statistics

    emit(statistics.show(day), as_json, print_statistics)


@stats.command('generate')
@click.option(
    '--date',
    'day',
    metavar='YYYY-MM-DD',
    callback=stats_date,
    help='UTC day to count, for example 2026-11-28 [default: yesterday].',
)
@json_option('the statistics')
def stats_generate(day: str | None, as_json: bool) -> None:
    """Count one day's statistics and take today's system and access snapshots now, in this process."""
    from rqjobs import statistics

    emit(statistics.generate(day), as_json, print_statistics)
