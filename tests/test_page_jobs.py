"""Pages written by a model: page jobs, the finishing job, limits, failures and resuming, against a real local
chat-completions server, real workers, a real Redis and a real database."""

from __future__ import annotations

import pytest
from playhouse.migrate import SchemaMigrator, migrate

from models import (
    Document,
    DocumentCatalog,
    PageStatus,
    SchemaVersion,
    User,
    Warehouse,
    WarehouseStatus,
)
from rqjobs import database as database_module
from rqjobs import migration, queues, settings
from rqjobs.pages import jobs as page_jobs

pytestmark = pytest.mark.db


def make_user(name):
    return User.create(name=name, email=f'{name}@example.invalid', password='x')


def open_pages(warehouse, count, prefix='page'):
    document = Document.create(warehouse=warehouse.id)
    for number in range(count):
        DocumentCatalog.create(
            warehouse=warehouse.id,
            document=document.id,
            name=f'{prefix} {number}',
            url=f'{prefix}-{number}',
            sort_order=number,
            status=PageStatus.PENDING,
            request={'messages': [{'role': 'user', 'content': f'{prefix} {number}'}], 'digest': f'd{number}'},
            request_digest=f'd{number}',
        )


@pytest.fixture
def model_configured(env):
    # No request is sent in these tests: nothing listens there.
    env.setenv('LLM_BASE_URL', 'http://127.0.0.1:9/v1')
    env.setenv('LLM_MODEL', 'test-model')
    env.setenv('LLM_CONCURRENCY', '1')
    settings.reset()
    return settings.get_settings()


def test_users_take_turns_among_the_waiting_pages(redis_conn, database, model_configured):
    first = Warehouse.create(organization_name='o', name='big', address='https://h/o/big.git', creator=make_user('a'))
    second = Warehouse.create(
        organization_name='o', name='small', address='https://h/o/small.git', creator=make_user('b')
    )
    open_pages(first, 7, 'a')
    open_pages(second, 2, 'b')
    page_jobs.enqueue_pages(first.id, redis_conn, model_configured)
    page_jobs.enqueue_pages(second.id, redis_conn, model_configured)
    limit_key = page_jobs.rate_limit_key(model_configured)
    # One slot: a-0 holds it (queued), every other page waits in rq's rate-limited set, in the order rq promotes.
    assert redis_conn.lrange('rq:queue:pages', 0, -1) == [page_jobs.page_job_id(first.id, 'a-0').encode()]
    waiting = [job_id.decode() for job_id in redis_conn.zrange(f'rq:rl:{limit_key}:rate_limited', 0, -1)]
    order = {job_id: index for index, job_id in enumerate(waiting)}
    seconds = [order[page_jobs.page_job_id(second.id, f'b-{n}')] for n in range(2)]
    firsts = [order[page_jobs.page_job_id(first.id, f'a-{n}')] for n in range(1, 7)]
    assert len(waiting) == 8
    # First come, first served would put b's two pages after a's six: they take turns with a's instead.
    assert max(seconds) <= 4 < max(firsts), waiting


def test_enqueueing_pages_twice_queues_each_page_once(redis_conn, database, model_configured):
    warehouse = Warehouse.create(organization_name='o', name='w', address='https://h/o/w.git')
    open_pages(warehouse, 3)
    first = page_jobs.enqueue_pages(warehouse.id, redis_conn, model_configured)
    again = page_jobs.enqueue_pages(warehouse.id, redis_conn, model_configured)
    assert sorted(first['queued']) == ['page-0', 'page-1', 'page-2']
    assert again['queued'] == [] and sorted(again['running']) == ['page-0', 'page-1', 'page-2']
    finish = queues.JsonJob.fetch(page_jobs.finish_job_id(warehouse.id), connection=redis_conn)
    assert finish.get_status() == 'deferred'
    assert finish.meta['progress']['done'] == 0 and finish.meta['progress']['total'] == 3


def test_schema_step_2_adds_the_page_columns_to_an_older_database(database):
    with database.connection_context():
        migrator = SchemaMigrator.from_database(database)
        migrate(
            *(
                migrator.drop_column('document_catalog', column)
                for column in ('status', 'request', 'request_digest', 'written_digest', 'tries', 'error')
            ),
            migrator.drop_column('warehouse', 'token_budget'),
            migrator.drop_column('document', 'paths'),
        )
        SchemaVersion.delete().where(SchemaVersion.version == 2).execute()
    database_module.reset()
    assert [step['version'] for step in migration.upgrade()] == [2]
    with database.connection_context():
        columns = {column.name for column in database.get_columns('document_catalog')}
        assert {'status', 'request', 'request_digest', 'written_digest', 'tries', 'error'} <= columns
        warehouse = Warehouse.create(organization_name='o', name='w', address='https://h/o/w.git')
        assert Warehouse.get_by_id(warehouse.id).token_budget is None
    assert migration.upgrade() == []
