"""`rqjobs warehouse`: git repositories documented by the warehouse jobs."""

from __future__ import annotations

import click

from rqjobs.commands.helpers import UTF8_TEXT, cell, emit, json_option, limit_option, print_catalog, table


@click.group()
def warehouse() -> None:
    """Warehouses: git repositories documented by the warehouse jobs."""


@warehouse.command('add')
@click.argument('url')
@click.option('--branch', help="Branch to document [default: the repository's default branch].")
@click.option(
    '--user', 'user_id', type=UTF8_TEXT, help='Id of the user who owns the warehouse (counts toward their limit).'
)
@click.option('--git-user', type=UTF8_TEXT, help='User name for the repository, if it needs one.')
@click.option(
    '--token-env',
    metavar='VAR',
    help='Name of an environment variable holding the access token (never pass a token as an argument).',
)
@json_option('the warehouse')
@click.pass_obj
def warehouse_add(
    obj, url: str, branch: str | None, user_id: str | None, git_user: str | None, token_env: str | None, as_json: bool
) -> None:
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
            raise click.BadParameter(
                f'environment variable {token_env} is empty or unset; for example '
                f'export GIT_TOKEN=... and pass --token-env GIT_TOKEN.',
                param_hint='--token-env',
            )
    row = warehouses.submit_warehouse(
        url, branch, user_id, git_user, token, connection=obj.redis, settings=obj.settings
    )
    warning = warehouses.local_path_warning(row, obj.redis)
    if warning:
        click.echo(f'Warning: {warning}', err=True)
    data = warehouses.describe(row.id, obj.redis)
    emit(
        data,
        as_json,
        lambda d: click.echo(
            f'Warehouse {d["id"]} ({d["organization"]}/{d["name"]}) is '
            f'{d["status"]}' + ('; queued.' if d['jobs'] else "; waiting for room in its owner's limit.")
        ),
    )


@warehouse.command('list')
@click.option(
    '--status',
    type=click.Choice(['Pending', 'Processing', 'Completed', 'Canceled', 'Unauthorized', 'Failed']),
    help='Only warehouses in this state.',
)
@limit_option(default=100, help='At most this many.')
@json_option('the warehouses')
@click.pass_obj
def warehouse_list(obj, status: str | None, limit: int, as_json: bool) -> None:
    """List warehouses, newest first."""
    from rqjobs import warehouse as warehouses

    rows = warehouses.list_warehouses(status, limit)
    for row in rows:
        row['repository'] = f'{row["organization"]}/{row["name"]}'
        row['version'] = (row['version'] or '')[:10] or None
    emit(
        rows,
        as_json,
        lambda data: (
            table(data, ['id', 'repository', 'branch', 'status', 'version', 'updated_at'])
            if data
            else click.echo('No warehouses. Add one with `rqjobs warehouse add URL`.')
        ),
    )


@warehouse.command('show')
@click.argument('warehouse_id', type=UTF8_TEXT)
@json_option('the warehouse')
@click.pass_obj
def warehouse_show(obj, warehouse_id: str, as_json: bool) -> None:
    """Show a warehouse: state, version, documentation counts, and the progress of its job."""
    from rqjobs import warehouse as warehouses

    data = warehouses.describe(warehouse_id, obj.redis)
    data['catalog'] = warehouses.catalog_tree(warehouse_id)

    def human(d):
        for key in (
            'id',
            'organization',
            'name',
            'branch',
            'address',
            'status',
            'version',
            'classify',
            'error',
            'pages',
            'commits',
            'minimap_nodes',
            'created_at',
            'updated_at',
        ):
            click.echo(f'{key + ":":<15}{cell(d[key])}')
        for job in d['jobs']:
            progress = job['progress'] or {}
            done = f' ({progress["done"]}/{progress["total"]} pages)' if 'done' in progress else ''
            click.echo(
                f'{"job:":<15}{job["id"]} {job["status"]} {progress.get("step", "")} '
                f'{progress.get("percent", "")}{"%" if progress else ""}{done}'.rstrip()
            )
        if d['catalog']:
            click.echo('catalog:')
            print_catalog(d['catalog'], depth=1)
        written_by_model = [page for page in d['page_states'] if page['tries'] or page['status'] != 'Completed']
        if written_by_model:
            spent = f'{d["tokens"]:,} tokens spent' + (
                f' of a budget of {d["token_budget"]:,}' if d['token_budget'] else ''
            )
            click.echo(f'pages:         {spent}')
            for page in d['page_states']:
                tokens = f'{page["tokens_in"]:,} in / {page["tokens_out"]:,} out' if page['tries'] else ''
                line = f'  {page["status"]:<10} {page["page"]}  tries {page["tries"]}  {tokens}'.rstrip()
                click.echo(line + (f'  {cell(page["error"])}' if page['error'] else ''))

    emit(data, as_json, human)


@warehouse.command('reprocess')
@click.argument('warehouse_id', type=UTF8_TEXT)
@click.pass_obj
def warehouse_reprocess(obj, warehouse_id: str) -> None:
    """Document a warehouse again from scratch (it goes back to Pending)."""
    from rqjobs import warehouse as warehouses

    row = warehouses.reprocess(warehouse_id, obj.redis)
    click.echo(f'Warehouse {row.id} is {row.status} again.')


@warehouse.command('regenerate')
@click.argument('warehouse_id', type=UTF8_TEXT)
@click.option(
    '--page', 'page', type=UTF8_TEXT, metavar='SLUG', help='Write only this page again (its url, e.g. overview).'
)
@click.option('--failed', is_flag=True, help='Write again only the pages that failed or were skipped.')
@click.pass_obj
def warehouse_regenerate(obj, warehouse_id: str, page: str | None, failed: bool) -> None:
    """Write pages of a warehouse again with the model (all, one with --page, or the failed ones with --failed)."""
    from rqjobs.pages import jobs as page_jobs

    if page is not None and failed:
        raise click.UsageError('Give --page SLUG or --failed, not both.')
    result = page_jobs.regenerate(warehouse_id, obj.redis, page=page, failed=failed)
    if not result['queued'] and not result['running']:
        click.echo(f'Warehouse {warehouse_id} has no page to write again.')
        return
    click.echo(
        f'Warehouse {warehouse_id}: {len(result["queued"])} page jobs queued; '
        f'`rqjobs warehouse show {warehouse_id}` follows them.'
    )


@warehouse.command('remove')
@click.argument('warehouse_id', type=UTF8_TEXT)
@click.pass_obj
def warehouse_remove(obj, warehouse_id: str) -> None:
    """Remove a warehouse: cancel its queued jobs, delete its clone, soft-delete its row."""
    from rqjobs import warehouse as warehouses

    warehouses.remove(warehouse_id, obj.redis)
    click.echo(f'Warehouse {warehouse_id} removed.')
