"""What the command modules share: printing (JSON, tables, trees), the options many commands take, argument types."""

from __future__ import annotations

import json

import click

EXIT_OK = 0
EXIT_FAILED = 1
# `rqjobs enqueue --wait --timeout S` exits with this when the job did not end in time.
EXIT_TIMEOUT = 3


class Utf8Text(click.ParamType):
    """A text argument that must be valid UTF-8, as the database and Redis store it."""

    name = 'text'

    def convert(self, value, param, ctx):
        # Python hands over bytes that are not UTF-8 as lone surrogates, which no database driver can encode.
        try:
            value.encode('utf-8')
        except UnicodeEncodeError:
            self.fail(
                f'{value!r} is not UTF-8 text; type it again in a UTF-8 terminal, for example with LANG=C.UTF-8.',
                param,
                ctx,
            )
        return value


UTF8_TEXT = Utf8Text()


def json_option(what: str | None = None):
    """The `--json` flag: print `what` (the command's result by default) as JSON instead of for people."""
    return click.option('--json', 'as_json', is_flag=True, help=f'Print {what} as JSON.' if what else 'Print as JSON.')


def limit_option(default: int | None = 50, help: str = 'At most this many rows.', maximum: int | None = 10000):
    """The `--limit` option: at most this many rows."""
    return click.option(
        '--limit', type=click.IntRange(1, maximum), default=default, show_default=default is not None, help=help
    )


def queue_option(help: str = 'Only this queue.'):
    """The `--queue` option: a queue's name."""
    return click.option('--queue', help=help)


def job_ids_argument(name: str, **kwargs):
    """A JOB_ID argument (or several, with nargs=-1) that refuses what rq cannot take as an id, as a usage error."""

    def check(ctx: click.Context, param: click.Parameter, value):
        from rqjobs.control import check_job_id
        from rqjobs.exceptions import InvalidJobId

        for job_id in value if isinstance(value, tuple) else (value,):
            try:
                check_job_id(job_id)
            except InvalidJobId as exc:
                raise click.BadParameter(str(exc)) from None
        return value

    return click.argument(name, callback=check, **kwargs)


def emit(data, as_json: bool, human) -> None:
    """Print `data` as JSON, or through `human(data)` for people."""
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str, ensure_ascii=False))
    else:
        human(data)


def table(rows: list[dict], columns: list[str]) -> None:
    """Print rows as a plain aligned table."""
    widths = [max([len(column)] + [len(cell(row.get(column))) for row in rows]) for column in columns]
    click.echo('  '.join(column.upper().ljust(width) for column, width in zip(columns, widths, strict=True)).rstrip())
    for row in rows:
        click.echo(
            '  '.join(
                cell(row.get(column)).ljust(width) for column, width in zip(columns, widths, strict=True)
            ).rstrip()
        )


def cell(value) -> str:
    """One value as a table cell: `-` for none, lists joined by commas."""
    if value is None:
        return '-'
    if isinstance(value, list | tuple):
        return ','.join(map(str, value))
    return str(value)


def print_catalog(entries: list[dict], depth: int = 0) -> None:
    """Print a documentation catalog as an indented list of titles and urls."""
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


def print_schedule(data: dict) -> None:
    """Print the plan entries with their next and last runs, then the one-off jobs waiting."""
    rows = [
        {
            **entry,
            'last': (entry['last_run'] or {}).get('status'),
            'next_run_utc': entry['next_run_utc'].isoformat(sep=' ', timespec='seconds'),
            'next_run_local': entry['next_run_local'].isoformat(sep=' ', timespec='seconds'),
        }
        for entry in data['entries']
    ]
    if rows:
        table(rows, ['id', 'when', 'next_run_utc', 'next_run_local', 'last'])
    else:
        click.echo('No plan entries. Create them with `rqjobs schedule register`.')
    if data['one_off']:
        click.echo()
        table(data['one_off'], ['id', 'job', 'queue', 'at', 'source'])
