"""Schema and data migration jobs (queue `migration`): versioned schema steps, first users, backup and restore.

Schema steps are applied in version order, each recorded in the `schema_version` table in the same transaction as
its changes where the database has transactional DDL (SQLite, PostgreSQL; MySQL commits DDL at once). A database
lock keeps two concurrent upgrades from applying a step twice.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import gzip
import hashlib
import itertools
import json
import logging
import os
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import peewee
from playhouse.migrate import SchemaMigrator, migrate

import models
from models import (
    Document,
    DocumentCatalog,
    Role,
    SchemaVersion,
    User,
    UserInRole,
    Warehouse,
    WarehouseStatus,
    WarehouseType,
)
from rqjobs import clock, database, passwords
from rqjobs.exceptions import MigrationError, SchemaNotCurrent
from rqjobs.settings import get_settings, redact_url

logger = logging.getLogger(__name__)

JOBS = (
    'create_schema',
    'initialize_users',
    'migrate_warehouses',
    'migrate_documents',
    'update_indexes',
    'data_migration',
    'backup_data',
    'restore_data',
)

LOCK_NAME = 'rqjobs.migrate'
LOCK_TIMEOUT = 60
# PostgreSQL advisory locks take a number: this one is the first 8 bytes of sha256('rqjobs.migrate').
PG_LOCK_KEY = int.from_bytes(hashlib.sha256(LOCK_NAME.encode()).digest()[:8], 'big', signed=True)
BACKUP_FORMAT = 'rqjobs-backup'
BACKUP_VERSION = 1
PASSWORD_FILE = 'admin-password.txt'


@dataclass(frozen=True)
class Migration:
    """One schema step: its version, a name, and what it does with peewee's migrator."""

    version: int
    name: str
    apply: Callable[[SchemaMigrator], None]


def _baseline(migrator: SchemaMigrator) -> None:
    # Version 1 is the schema as the models define it; later steps change it with `migrator` operations.
    models.create_tables()


def _page_states(migrator: SchemaMigrator) -> None:
    # A database made by step 1 of this version already has the columns (step 1 creates the models as they are now).
    _add_missing_columns(
        migrator,
        DocumentCatalog,
        ('status', 'request', 'request_digest', 'written_digest', 'tries', 'error', 'tokens_in', 'tokens_out'),
    )
    _add_missing_columns(migrator, Warehouse, ('token_budget',))
    _add_missing_columns(migrator, Document, ('paths',))


def _add_missing_columns(migrator: SchemaMigrator, model: type[peewee.Model], names: Sequence[str]) -> None:
    table = model._meta.table_name
    present = {column.name for column in migrator.database.get_columns(table)}
    for name in names:
        field = model._meta.fields[name]
        if field.column_name not in present:
            migrate(migrator.add_column(table, field.column_name, field))


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, 'baseline schema: every table and index of the models', _baseline),
    Migration(2, 'page states, requests and tokens of pages written by a model; token budgets', _page_states),
)


# ---- Schema ----


def create_schema() -> dict:
    """Bring the schema up to date: apply every pending schema step."""
    # Applied steps are recorded and skipped, so a second run changes nothing.
    with database.connection(schema=False) as db:
        before = set(db.get_tables())
    applied = upgrade()
    with database.connection(schema=False) as db:
        after = set(db.get_tables())
    created = sorted(after - before)
    logger.info(
        'schema: %d tables created, %d present, steps applied: %s',
        len(created),
        len(after),
        [step['version'] for step in applied] or 'none',
    )
    return {'created': created, 'tables': len(after), 'applied': applied}


def upgrade(steps: Sequence[Migration] | None = None) -> list[dict]:
    """Apply the steps not yet recorded (of `MIGRATIONS` unless given), in version order; return the ones applied."""
    steps = MIGRATIONS if steps is None else steps
    versions = [step.version for step in steps]
    if len(set(versions)) != len(versions):
        raise MigrationError(f'Schema steps have duplicate versions: {sorted(versions)}.')
    applied = []
    with database.connection(schema=False) as db, _migration_lock(db):
        db.create_tables([SchemaVersion], safe=True)
        done = {row.version for row in SchemaVersion.select(SchemaVersion.version)}
        migrator = SchemaMigrator.from_database(db)
        for step in sorted(steps, key=lambda s: s.version):
            if step.version in done:
                continue
            logger.info('schema: applying step %d (%s)', step.version, step.name)
            try:
                with db.atomic():
                    step.apply(migrator)
                    SchemaVersion.create(version=step.version, name=step.name, applied_at=clock.utcnow())
            except peewee.DatabaseError as exc:
                raise MigrationError(f'Schema step {step.version} ({step.name}) failed: {exc}') from exc
            applied.append({'version': step.version, 'name': step.name})
    return applied


def schema_status(steps: Sequence[Migration] | None = None) -> list[dict]:
    """Return every schema step with when it was applied (None while pending)."""
    steps = MIGRATIONS if steps is None else steps
    with database.connection(schema=False) as db:
        done = _applied(db)
    return [
        {'version': step.version, 'name': step.name, 'applied_at': done.get(step.version)}
        for step in sorted(steps, key=lambda s: s.version)
    ]


def ensure_schema() -> None:
    """Make sure the schema is current: on SQLite apply the pending steps, elsewhere raise `SchemaNotCurrent`."""
    steps = MIGRATIONS
    with database.connection(schema=False) as db:
        applied = _applied(db)
        unknown = sorted(set(applied) - {step.version for step in steps})
        if unknown:
            # A newer rqjobs upgraded this database: its steps usually only add, so this version goes on, but an
            # operator with workers of two versions on one database should hear of it.
            logger.warning(
                'The database has schema steps this version of rqjobs does not know (%s): a newer version upgraded '
                'it; upgrade this installation too.',
                ', '.join(map(str, unknown)),
            )
        pending = [step.version for step in steps if step.version not in applied]
        if not pending:
            return
        if isinstance(db, peewee.SqliteDatabase):
            # The embedded default has no one to run `rqjobs db upgrade`: its schema is simply there. upgrade() holds
            # the migration lock and skips the steps another process applied meanwhile.
            upgrade(steps)
            return
    url = redact_url(get_settings().database_url)
    if not applied:
        raise SchemaNotCurrent(
            f'The database at {url} has no schema yet; create it with `rqjobs db upgrade` '
            f'(or `rqjobs db init`, which also creates the first admin user).'
        )
    raise SchemaNotCurrent(
        f'The schema of the database at {url} is behind this version of rqjobs (steps '
        f'{", ".join(map(str, pending))} pending); apply them with `rqjobs db upgrade`.'
    )


def _applied(db: peewee.Database) -> dict[int, dt.datetime]:
    """Return the recorded schema steps and when each was applied; none on a database without the schema."""
    # Looked up rather than queried: on PostgreSQL a failed query would abort the transaction around it.
    if not db.table_exists(SchemaVersion._meta.table_name):
        return {}
    return {row.version: row.applied_at for row in SchemaVersion.select()}


@contextlib.contextmanager
def _migration_lock(db: peewee.Database) -> Iterator[None]:
    """Hold a lock that only one upgrade at a time can have, whichever database this is."""
    if isinstance(db, peewee.PostgresqlDatabase):
        db.execute_sql('SELECT pg_advisory_lock(%s)', (PG_LOCK_KEY,))
        try:
            yield
        finally:
            db.execute_sql('SELECT pg_advisory_unlock(%s)', (PG_LOCK_KEY,))
    elif isinstance(db, peewee.MySQLDatabase):
        got = db.execute_sql('SELECT GET_LOCK(%s, %s)', (LOCK_NAME, LOCK_TIMEOUT)).fetchone()[0]
        if got != 1:
            raise MigrationError(f'Another schema upgrade held the lock for {LOCK_TIMEOUT} s; try again later.')
        try:
            yield
        finally:
            db.execute_sql('SELECT RELEASE_LOCK(%s)', (LOCK_NAME,))
    else:
        # SQLite: a lock file beside the database file (an in-memory database has one connection anyway).
        if db.database == ':memory:':
            yield
            return
        with open(f'{db.database}.migrate-lock', 'w') as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield


def update_indexes() -> dict:
    """Create every index the models define that the database lacks."""
    # Only missing indexes are created, so a second run changes nothing.
    created = []
    with database.connection() as db:
        migrator = SchemaMigrator.from_database(db)
        for model in models.MODELS:
            table = model._meta.table_name
            existing = {index.name for index in db.get_indexes(table)}
            for index in model._meta.fields_to_index():
                if index._name in existing:
                    continue
                columns = [field.column_name for field in index._expressions]
                with db.atomic():
                    migrator.add_index(table, columns, unique=index._unique).run()
                created.append(index._name)
    logger.info('indexes: %d created', len(created))
    return {'created': created}


# ---- Data ----


def initialize_users() -> dict:
    """Create the admin and user roles and assign every user one; create a first admin if there is no user."""
    # Skipped once any user has a role, so it runs at most once in effect.
    settings = get_settings()
    with database.connection() as db, db.atomic():
        if UserInRole.select().exists():
            return {'status': 'skipped', 'message': 'roles are already assigned'}
        now = clock.utcnow()
        admin_role, _ = Role.get_or_create(
            name='admin',
            defaults={
                'description': 'Administrators: manage every warehouse and user',
                'is_system_role': True,
                'created_at': now,
                'updated_at': now,
            },
        )
        user_role, _ = Role.get_or_create(
            name='user',
            defaults={
                'description': 'Users: submit and read warehouses',
                'is_system_role': True,
                'created_at': now,
                'updated_at': now,
            },
        )
        users = list(User.select().where(User.is_deleted == False))
        password_file = None
        admin_created = not users
        if admin_created:
            password = settings.admin_password or passwords.generate_password()
            users = [User.create(name='admin', email='admin@localhost', password=passwords.hash_password(password))]
            if not settings.admin_password:
                password_file = _write_password_once(settings.data_dir, password)
        UserInRole.insert_many(
            [{'user': user.id, 'role': admin_role.id if user.name == 'admin' else user_role.id} for user in users]
        ).execute()
    logger.info(
        'users: roles created, %d users assigned%s',
        len(users),
        f', first admin password in {password_file}' if password_file else '',
    )
    return {
        'status': 'initialized',
        'roles': ['admin', 'user'],
        'assigned': len(users),
        'admin_created': admin_created,
        'password_file': str(password_file) if password_file else None,
    }


def _write_password_once(directory: Path, password: str) -> Path:
    # The generated password goes to a file only its owner can read, never to a log, a job result or Redis. A file
    # there already (another database sharing this directory, an earlier run rolled back) is never overwritten: it
    # may hold the only copy of a password. The next free name is taken instead.
    directory.mkdir(parents=True, exist_ok=True)
    for number in itertools.count(1):
        path = directory / (PASSWORD_FILE if number == 1 else PASSWORD_FILE.replace('.txt', f'-{number}.txt'))
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        with os.fdopen(descriptor, 'w') as handle:
            handle.write(password + '\n')
        return path


def migrate_warehouses() -> dict:
    """Give warehouses left by older data a valid status, type and consistent timestamps."""
    # Each fix selects only rows that still need it, so a second run changes nothing.
    with database.connection() as db, db.atomic():
        completed = (
            Warehouse.update(status=WarehouseStatus.COMPLETED)
            .where(
                Warehouse.status.not_in(WarehouseStatus.ALL), Warehouse.version.is_null(False), Warehouse.version != ''
            )
            .execute()
        )
        pending = (
            Warehouse.update(status=WarehouseStatus.PENDING)
            .where(Warehouse.status.not_in(WarehouseStatus.ALL))
            .execute()
        )
        types = Warehouse.update(type=WarehouseType.GIT).where(Warehouse.type.not_in(WarehouseType.ALL)).execute()
        timestamps = (
            Warehouse.update(updated_at=Warehouse.created_at)
            .where(Warehouse.updated_at < Warehouse.created_at)
            .execute()
        )
        deleted = (
            Warehouse.update(deleted_at=Warehouse.updated_at)
            .where(Warehouse.is_deleted == True, Warehouse.deleted_at.is_null())
            .execute()
        )
    return {'statuses': completed + pending, 'types': types, 'timestamps': timestamps, 'deleted_at': deleted}


def migrate_documents() -> dict:
    """Give documents and catalog entries left by older data a valid status and consistent timestamps."""
    # Each fix selects only rows that still need it, so a second run changes nothing.
    with database.connection() as db, db.atomic():
        warehouse_status = Warehouse.select(Warehouse.status).where(Warehouse.id == Document.warehouse)
        statuses = Document.update(status=warehouse_status).where(Document.status.not_in(WarehouseStatus.ALL)).execute()
        timestamps = (
            Document.update(updated_at=Document.created_at).where(Document.updated_at < Document.created_at).execute()
        )
        last_update = (
            Document.update(last_update=Document.updated_at).where(Document.last_update < Document.created_at).execute()
        )
        deleted = (
            DocumentCatalog.update(deleted_at=DocumentCatalog.updated_at)
            .where(DocumentCatalog.is_deleted == True, DocumentCatalog.deleted_at.is_null())
            .execute()
        )
    return {'statuses': statuses, 'timestamps': timestamps + last_update, 'deleted_at': deleted}


def data_migration() -> dict:
    """Upgrade the schema, then initialise users, fix warehouses and documents, and ensure the indexes."""
    # Every step is safe twice, so the whole is too.
    report = {}
    schema = _step(report, 'schema', create_schema)
    for name, step in (
        ('users', initialize_users),
        ('warehouses', migrate_warehouses),
        ('documents', migrate_documents),
        ('indexes', update_indexes),
    ):
        if schema:
            _step(report, name, step)
        else:
            report[name] = {'ok': False, 'error': 'skipped: the schema upgrade failed'}
    report['ok'] = all(result['ok'] for result in report.values())
    return report


def _step(report: dict, name: str, step: Callable[[], dict]) -> bool:
    try:
        report[name] = {'ok': True, 'result': step()}
    except Exception as exc:
        logger.exception('data migration: step %s failed', name)
        report[name] = {'ok': False, 'error': f'{type(exc).__name__}: {exc}'}
    return report[name]['ok']


# ---- Backup and restore ----

# What a backup holds, in restore order; each table lists the columns it leaves out.
BACKUP_TABLES: tuple[tuple[type[peewee.Model], tuple[str, ...]], ...] = (
    (models.User, ('password',)),
    (models.Role, ()),
    (models.UserInRole, ()),
    (models.Warehouse, ('git_user_name', 'git_password')),
    (models.Document, ()),
    (models.DocumentCatalog, ()),
    (models.DocumentFileItem, ()),
    (models.DocumentFileItemSource, ()),
    (models.DocumentOverview, ()),
    (models.DocumentCommitRecord, ()),
    (models.MiniMap, ()),
    (models.DailyStatistics, ()),
    (models.StatisticsSnapshot, ()),
)


def backup_data(path: str | None = None) -> dict:
    """Write a consistent, compressed backup into BACKUP_DIR; return its path and counts."""
    # Every run writes a new file and never overwrites one, so a second run only adds a second backup.
    settings = get_settings()
    try:
        settings.backup_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MigrationError(
            f'BACKUP_DIR {settings.backup_dir} cannot be created ({exc.strerror or exc}); set '
            f'BACKUP_DIR to a writable directory, for example BACKUP_DIR=/var/backups/rqjobs.'
        ) from None
    name = path or f'backup-{clock.utcnow():%Y%m%dT%H%M%S%fZ}.jsonl.gz'
    return write_backup(_in_backup_dir(name, settings.backup_dir))


def write_backup(target: str | Path) -> dict:
    """Write a backup without passwords or git credentials to `target`, whose directory must exist."""
    target = Path(target)
    now = clock.utcnow()
    if target.exists():
        raise MigrationError(f'{target} exists already; a backup never overwrites a file. Choose another --output.')
    if not target.parent.is_dir():
        # Not created: a mistyped directory would otherwise hold backups that nobody looks for.
        raise MigrationError(
            f'{target.parent} is not an existing directory; create it first (mkdir -p '
            f'{target.parent}) or choose another --output.'
        )
    temporary = target.with_name(f'.{target.name}.{os.getpid()}.tmp')
    counts: dict[str, int] = {}
    digest = hashlib.sha256()
    try:
        with database.connection() as db, _snapshot(db), gzip.open(temporary, 'wb') as out:
            # The schema version lets a restore into an empty database build the schema these rows fit.
            _write_line(
                out,
                {
                    'format': BACKUP_FORMAT,
                    'version': BACKUP_VERSION,
                    'created_at': now.isoformat(),
                    'schema': max(_applied(db), default=1),
                },
            )
            for model, excluded in BACKUP_TABLES:
                table = model._meta.table_name
                columns = [field for field in model._meta.sorted_fields if field.name not in excluded]
                counts[table] = 0
                for row in model.select(*columns).order_by(*_order(model)).dicts().iterator():
                    line = _encode({'table': table, 'row': row})
                    digest.update(line)
                    out.write(line)
                    counts[table] += 1
            _write_line(out, {'end': True, 'rows': sum(counts.values()), 'sha256': digest.hexdigest()})
        with open(temporary, 'rb') as handle:
            os.fsync(handle.fileno())
        # A hard link fails if the name exists: a backup written at the same moment is never replaced.
        os.link(temporary, target)
    except FileExistsError:
        raise MigrationError(
            f'{target} exists already; a backup never overwrites a file. Choose another --output.'
        ) from None
    except OSError as exc:
        raise MigrationError(
            f'Cannot write the backup to {target} ({exc.strerror or exc}); choose a writable place with --output.'
        ) from None
    finally:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
    logger.info('backup: %s written, %d rows', target, sum(counts.values()))
    return {'path': str(target), 'counts': counts}


def _in_backup_dir(path: str, directory: Path) -> Path:
    """Return the file `path` names in `directory` (a name, or a path inside it); refuse any place outside it."""
    # Job arguments come from whoever can enqueue: a backup job must not write (or read) a file anywhere else.
    directory = directory.resolve()
    if not path or '..' in Path(path).parts:
        raise MigrationError(
            f'Backup path {path!r} may not be empty or hold "..": give a file name in BACKUP_DIR '
            f'({directory}), for example backup-nightly.jsonl.gz.'
        )
    target = (directory / path).resolve()  # an absolute path replaces `directory`; symbolic links are followed
    if target == directory or not target.is_relative_to(directory):
        raise MigrationError(
            f'Backup path {path!r} is outside BACKUP_DIR ({directory}); a job writes and reads '
            f'backups only there. Give a file name, for example backup-nightly.jsonl.gz.'
        )
    return target


@contextlib.contextmanager
def _snapshot(db: peewee.Database) -> Iterator[None]:
    """Read every table from one snapshot, so the backup is consistent while jobs keep writing."""
    with db.atomic():
        if isinstance(db, peewee.PostgresqlDatabase):
            db.execute_sql('SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY')
        # SQLite (WAL) keeps one read transaction on one snapshot; MySQL's InnoDB default is REPEATABLE READ.
        yield


def _order(model: type[peewee.Model]) -> list:
    primary = model._meta.primary_key
    if isinstance(primary, peewee.CompositeKey):
        return [model._meta.fields[name] for name in primary.field_names]
    return [primary]


def _encode(value: dict) -> bytes:
    return (json.dumps(value, ensure_ascii=False, default=_json_default, separators=(',', ':')) + '\n').encode()


def _write_line(out, value: dict) -> None:
    out.write(_encode(value))


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    raise TypeError(f'{type(value).__name__} is not JSON')


def read_backup(path: str | Path) -> dict[str, list[dict]]:
    """Read and check a whole backup file; return its rows by table, or raise `MigrationError` saying what is wrong."""
    return _read_backup(path)[1]


def _read_backup(path: str | Path) -> tuple[dict, dict[str, list[dict]]]:
    path = Path(path)
    tables = {model._meta.table_name: model for model, _ in BACKUP_TABLES}
    rows: dict[str, list[dict]] = {name: [] for name in tables}
    digest = hashlib.sha256()
    header = trailer = None
    try:
        with gzip.open(path, 'rb') as handle:
            for number, line in enumerate(handle, 1):
                if trailer is not None:
                    raise MigrationError(f'{path}: data after the end marker (line {number}); the file was altered.')
                record = json.loads(line)
                if header is None:
                    if record.get('format') != BACKUP_FORMAT or record.get('version') != BACKUP_VERSION:
                        raise MigrationError(f'{path} is not an rqjobs backup of version {BACKUP_VERSION}.')
                    header = record
                elif record.get('end'):
                    trailer = record
                else:
                    if record.get('table') not in tables or not isinstance(record.get('row'), dict):
                        raise MigrationError(f'{path}: line {number} is not a row of a known table.')
                    digest.update(line)
                    rows[record['table']].append(record['row'])
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise MigrationError(f'{path} cannot be read as a compressed backup ({exc}); it may be truncated.') from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise MigrationError(f'{path} holds a line that is not JSON ({exc}); the file is damaged.') from None
    if header is None or trailer is None:
        raise MigrationError(f'{path} has no end marker: the backup is truncated or incomplete.')
    if trailer.get('sha256') != digest.hexdigest() or trailer.get('rows') != sum(map(len, rows.values())):
        raise MigrationError(f'{path} does not match its checksum: the file was altered or damaged.')
    return header, rows


def restore_data(path: str, replace: bool = False) -> dict:
    """Restore a backup from BACKUP_DIR into an empty database (or, with `replace`, instead of its rows)."""
    return restore_file(_in_backup_dir(path, get_settings().backup_dir), replace=replace)


def restore_file(path: str | Path, replace: bool = False) -> dict:
    """Restore a backup into an empty database (or, with `replace`, instead of its rows), all or nothing.

    A database without the schema gets it first, at the version the backup was made from; the steps after that
    version run once the rows are in. The rows are all or nothing; the schema stays if they fail.
    """
    # All or nothing in one transaction; without `replace`, a second run finds the database no longer empty.
    header, rows = _read_backup(path)
    made_from = header.get('schema', 1)  # backups that do not say were made from the baseline schema
    newest = max(step.version for step in MIGRATIONS)
    if not isinstance(made_from, int) or made_from > newest:
        raise MigrationError(
            f'{path} was made from schema version {made_from}, newer than this rqjobs knows '
            f'({newest}); restore it with the release that made it, or a later one.'
        )
    upgrade([step for step in MIGRATIONS if step.version <= made_from])
    counts = {}
    with database.connection(schema=False) as db, db.atomic():
        filled = [model._meta.table_name for model, _ in BACKUP_TABLES if model.select().exists()]
        if filled and not replace:
            raise MigrationError(
                f'The database is not empty ({", ".join(filled)} have rows); restore into an empty '
                f'database, or pass --replace to replace those rows.'
            )
        for model, _ in reversed(BACKUP_TABLES):
            model.delete().execute()
        for model, _ in BACKUP_TABLES:
            table = model._meta.table_name
            table_rows = _parents_first(rows[table]) if 'parent' in model._meta.fields else rows[table]
            prepared = [_restorable(model, row) for row in table_rows]
            for batch in peewee.chunked(prepared, 200):
                model.insert_many(batch).execute()
            counts[table] = len(prepared)
    upgrade()
    logger.info('restore: %s restored, %d rows', path, sum(counts.values()))
    return {'path': str(path), 'counts': counts}


def _parents_first(rows: list[dict]) -> list[dict]:
    # Catalog entries reference their parent: insert each after the entry it points to.
    by_id = {row['id']: row for row in rows}
    ordered, placed = [], set()

    def place(row: dict, depth: int = 0) -> None:
        if row['id'] in placed:
            return
        parent = by_id.get(row.get('parent'))
        if parent is not None and depth < len(rows):
            place(parent, depth + 1)
        placed.add(row['id'])
        ordered.append(row)

    for row in rows:
        place(row)
    return ordered


def _restorable(model: type[peewee.Model], row: dict) -> dict:
    unknown = set(row) - set(model._meta.combined)
    if unknown:
        raise MigrationError(f'Backup rows of {model._meta.table_name} have unknown columns: {sorted(unknown)}.')
    data = {}
    for name, value in row.items():
        field = model._meta.combined[name]
        if value is not None and isinstance(field, peewee.DateTimeField):
            value = dt.datetime.fromisoformat(value)
        elif value is not None and isinstance(field, peewee.DateField):
            value = dt.date.fromisoformat(value)
        data[field.name] = value
    if model is models.User:
        data['password'] = passwords.UNUSABLE  # backups carry no password hashes: users set a new one
    return data
