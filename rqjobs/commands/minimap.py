"""`rqjobs minimap`: the mind maps of warehouses."""

from __future__ import annotations

import click

from rqjobs.commands.helpers import UTF8_TEXT, emit, json_option, print_tree


@click.group('minimap')
def minimap_group() -> None:
    """Mind maps of warehouses."""


@minimap_group.command('show')
@click.argument('warehouse_id', type=UTF8_TEXT)
@json_option('the tree')
@click.option(
    '--max-lines',
    type=click.IntRange(1, 100000),
    default=500,
    show_default=True,
    help='Print at most this many lines of the tree.',
)
def minimap_show(warehouse_id: str, as_json: bool, max_lines: int) -> None:
    """Print a warehouse's mind map as an indented tree."""
    from models import WarehouseStatus
    from rqjobs import minimap
    from rqjobs import warehouse as warehouses

    row = warehouses.get_warehouse(warehouse_id)  # a clear message for an unknown id
    tree = minimap.stored_tree(warehouse_id)
    if tree is None and row.status != WarehouseStatus.COMPLETED:
        raise click.ClickException(
            f'Warehouse {warehouse_id} has no mind map: it is {row.status}, and mind maps are '
            f'built for Completed warehouses.'
        )
    if tree is None:
        raise click.ClickException(
            f'Warehouse {warehouse_id} has no mind map; make one with `rqjobs minimap regenerate {warehouse_id}`.'
        )
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
@json_option('the result')
def minimap_validate(warehouse_id: str, as_json: bool) -> None:
    """Check a stored mind map's shape; exit 1 if it is missing or invalid."""
    from rqjobs import minimap
    from rqjobs import warehouse as warehouses

    warehouses.get_warehouse(warehouse_id)  # a clear message for an unknown id
    result = minimap.validate_minimap(warehouse_id)
    emit(
        result,
        as_json,
        lambda r: click.echo(
            f'Valid: {r["nodes"]} nodes, {r["edges"]} edges, depth {r["depth"]}.'
            if r['valid']
            else f'Not valid: {r["error"]}.'
        ),
    )
    if not result['valid']:
        raise SystemExit(1)
