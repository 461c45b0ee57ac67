import gzip
import json
import os
import stat
import subprocess
import sys
import textwrap
from datetime import datetime
from pathlib import Path

import peewee
import pytest
from click.testing import CliRunner
from playhouse.migrate import SchemaMigrator

import cli
import models
from helpers import ROOT
from models import Document, Role, SchemaVersion, User, UserInRole, Warehouse, WarehouseStatus
from rqjobs import credentials, migration, passwords
from rqjobs.exceptions import MigrationError
from rqjobs.migration import MIGRATIONS, Migration

# The newest step this version has; the steps a test adds come after it.
LATEST = max(step.version for step in MIGRATIONS)
APPLIED = [step.version for step in MIGRATIONS]

pytestmark = pytest.mark.db


# ---- Schema steps ----


class Scratch(models.BaseModel):
    name = peewee.CharField()


def scratch_steps(calls=None):
    def create(migrator):
        Scratch._meta.set_database(models.db.obj)
        Scratch.create_table()

    def add_column(migrator):
        migrator.add_column('scratch', 'size', peewee.IntegerField(default=0)).run()
        if calls is not None:
            calls.append('add_column')

    return [*MIGRATIONS, Migration(LATEST + 2, 'add size', add_column), Migration(LATEST + 1, 'scratch table', create)]


@pytest.fixture
def scratch(database):
    yield
    database.drop_tables([Scratch], safe=True)


def test_upgrade_applies_pending_steps_in_order_once(scratch, database):
    calls = []
    applied = migration.upgrade(scratch_steps(calls))
    assert [step['version'] for step in applied] == [LATEST + 1, LATEST + 2]
    assert 'size' in {column.name for column in database.get_columns('scratch')}
    assert migration.upgrade(scratch_steps(calls)) == []
    assert calls == ['add_column']
    status = migration.schema_status(scratch_steps())
    assert [(s['version'], s['applied_at'] is not None) for s in status] == [
        (version, True) for version in [*APPLIED, LATEST + 1, LATEST + 2]
    ]


def test_status_lists_pending_steps(scratch, database):
    migration.upgrade()
    status = migration.schema_status(scratch_steps())
    assert [(s['version'], s['applied_at'] is None) for s in status] == [
        *((version, False) for version in APPLIED),
        (LATEST + 1, True),
        (LATEST + 2, True),
    ]


def test_a_failing_step_is_not_recorded(scratch, database):
    def broken(migrator):
        migrator.add_column('no_such_table', 'x', peewee.IntegerField(default=0)).run()

    with pytest.raises(MigrationError, match='Schema step 9 \\(broken\\) failed'):
        migration.upgrade([*MIGRATIONS, Migration(9, 'broken', broken)])
    assert sorted(row.version for row in SchemaVersion.select()) == APPLIED


def test_duplicate_versions_are_refused(database):
    with pytest.raises(MigrationError, match='duplicate versions'):
        migration.upgrade([*MIGRATIONS, Migration(1, 'again', lambda migrator: None)])


@pytest.mark.slow
def test_two_concurrent_upgrades_apply_a_step_once(database, tmp_path):
    marker = tmp_path / 'applied.txt'
    code = textwrap.dedent(f"""
        import time
        import peewee
        from rqjobs import migration

        def slow(migrator):
            with open({str(marker)!r}, 'a') as handle:
                handle.write('applied\\n')
            time.sleep(1)
            migrator.add_column('warehouse', 'extra_flag', peewee.IntegerField(default=0)).run()

        print(migration.upgrade([*migration.MIGRATIONS, migration.Migration({LATEST + 1}, 'slow', slow)]))
    """)
    processes = [
        subprocess.Popen(
            [sys.executable, '-c', code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [process.communicate(timeout=120) for process in processes]
    try:
        assert [process.returncode for process in processes] == [0, 0], outputs
        assert marker.read_text() == 'applied\n'
        assert sorted(row.version for row in SchemaVersion.select()) == [*APPLIED, LATEST + 1]
    finally:
        SchemaMigrator.from_database(database).drop_column('warehouse', 'extra_flag').run()


def test_update_indexes_recreates_a_missing_index(database):
    migrator = SchemaMigrator.from_database(database)
    migrator.drop_index('warehouse', 'warehouse_status_created_at').run()
    assert 'warehouse_status_created_at' not in {i.name for i in database.get_indexes('warehouse')}
    assert migration.update_indexes() == {'created': ['warehouse_status_created_at']}
    assert 'warehouse_status_created_at' in {i.name for i in database.get_indexes('warehouse')}
    assert migration.update_indexes() == {'created': []}


# ---- Users ----


def test_initialize_users_creates_a_first_admin_once(database, env, tmp_path):
    result = migration.initialize_users()
    assert result['status'] == 'initialized' and result['admin_created']
    path = tmp_path / 'var' / 'admin-password.txt'
    assert result['password_file'] == str(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    admin = User.get(User.name == 'admin')
    password = path.read_text().strip()
    assert password not in admin.password and passwords.verify_password(password, admin.password)
    assert not passwords.verify_password('wrong', admin.password)
    assert [r.role.name for r in UserInRole.select()] == ['admin']
    assert {r.name for r in Role.select()} == {'admin', 'user'}
    assert migration.initialize_users()['status'] == 'skipped'


def test_initialize_users_assigns_existing_users(database, env):
    env.setenv('JOBS_ADMIN_PASSWORD', 'not-used-here')
    for name in ('admin', 'bob', 'carol'):
        User.create(name=name, email=f'{name}@example.invalid', password='x')
    result = migration.initialize_users()
    assert (result['assigned'], result['admin_created'], result['password_file']) == (3, False, None)
    roles = {m.user.name: m.role.name for m in UserInRole.select()}
    assert roles == {'admin': 'admin', 'bob': 'user', 'carol': 'user'}


def test_initialize_users_takes_the_password_from_the_environment(database, env, tmp_path):
    from rqjobs import settings

    env.setenv('JOBS_ADMIN_PASSWORD', 'correct horse battery')
    settings.reset()
    result = migration.initialize_users()
    assert result['admin_created'] and result['password_file'] is None
    assert passwords.verify_password('correct horse battery', User.get().password)
    assert not (tmp_path / 'var' / 'admin-password.txt').exists()


# ---- Data fixes ----


def test_migrate_warehouses_and_documents_fix_old_rows(database):
    done = Warehouse.create(organization_name='o', name='done', address='https://h/o/done.git', version='a' * 40)
    waiting = Warehouse.create(organization_name='o', name='wait', address='https://h/o/wait.git')
    Warehouse.update(status='', type='svn').execute()
    Warehouse.update(updated_at=datetime(2000, 1, 1)).where(Warehouse.id == waiting.id).execute()
    document = Document.create(warehouse=done.id)
    Document.update(status='Unknown').execute()
    assert migration.migrate_warehouses() == {'statuses': 2, 'types': 2, 'timestamps': 1, 'deleted_at': 0}
    assert Warehouse.get_by_id(done.id).status == WarehouseStatus.COMPLETED
    assert Warehouse.get_by_id(waiting.id).status == WarehouseStatus.PENDING
    assert migration.migrate_documents()['statuses'] == 1
    assert Document.get_by_id(document.id).status == WarehouseStatus.COMPLETED
    assert migration.migrate_warehouses() == {'statuses': 0, 'types': 0, 'timestamps': 0, 'deleted_at': 0}
    assert migration.migrate_documents() == {'statuses': 0, 'timestamps': 0, 'deleted_at': 0}


def test_data_migration_reports_each_step(database, monkeypatch):
    report = migration.data_migration()
    assert report['ok'] and set(report) == {'schema', 'users', 'warehouses', 'documents', 'indexes', 'ok'}

    def broken():
        raise RuntimeError('boom')

    monkeypatch.setattr(migration, 'migrate_warehouses', broken)
    report = migration.data_migration()
    assert report['warehouses'] == {'ok': False, 'error': 'RuntimeError: boom'}
    assert report['documents']['ok'] and report['indexes']['ok'] and not report['ok']
    monkeypatch.setattr(migration, 'create_schema', broken)
    report = migration.data_migration()
    assert report['users'] == {'ok': False, 'error': 'skipped: the schema upgrade failed'}


# ---- Backup and restore ----


@pytest.fixture
def filled(redis_conn, database, local, sample_repo, burst_worker, env):
    """A database with users, roles, a documented warehouse holding credentials, and statistics."""
    from rqjobs import settings
    from rqjobs import warehouse as warehouses

    env.setenv('JOBS_SECRET_KEY', 'b' * 32)
    env.setenv('JOBS_ADMIN_PASSWORD', 'admin-secret-password')
    settings.reset()
    migration.initialize_users()
    row = warehouses.submit_warehouse(str(sample_repo), connection=redis_conn)
    burst_worker('warehouse')
    Warehouse.update(git_user_name='deploy-bot', git_password=credentials.encrypt_secret('tok_live_123456')).where(
        Warehouse.id == row.id
    ).execute()
    models.DailyStatistics.create(date='2026-11-28', page_views=7)
    return row


def snapshot_rows():
    rows = {}
    for model, excluded in migration.BACKUP_TABLES:
        columns = [f for f in model._meta.sorted_fields if f.name not in excluded]
        rows[model._meta.table_name] = sorted(map(repr, model.select(*columns).dicts()))
    return rows


def test_backup_has_no_secrets_and_restores_the_same_rows(filled, database, tmp_path):
    admin_hash = User.get(User.name == 'admin').password
    encrypted = Warehouse.get().git_password
    before = snapshot_rows()
    result = migration.backup_data()
    path = result['path']
    assert os.path.basename(path).startswith('backup-') and path.endswith('.jsonl.gz')
    assert result['counts']['warehouse'] == 1 and result['counts']['document_file_item'] > 3
    content = gzip.decompress(Path(path).read_bytes())
    for secret in (admin_hash, encrypted, 'deploy-bot', 'tok_live_123456', 'admin-secret-password'):
        assert secret.encode() not in content
    assert not [p for p in os.listdir(os.path.dirname(path)) if p.endswith('.tmp')]

    with database.connection_context():
        models.drop_tables()
        models.create_tables()
    restored = migration.restore_data(path)
    assert restored['counts'] == result['counts']
    assert snapshot_rows() == before
    assert User.get(User.name == 'admin').password == passwords.UNUSABLE


def test_restore_refuses_a_non_empty_database_unless_replacing(filled, database):
    path = migration.backup_data()['path']
    with pytest.raises(MigrationError, match='not empty .*--replace'):
        migration.restore_data(path)
    before = snapshot_rows()
    migration.restore_data(path, replace=True)
    after = snapshot_rows()
    assert after == before


def test_restore_into_a_database_without_the_schema_builds_it_then_loads(filled, database, monkeypatch):
    before = snapshot_rows()
    path = migration.backup_data()['path']
    with database.connection_context():
        models.drop_tables()
    seen = []

    def later_step(migrator):
        seen.append(Warehouse.select().count())

    # A step newer than the backup runs after its rows are in, as it would have on the original database.
    monkeypatch.setattr(migration, 'MIGRATIONS', (*MIGRATIONS, Migration(LATEST + 1, 'a later step', later_step)))
    result = CliRunner().invoke(cli.main, ['-q', 'db', 'restore', path])
    assert result.exit_code == 0, result.output
    assert 'Traceback' not in result.output
    assert seen == [1]
    assert snapshot_rows() == before
    assert sorted(row.version for row in SchemaVersion.select()) == [*APPLIED, LATEST + 1]


def test_restore_refuses_a_backup_of_a_newer_schema_in_one_line(filled, database, tmp_path):
    path = Path(migration.backup_data()['path'])
    lines = gzip.decompress(path.read_bytes()).split(b'\n')
    header = json.loads(lines[0])
    newer = tmp_path / 'newer.jsonl.gz'
    newer.write_bytes(gzip.compress(b'\n'.join([json.dumps({**header, 'schema': 99}).encode(), *lines[1:]])))
    with database.connection_context():
        models.drop_tables()
    result = CliRunner().invoke(cli.main, ['-q', 'db', 'restore', str(newer)])
    assert result.exit_code == 1
    assert result.output.strip().count('\n') == 0 and 'schema version 99, newer than' in result.output


def test_backup_never_overwrites(filled, tmp_path):
    target = tmp_path / 'backup.jsonl.gz'
    target.write_text('keep me')
    with pytest.raises(MigrationError, match='never overwrites'):
        migration.write_backup(str(target))
    assert target.read_text() == 'keep me'


def test_truncated_or_tampered_backups_are_refused(filled, database, tmp_path):
    path = migration.backup_data()['path']
    data = gzip.decompress(Path(path).read_bytes())
    truncated = tmp_path / 'truncated.jsonl.gz'
    truncated.write_bytes(Path(path).read_bytes()[:-40])
    lines = data.split(b'\n')
    missing_end = tmp_path / 'missing-end.jsonl.gz'
    missing_end.write_bytes(gzip.compress(b'\n'.join(lines[:-2]) + b'\n'))
    tampered = tmp_path / 'tampered.jsonl.gz'
    tampered.write_bytes(gzip.compress(data.replace(b'"page_views":7', b'"page_views":8')))
    garbage = tmp_path / 'garbage.jsonl.gz'
    garbage.write_bytes(b'not gzip at all')
    with database.connection_context():
        models.drop_tables()
        models.create_tables()
    for bad, message in (
        (truncated, 'truncated'),
        (missing_end, 'truncated'),
        (tampered, 'checksum'),
        (garbage, 'cannot be read'),
    ):
        with pytest.raises(MigrationError, match=message):
            migration.restore_file(str(bad))
    assert Warehouse.select().count() == 0


def test_cli_db_commands(filled, database, tmp_path):
    runner = CliRunner()
    with database.connection_context():
        SchemaVersion.delete().execute()  # as a database made before steps were recorded
    pending = runner.invoke(cli.main, ['db', 'status', '--json'])
    assert pending.exit_code == 0 and json.loads(pending.output)[0]['state'] == 'pending'
    assert 'Applied step 1: baseline schema' in runner.invoke(cli.main, ['db', 'upgrade']).output
    status = runner.invoke(cli.main, ['db', 'status'])
    assert status.exit_code == 0 and 'applied' in status.output
    assert 'Schema is up to date.' in runner.invoke(cli.main, ['db', 'upgrade']).output
    output = tmp_path / 'b.jsonl.gz'
    backup = runner.invoke(cli.main, ['db', 'backup', '--output', str(output)])
    assert backup.exit_code == 0 and output.exists()
    again = runner.invoke(cli.main, ['db', 'backup', '--output', str(output)])
    assert again.exit_code == 1 and 'never overwrites' in again.output
    refused = runner.invoke(cli.main, ['db', 'restore', str(output)])
    assert refused.exit_code == 1 and '--replace' in refused.output
    replaced = runner.invoke(cli.main, ['db', 'restore', str(output), '--replace'])
    assert replaced.exit_code == 0, replaced.output
    missing = runner.invoke(cli.main, ['db', 'restore', str(tmp_path / 'nope.gz')])
    assert missing.exit_code == 2


@pytest.fixture
def hostile(tmp_path, monkeypatch):
    """Paths a job argument could use to leave BACKUP_DIR, and the directory each would reach."""
    backups = tmp_path / 'var' / 'backups'
    backups.mkdir(parents=True)
    monkeypatch.chdir(backups)  # where a relative path lands if it is not taken as a name in BACKUP_DIR
    outside = tmp_path / 'cron.d'
    outside.mkdir()
    (backups / 'link').symlink_to(outside)
    return outside, {
        'absolute': str(outside / 'evil'),
        'dot-dot': '../../cron.d/evil',
        'absolute with dot-dot': f'{backups}/../../cron.d/evil',
        'symbolic link': 'link/evil',
        'the directory itself': str(backups),
    }


@pytest.mark.parametrize(
    'kind', ['absolute', 'dot-dot', 'absolute with dot-dot', 'symbolic link', 'the directory itself']
)
def test_the_backup_job_writes_nowhere_outside_the_backup_directory(redis_conn, database, burst_worker, hostile, kind):
    from rqjobs import queues

    outside, paths = hostile
    job = queues.enqueue('backup_data', [paths[kind]], connection=redis_conn)
    burst_worker('migration')
    job.refresh()
    assert job.get_status() == 'failed' and job.retries_left == 0
    assert 'BACKUP_DIR' in job.latest_result().exc_string
    assert list(outside.iterdir()) == []


def test_the_backup_job_writes_a_named_file_into_the_backup_directory(
    redis_conn, database, burst_worker, tmp_path, env
):
    from rqjobs import queues, settings

    env.chdir(tmp_path)
    chosen = tmp_path / 'chosen-backups'
    env.setenv('BACKUP_DIR', str(chosen))
    settings.reset()
    named = queues.enqueue('backup_data', ['nightly.jsonl.gz'], connection=redis_conn)
    dated = queues.enqueue('backup_data', connection=redis_conn)
    burst_worker('migration')
    assert named.return_value()['path'] == str(chosen / 'nightly.jsonl.gz')
    assert Path(dated.return_value()['path']).parent == chosen
    restored = queues.enqueue('restore_data', ['nightly.jsonl.gz'], {'replace': True}, connection=redis_conn)
    burst_worker('migration')
    assert restored.get_status() == 'finished', restored.latest_result().exc_string


def test_the_restore_job_reads_nothing_outside_the_backup_directory(
    redis_conn, database, burst_worker, hostile, tmp_path
):
    from rqjobs import queues

    outside, _ = hostile
    migration.write_backup(outside / 'planted.jsonl.gz')
    job = queues.enqueue('restore_data', [str(outside / 'planted.jsonl.gz')], {'replace': True}, connection=redis_conn)
    burst_worker('migration')
    assert job.get_status() == 'failed' and 'outside BACKUP_DIR' in job.latest_result().exc_string


def test_cli_backup_into_a_backup_dir_it_cannot_create_is_one_line(database, env):
    from rqjobs import settings

    env.setenv('BACKUP_DIR', '/proc/rqjobs-backups')
    settings.reset()
    result = CliRunner().invoke(cli.main, ['db', 'backup'])
    assert result.exit_code == 1, result.output
    assert result.stderr.strip().splitlines() == [
        'Error: BACKUP_DIR /proc/rqjobs-backups cannot be created (No such file or directory); set BACKUP_DIR to a '
        'writable directory, for example BACKUP_DIR=/var/backups/rqjobs.'
    ]


@pytest.mark.parametrize(
    'target, message',
    [
        ('missing/dir/b.jsonl.gz', 'is not an existing directory; create it first'),
        ('a-file/b.jsonl.gz', 'is not an existing directory; create it first'),
        ('/proc/b.jsonl.gz', 'Cannot write the backup to /proc/b.jsonl.gz'),
    ],
)
def test_cli_backup_to_a_place_it_cannot_write_is_one_line(database, tmp_path, monkeypatch, target, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'a-file').write_text('not a directory')
    result = CliRunner().invoke(cli.main, ['db', 'backup', '--output', target])
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / 'missing').exists()


def test_db_init_prints_the_generated_password_once(database, tmp_path):
    runner = CliRunner()
    first = runner.invoke(cli.main, ['db', 'init'])
    password = (tmp_path / 'var' / 'admin-password.txt').read_text().strip()
    assert first.exit_code == 0 and password in first.output
    second = runner.invoke(cli.main, ['db', 'init'])
    assert second.exit_code == 0 and password not in second.output


def test_db_init_on_a_second_database_sharing_the_data_directory(database, env, tmp_path):
    runner = CliRunner()
    first = runner.invoke(cli.main, ['-q', 'db', 'init'])
    assert first.exit_code == 0, first.output
    first_file = tmp_path / 'var' / 'admin-password.txt'
    first_password = first_file.read_text()
    # The same data directory, another database.
    env.setenv('DATABASE_URL', f'sqlite:///{tmp_path / "var" / "other.db"}')
    from rqjobs import settings

    settings.reset()
    second = runner.invoke(cli.main, ['-q', 'db', 'init'])
    assert second.exit_code == 0, second.output
    second_file = tmp_path / 'var' / 'admin-password-2.txt'
    second_password = second_file.read_text()
    assert second_password.strip() in second.output and f'also in {second_file}' in second.output
    assert second_password != first_password and first_file.read_text() == first_password
    assert stat.S_IMODE(second_file.stat().st_mode) == 0o600
    again = runner.invoke(cli.main, ['-q', 'db', 'init'])
    assert again.exit_code == 0 and ': 0 tables created,' in again.output
    assert sorted(path.name for path in (tmp_path / 'var').glob('admin-password*')) == [
        'admin-password-2.txt',
        'admin-password.txt',
    ]


def test_jobs_run_through_a_worker(redis_conn, database, burst_worker):
    from rqjobs import queues

    job = queues.enqueue('data_migration', connection=redis_conn)
    burst_worker('migration')
    assert job.return_value()['ok'] is True
