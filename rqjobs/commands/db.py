"""`rqjobs db`: the database schema, backups and restores."""

from __future__ import annotations

import click

from rqjobs.commands.helpers import emit, json_option, table


@click.group()
def db() -> None:
    """Database schema commands."""


@db.command('init')
@click.pass_obj
def db_init(obj) -> None:
    """Apply pending schema steps and create the first users and roles (safe to run again)."""
    from rqjobs import migration
    from rqjobs.settings import redact_url

    result = migration.create_schema()
    click.echo(
        f'{redact_url(obj.settings.database_url)}: {len(result["created"])} tables created, {result["tables"]} present.'
    )
    users = migration.initialize_users()
    if users['status'] == 'initialized':
        click.echo(f'Roles admin and user created; {users["assigned"]} users assigned.')
    if users.get('password_file'):
        from pathlib import Path

        path = Path(users['password_file'])
        click.echo(
            f'First admin user "admin" created with password {path.read_text().strip()} '
            f'(also in {path}, readable only by you; shown once).'
        )


@db.command('upgrade')
@click.pass_obj
def db_upgrade(obj) -> None:
    """Apply the pending schema steps, in order (two at once cannot both apply a step)."""
    from rqjobs import migration

    applied = migration.upgrade()
    if not applied:
        click.echo('Schema is up to date.')
    for step in applied:
        click.echo(f'Applied step {step["version"]}: {step["name"]}')


@db.command('status')
@json_option('the steps')
@click.pass_obj
def db_status(obj, as_json: bool) -> None:
    """List the schema steps, applied and pending."""
    from rqjobs import migration

    steps = migration.schema_status()
    for step in steps:
        step['state'] = 'applied' if step['applied_at'] else 'pending'
    emit(steps, as_json, lambda rows: table(rows, ['version', 'state', 'applied_at', 'name']))


@db.command('backup')
@click.option(
    '--output',
    type=click.Path(dir_okay=False, writable=True),
    help='File to write, in a directory that exists [default: BACKUP_DIR/backup-<UTC time>.jsonl.gz]; '
    'never overwritten.',
)
@json_option('the result')
@click.pass_obj
def db_backup(obj, output: str | None, as_json: bool) -> None:
    """Write a consistent backup (no password hashes, no git credentials)."""
    from rqjobs import migration

    result = migration.write_backup(output) if output else migration.backup_data()
    emit(result, as_json, lambda r: click.echo(f'Backup written to {r["path"]} ({sum(r["counts"].values())} rows).'))


@db.command('restore')
@click.argument('path', type=click.Path(exists=True, dir_okay=False))
@click.option('--replace', is_flag=True, help='Replace the rows of a database that is not empty.')
@click.pass_obj
def db_restore(obj, path: str, replace: bool) -> None:
    """Restore a backup into an empty database, all or nothing (users must set new passwords)."""
    from rqjobs import migration

    result = migration.restore_file(path, replace=replace)
    click.echo(f'Restored {sum(result["counts"].values())} rows from {path}.')
