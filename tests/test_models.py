"""Tests of the schema and of opening the database, on SQLite or the database named by TEST_DATABASE_URL."""

import datetime
import os
import warnings

import pytest
from peewee import IntegrityError, MySQLDatabase, OperationalError, PostgresqlDatabase

import models
from helpers import run_jobs_cli
from models import (
    AccessRecord,
    DailyStatistics,
    Document,
    DocumentCatalog,
    DocumentCommitRecord,
    DocumentFileItem,
    DocumentFileItemSource,
    DocumentOverview,
    MiniMap,
    Role,
    User,
    UserInRole,
    Warehouse,
    WarehouseStatus,
)
from rqjobs import clock
from rqjobs.database import open_database

FIXED_NOW = datetime.datetime(2024, 5, 17, 8, 30, 15, 123456)
# Cyrillic, CJK, an accent, emoji and mathematical letters outside the Basic Multilingual Plane.
UNICODE_TEXT = 'Документация 文档 — naïve café 🚀🧠 𝔘𝔫𝔦𝔠𝔬𝔡𝔢'
PASSWORD = 's3cret-pw'


def make_warehouse(**fields):
    values = {
        'organization_name': 'AIDotNet',
        'name': 'OpenDeepWiki',
        'address': 'https://github.com/AIDotNet/OpenDeepWiki.git',
        'branch': 'main',
    }
    values.update(fields)
    return Warehouse.create(**values)


def make_documentation(warehouse):
    """Create one of every row generated from `warehouse`."""
    document = Document.create(warehouse=warehouse, git_path=f'/repos/{warehouse.id}')
    root = DocumentCatalog.create(warehouse=warehouse, document=document, name='Overview', url='overview')
    child = DocumentCatalog.create(warehouse=warehouse, document=document, parent=root, name='Setup', url='setup')
    for catalog in (root, child):
        page = DocumentFileItem.create(catalog=catalog, title=catalog.name, content=f'# {catalog.name}')
        DocumentFileItemSource.create(file_item=page, address='README.md', name='README.md')
    DocumentOverview.create(document=document, title='OpenDeepWiki', content='An overview.')
    DocumentCommitRecord.create(
        warehouse=warehouse, commit_id='a' * 40, title='Initial commit', author='Ada', last_update=FIXED_NOW
    )
    MiniMap.create(warehouse=warehouse, value={'title': warehouse.name, 'nodes': []})


def generated_row_counts():
    generated = (
        Document,
        DocumentCatalog,
        DocumentFileItem,
        DocumentFileItemSource,
        DocumentOverview,
        DocumentCommitRecord,
        MiniMap,
    )
    return {model.__name__: model.select().count() for model in generated}


def index_shapes(database, model):
    return {(tuple(index.columns), index.unique) for index in database.get_indexes(model._meta.table_name)}


@pytest.mark.db
def test_create_tables_twice_changes_nothing(database):
    tables = database.get_tables()
    indexes = {model: index_shapes(database, model) for model in models.MODELS}

    models.create_tables()

    assert {model._meta.table_name for model in models.MODELS} <= set(tables)
    assert database.get_tables() == tables
    assert {model: index_shapes(database, model) for model in models.MODELS} == indexes


@pytest.mark.db
def test_the_indexes_jobs_rely_on_exist(database):
    expected = {
        User: {(('name',), True), (('email',), True), (('is_deleted',), False)},
        Role: {(('name',), True)},
        Warehouse: {
            (('organization_name', 'name', 'branch'), False),
            (('status', 'created_at'), False),
            (('created_at',), False),
            (('is_deleted',), False),
        },
        Document: {(('warehouse_id',), False), (('is_deleted',), False)},
        DocumentCatalog: {(('warehouse_id', 'parent_id'), False), (('document_id',), False)},
        DocumentFileItem: {(('catalog_id',), False)},
        DocumentFileItemSource: {(('file_item_id',), False)},
        DocumentOverview: {(('document_id',), True)},
        DocumentCommitRecord: {(('warehouse_id', 'commit_id'), True)},
        MiniMap: {(('warehouse_id',), True), (('created_at',), False)},
        AccessRecord: {
            (('event_id',), True),
            (('resource_type', 'resource_id', 'access_time'), False),
            (('resource_id',), False),
            (('access_time',), False),
            (('created_at',), False),
        },
        DailyStatistics: {(('date',), True)},
    }
    for model, shapes in expected.items():
        assert shapes <= index_shapes(database, model), model.__name__


@pytest.mark.db
def test_a_repository_branch_may_be_submitted_again(database):
    failed = make_warehouse(status=WarehouseStatus.FAILED, is_deleted=True, deleted_at=FIXED_NOW)
    make_warehouse()

    same = Warehouse.select().where(
        (Warehouse.organization_name == failed.organization_name)
        & (Warehouse.name == failed.name)
        & (Warehouse.branch == failed.branch)
    )
    assert same.count() == 2


@pytest.mark.db
def test_unicode_round_trips(database):
    warehouse = make_warehouse(name='仓库-🚀', description=UNICODE_TEXT)
    catalog = DocumentCatalog.create(warehouse=warehouse, name=UNICODE_TEXT)
    page = DocumentFileItem.create(
        catalog=catalog, title=UNICODE_TEXT, content=UNICODE_TEXT, metadata={'note': UNICODE_TEXT}
    )

    assert Warehouse.get(Warehouse.name == '仓库-🚀').description == UNICODE_TEXT
    assert DocumentCatalog.get_by_id(catalog.id).name == UNICODE_TEXT
    stored = DocumentFileItem.get_by_id(page.id)
    assert (stored.title, stored.content, stored.metadata) == (UNICODE_TEXT, UNICODE_TEXT, {'note': UNICODE_TEXT})


@pytest.mark.db
def test_a_200_kb_page_round_trips(database):
    content = ('## 章节 🚀\n' + 'lorem ipsum ' * 100 + '\n') * 170
    assert len(content.encode('utf-8')) > 200_000
    catalog = DocumentCatalog.create(warehouse=make_warehouse(), name='Big')

    page = DocumentFileItem.create(catalog=catalog, content=content, size=len(content.encode('utf-8')))

    assert DocumentFileItem.get_by_id(page.id).content == content


@pytest.mark.db
def test_a_replayed_commit_record_is_refused(database):
    warehouse, other = make_warehouse(), make_warehouse(name='other')
    commit = {'commit_id': 'f' * 40, 'title': 'Fix', 'last_update': FIXED_NOW}
    DocumentCommitRecord.create(warehouse=warehouse, **commit)

    with pytest.raises(IntegrityError), database.atomic():
        DocumentCommitRecord.create(warehouse=warehouse, **commit)
    DocumentCommitRecord.create(warehouse=other, **commit)

    assert DocumentCommitRecord.select().where(DocumentCommitRecord.warehouse == warehouse).count() == 1


@pytest.mark.db
def test_deleting_a_warehouse_removes_everything_generated_from_it(database):
    make_documentation(make_warehouse(name='kept'))
    counts = generated_row_counts()
    doomed = make_warehouse(name='doomed')
    make_documentation(doomed)

    doomed.delete_instance()

    assert generated_row_counts() == counts
    assert Warehouse.select().count() == 1


@pytest.mark.db
def test_deleting_a_user_keeps_their_warehouses_and_ends_their_memberships(database):
    user = User.create(name='ada', email='ada@example.com', password='pbkdf2_sha256$600000$salt$hash')
    role = Role.create(name='admin')
    UserInRole.create(user=user, role=role)
    warehouse = make_warehouse(creator=user)

    user.delete_instance()

    assert Warehouse.get_by_id(warehouse.id).creator_id is None
    assert UserInRole.select().count() == 0
    assert Role.select().count() == 1


@pytest.mark.db
def test_json_fields_round_trip_nested_values(database):
    tree = {
        'title': 'OpenDeepWiki',
        'url': '',
        'nodes': [
            {
                'title': '架构 🧠',
                'url': 'src/app.py',
                'nodes': [
                    {
                        'title': 'Workers',
                        'url': 'src/worker.py',
                        'nodes': [],
                        'weight': 1.5,
                        'done': True,
                        'note': None,
                    },
                ],
            },
        ],
    }
    warehouse = make_warehouse()
    MiniMap.create(warehouse=warehouse, value=tree)
    listed = DocumentCatalog.create(warehouse=warehouse, name='a', dependent_file=['src/app.py', 'README.md'])
    unlisted = DocumentCatalog.create(warehouse=warehouse, name='b')

    assert MiniMap.get(MiniMap.warehouse == warehouse).value == tree
    assert DocumentCatalog.get_by_id(listed.id).dependent_file == ['src/app.py', 'README.md']
    assert DocumentCatalog.get_by_id(unlisted.id).dependent_file is None


@pytest.mark.db
def test_timestamps_come_from_the_clock(database, monkeypatch):
    monkeypatch.setattr(clock, 'utcnow', lambda: FIXED_NOW)
    warehouse = make_warehouse()
    record = AccessRecord.create(event_id='event-1', resource_type='warehouse', resource_id=warehouse.id)

    stored = Warehouse.get_by_id(warehouse.id)
    assert stored.created_at == stored.updated_at == FIXED_NOW
    assert AccessRecord.get_by_id(record.id).access_time == FIXED_NOW

    later = FIXED_NOW + datetime.timedelta(hours=1)
    monkeypatch.setattr(clock, 'utcnow', lambda: later)
    stored.status = WarehouseStatus.PROCESSING
    stored.save(only=[Warehouse.status])

    stored = Warehouse.get_by_id(warehouse.id)
    assert (stored.status, stored.created_at, stored.updated_at) == (WarehouseStatus.PROCESSING, FIXED_NOW, later)


def test_sqlite_uses_wal_waits_for_locks_and_enforces_foreign_keys(tmp_path):
    path = tmp_path / 'data' / 'nested' / 'rqjobs.db'
    database = open_database(f'sqlite:///{path}')

    with database.connection_context():
        pragmas = {
            name: database.execute_sql(f'PRAGMA {name}').fetchone()[0]
            for name in ('journal_mode', 'busy_timeout', 'foreign_keys', 'synchronous')
        }

    assert pragmas == {'journal_mode': 'wal', 'busy_timeout': 5000, 'foreign_keys': 1, 'synchronous': 1}
    assert path.exists()


@pytest.mark.parametrize(
    'url, scheme',
    [
        (f'redis://admin:{PASSWORD}@127.0.0.1:6379/0', 'redis'),
        (f'mysql+pymysql://admin:{PASSWORD}@db.example.com/rqjobs', 'mysql+pymysql'),
        (f'postgresql://admin:{PASSWORD}@db.example.com', 'postgresql'),
        (f'mysql://admin:{PASSWORD}/@db.example.com/rqjobs', 'mysql'),
    ],
)
def test_open_database_refuses_a_bad_url_without_echoing_its_password(url, scheme):
    with pytest.raises(ValueError) as excinfo:
        open_database(url)

    message = str(excinfo.value)
    assert scheme in message
    assert 'postgresql://user:password@127.0.0.1:5432/rqjobs' in message
    assert PASSWORD not in message


@pytest.mark.parametrize(
    'url, database_class',
    [
        (f'postgresql://admin:{PASSWORD}@192.0.2.1:5432/rqjobs', PostgresqlDatabase),
        (f'postgres://admin:{PASSWORD}@192.0.2.1/rqjobs', PostgresqlDatabase),
        (f'mysql://admin:{PASSWORD}@192.0.2.1:3306/rqjobs', MySQLDatabase),
    ],
)
def test_open_database_does_not_connect(url, database_class):
    database = open_database(url)

    assert isinstance(database, database_class)
    assert database.is_closed()


def test_open_database_does_not_create_the_sqlite_file(tmp_path):
    path = tmp_path / 'var' / 'rqjobs.db'

    database = open_database(f'sqlite:///{path}')

    assert database.is_closed()
    assert not path.exists()


def test_mysql_credentials_reach_the_driver_decoded_and_without_a_deprecation_warning():
    database = open_database('mysql://jobs%40ci:p%40ss%3Aword@127.0.0.1:1/rqjobs')

    assert (database.connect_params['user'], database.connect_params['password']) == ('jobs@ci', 'p@ss:word')
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        with pytest.raises(OperationalError):
            database.connect()


def test_an_sqlite_directory_that_cannot_be_made_ends_in_one_line(tmp_path):
    (tmp_path / 'a-file').write_text('')
    env = dict(os.environ, JOBS_DATA_DIR=str(tmp_path / 'a-file' / 'var'))
    env.pop('DATABASE_URL')
    result = run_jobs_cli('db', 'status', env=env, timeout=60)
    assert result.returncode == 1, result.stderr
    assert result.stderr == (
        f'Error: Cannot reach the database at sqlite:///{tmp_path}/a-file/var/rqjobs.db: cannot '
        f'create {tmp_path}/a-file/var (Not a directory); set JOBS_DATA_DIR or DATABASE_URL to a '
        f'place you can write, for example JOBS_DATA_DIR=$HOME/.local/share/rqjobs.\n'
    )
