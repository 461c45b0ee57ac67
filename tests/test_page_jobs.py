"""Pages written by a model: page jobs, the finishing job, limits, failures and resuming, against a real local
chat-completions server, real workers, a real Redis and a real database."""

from __future__ import annotations

import gzip
import json
import logging
import time
from collections import Counter
from pathlib import Path

import pytest
from chat_server import Reply
from click.testing import CliRunner
from playhouse.migrate import SchemaMigrator, migrate

import cli
import models
from helpers import (
    API_KEY,
    by_page,
    commit_files,
    content_of,
    git,
    pages_of,
    planned,
    prompt_of,
    redis_contents,
    requests_per_page,
)
from models import (
    Document,
    DocumentCatalog,
    DocumentFileItem,
    PageStatus,
    SchemaVersion,
    User,
    Warehouse,
    WarehouseStatus,
)
from rqjobs import database as database_module
from rqjobs import migration, queues, settings
from rqjobs import warehouse as warehouses
from rqjobs.connections import get_redis
from rqjobs.pages import jobs as page_jobs
from rqjobs.worker import build_worker

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
    status = CliRunner().invoke(cli.main, ['-q', 'status', '--json'])
    assert status.exit_code == 0, status.output
    assert json.loads(status.output)['rate_limits'] == [
        {'rate_limit': limit_key, 'concurrency': 1, 'running': 1, 'waiting': 8}
    ]


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


# ---- Against a real chat-completions server and real workers ----


def drain(redis_conn, warehouse_id: str, timeout: float = 60, max_jobs: int | None = None) -> None:
    """Run burst workers on queue pages (retries included) until the warehouse's finishing job has ended."""
    connection = get_redis(shared=False)
    finish = page_jobs.finish_job_id(warehouse_id)
    deadline = time.monotonic() + timeout
    try:
        while True:
            worker = build_worker(connection, ['pages'])
            worker.work(burst=True, with_scheduler=True, logging_level='WARNING', max_jobs=max_jobs)
            if max_jobs is not None:
                return
            status = redis_conn.hget(queues.JsonJob.key_for(finish), 'status')
            if status in (b'finished', b'failed'):
                return
            assert time.monotonic() < deadline, f'the finishing job is still {status}'
            time.sleep(0.2)
    finally:
        connection.close()


def test_a_model_writes_every_page_once_and_the_warehouse_completes(
    redis_conn, database, chat, sample_repo, burst_worker
):
    warehouse_id = planned(redis_conn, sample_repo, burst_worker)
    planned_pages = pages_of(warehouse_id)
    assert {'overview', 'structure', 'changelog'} <= set(planned_pages)
    assert all(row.status == PageStatus.PENDING and row.request for row in planned_pages.values())
    drain(redis_conn, warehouse_id)

    warehouse = Warehouse.get_by_id(warehouse_id)
    assert warehouse.status == WarehouseStatus.COMPLETED and warehouse.error is None
    pages = pages_of(warehouse_id)
    assert all(row.status == PageStatus.COMPLETED for row in pages.values()), {k: r.error for k, r in pages.items()}
    assert all(row.written_digest == row.request_digest and row.tries == 1 for row in pages.values())
    counts = requests_per_page(chat, warehouse_id)
    assert counts == Counter(dict.fromkeys(pages, 1)), 'every page is sent exactly once'
    for row in pages.values():
        content = content_of(row)
        assert content and content.strip() and content.startswith('# ')
        assert '## Sources' in content
        assert row.tokens_in > 0 and row.tokens_out > 0
    item = DocumentFileItem.get(DocumentFileItem.catalog == pages['structure'].id)
    assert item.request_token == pages['structure'].tokens_in and item.metadata['model'] == 'test-model'
    assert item.metadata['cited'], 'the page cites a file of the repository'
    # The request holds the page's sources, read from the clone.
    assert 'def greet' in prompt_of(pages['components/sample']) or 'Greeter' in prompt_of(pages['components/sample'])
    finish = queues.JsonJob.fetch(page_jobs.finish_job_id(warehouse_id), connection=redis_conn)
    assert finish.meta['progress']['done'] == finish.meta['progress']['total'] == len(pages)
    assert finish.return_value()['status'] == WarehouseStatus.COMPLETED

    shown = CliRunner().invoke(cli.main, ['warehouse', 'show', warehouse_id])
    assert shown.exit_code == 0, shown.output
    assert 'pages:' in shown.output and 'Completed  overview  tries 1' in shown.output
    assert f'warehouse-pages-{warehouse_id} finished pages 100% ({len(pages)}/{len(pages)} pages)' in shown.output
    stats = CliRunner().invoke(cli.main, ['stats', 'show'])
    assert stats.exit_code == 0 and 'Model tokens:' in stats.output and 'upstream/sample' in stats.output


def test_failed_tries_are_retried_and_a_page_failing_them_all_is_failed_never_empty(
    redis_conn, database, chat, sample_repo, burst_worker
):
    warehouse_id = planned(redis_conn, sample_repo, burst_worker)
    page = by_page(warehouse_id)
    tries = Counter()
    unusable = [Reply.empty(), Reply.text('   \n\n  '), Reply.length()]

    def script(request):
        key = page(request)
        tries[key] += 1
        if key == 'structure':
            return Reply.error(500)
        if key == 'getting-started' and tries[key] <= len(unusable):
            return unusable[tries[key] - 1]
        return None

    chat.script = script
    drain(redis_conn, warehouse_id, timeout=90)

    pages = pages_of(warehouse_id)
    counts = requests_per_page(chat, warehouse_id)
    assert counts['structure'] == 1 + page_jobs.PAGE_RETRIES, 'no more requests than tries'
    assert pages['structure'].status == PageStatus.FAILED and 'HTTP 500' in pages['structure'].error
    assert content_of(pages['structure']) is None, 'a failed page is not stored empty'
    assert counts['getting-started'] == 4 and pages['getting-started'].status == PageStatus.COMPLETED
    assert 'The page stops in the middle of' not in content_of(pages['getting-started'])
    assert all(content_of(row) is None or content_of(row).strip() for row in pages.values())
    warehouse = Warehouse.get_by_id(warehouse_id)
    assert warehouse.status == WarehouseStatus.COMPLETED
    assert 'structure' in warehouse.error and f'regenerate {warehouse_id} --failed' in warehouse.error

    # Regenerating the failed pages sends only those.
    chat.script = None
    before = len(chat.chat_requests)
    result = CliRunner().invoke(cli.main, ['warehouse', 'regenerate', warehouse_id, '--failed'])
    assert result.exit_code == 0, result.output
    drain(redis_conn, warehouse_id)
    assert len(chat.chat_requests) == before + 1
    assert pages_of(warehouse_id)['structure'].status == PageStatus.COMPLETED
    assert Warehouse.get_by_id(warehouse_id).error is None


def test_a_429_waits_its_retry_after_without_using_up_a_try(redis_conn, database, chat, sample_repo, burst_worker):
    warehouse_id = planned(redis_conn, sample_repo, burst_worker)
    page = by_page(warehouse_id)
    limited = []

    def script(request):
        if page(request) == 'overview' and not limited:
            limited.append(time.monotonic())
            return Reply.rate_limited(retry_after=1)
        return None

    chat.script = script
    drain(redis_conn, warehouse_id)
    overview = pages_of(warehouse_id)['overview']
    assert overview.status == PageStatus.COMPLETED and overview.tries == 1
    sent = [r.received for r in chat.chat_requests if page(r) == 'overview']
    assert len(sent) == 2 and sent[1] - sent[0] >= 0.95


def test_a_refused_request_fails_the_page_at_once_with_the_providers_message(
    redis_conn, database, chat, sample_repo, burst_worker
):
    warehouse_id = planned(redis_conn, sample_repo, burst_worker)
    page = by_page(warehouse_id)
    message = "This model's maximum context length is 8192 tokens. However, your messages resulted in 9001 tokens."
    chat.script = lambda request: (
        Reply.error(400, message, code='context_length_exceeded') if page(request) == 'structure' else None
    )
    drain(redis_conn, warehouse_id)
    structure = pages_of(warehouse_id)['structure']
    assert requests_per_page(chat, warehouse_id)['structure'] == 1
    assert structure.status == PageStatus.FAILED and 'maximum context length is 8192 tokens' in structure.error


def test_a_warehouse_whose_pages_all_fail_is_failed(redis_conn, database, chat, sample_repo, burst_worker):
    warehouse_id = planned(redis_conn, sample_repo, burst_worker)
    chat.script = lambda request: Reply.error(404, 'The model `test-model` does not exist')
    drain(redis_conn, warehouse_id)
    warehouse = Warehouse.get_by_id(warehouse_id)
    assert warehouse.status == WarehouseStatus.FAILED
    assert 'no page could be written' in warehouse.error and 'does not exist' in warehouse.error
    assert len(chat.chat_requests) == len(pages_of(warehouse_id))


def test_a_spent_token_budget_skips_the_remaining_pages(redis_conn, database, chat, sample_repo, burst_worker, env):
    env.setenv('LLM_TOKEN_BUDGET', '10')
    env.setenv('LLM_CONCURRENCY', '1')
    settings.reset()
    warehouse_id = planned(redis_conn, sample_repo, burst_worker)
    drain(redis_conn, warehouse_id)
    pages = pages_of(warehouse_id)
    assert len(chat.chat_requests) == 1
    assert Counter(row.status for row in pages.values()) == {
        PageStatus.COMPLETED: 1,
        PageStatus.SKIPPED: len(pages) - 1,
    }
    warehouse = Warehouse.get_by_id(warehouse_id)
    assert warehouse.status == WarehouseStatus.COMPLETED and 'token budget' in warehouse.error


def test_pages_written_before_redis_lost_everything_are_not_sent_again(
    redis_conn, database, chat, sample_repo, burst_worker
):
    warehouse_id = planned(redis_conn, sample_repo, burst_worker)
    drain(redis_conn, warehouse_id, max_jobs=3)
    written = {key for key, row in pages_of(warehouse_id).items() if row.status == PageStatus.COMPLETED}
    assert len(written) == 3
    redis_conn.flushall()
    # The periodic dispatch finds the warehouse Processing with open pages and no live job: its pages go on.
    assert warehouses.schedule_warehouse_processing()['enqueued'] == 0
    assert redis_conn.exists(queues.JsonJob.key_for(page_jobs.finish_job_id(warehouse_id)))
    drain(redis_conn, warehouse_id)
    pages = pages_of(warehouse_id)
    assert all(row.status == PageStatus.COMPLETED for row in pages.values())
    assert requests_per_page(chat, warehouse_id) == Counter(dict.fromkeys(pages, 1))
    # Processing the warehouse again plans the same requests: nothing is sent.
    before = len(chat.chat_requests)
    warehouses.reprocess(warehouse_id, redis_conn)
    burst_worker('warehouse')
    drain(redis_conn, warehouse_id)
    assert len(chat.chat_requests) == before
    assert Warehouse.get_by_id(warehouse_id).status == WarehouseStatus.COMPLETED


def test_an_update_sends_only_the_pages_whose_sources_changed(redis_conn, database, chat, sample_repo, burst_worker):
    warehouse_id = planned(redis_conn, sample_repo, burst_worker)
    drain(redis_conn, warehouse_id)
    first = len(chat.chat_requests)
    commit_files(
        sample_repo, {'web/app.js': 'export function render(items) {\n  return items.join(";");\n}\n'}, 'Use ;'
    )
    queues.enqueue(
        'process_warehouse_update', [warehouse_id], job_id=warehouses.update_job_id(warehouse_id), connection=redis_conn
    )
    burst_worker('warehouse')
    drain(redis_conn, warehouse_id)
    sent = Counter(by_page(warehouse_id)(request) for request in chat.chat_requests[first:])
    assert 'changelog' in sent and 'components/web' in sent
    assert 'components/sample' not in sent, sent
    assert Warehouse.get_by_id(warehouse_id).status == WarehouseStatus.COMPLETED
    assert all(row.status == PageStatus.COMPLETED for row in pages_of(warehouse_id).values())


def test_the_api_key_is_sent_to_the_server_and_stored_nowhere(
    redis_conn, database, chat, sample_repo, burst_worker, caplog
):
    warehouse_id = planned(redis_conn, sample_repo, burst_worker)
    page = by_page(warehouse_id)
    # A server that quotes the key back in its error message, as some do.
    chat.script = lambda request: (
        Reply.error(401, f'Incorrect API key provided: {API_KEY}.') if page(request) == 'structure' else None
    )
    with caplog.at_level(logging.DEBUG):
        drain(redis_conn, warehouse_id)
    assert all(request.authorization == f'Bearer {API_KEY}' for request in chat.chat_requests)
    structure = pages_of(warehouse_id)['structure']
    assert structure.status == PageStatus.FAILED and 'Incorrect API key provided' in structure.error
    assert API_KEY not in redis_contents(redis_conn).decode('utf-8', 'replace')
    dumped = migration.backup_data()['path']
    assert API_KEY.encode() not in gzip.decompress(Path(dumped).read_bytes())
    for model in models.MODELS:
        for row in model.select().dicts():
            assert API_KEY not in repr(row), model
    assert API_KEY not in caplog.text
    assert API_KEY[-8:] not in caplog.text


def test_users_take_turns_with_a_cap_of_one_request(redis_conn, database, chat, sample_repo, burst_worker, env):
    env.setenv('LLM_CONCURRENCY', '1')
    settings.reset()
    first = warehouses.submit_warehouse(str(sample_repo), user_id=make_user('a').id, connection=redis_conn)
    burst_worker('warehouse')
    other = sample_repo.parent / 'other'
    git(sample_repo.parent, 'clone', '-q', str(sample_repo), str(other))
    second = warehouses.submit_warehouse(str(other), user_id=make_user('b').id, connection=redis_conn)
    burst_worker('warehouse')
    drain(redis_conn, first.id)
    drain(redis_conn, second.id)
    firsts, seconds = by_page(first.id), by_page(second.id)
    order = ['a' if firsts(r) else 'b' if seconds(r) else '?' for r in chat.chat_requests]
    assert chat.max_in_flight == 1
    # b's pages, queued after all of a's, are not all sent after them.
    assert order.index('b') < len(order) // 2, order


def catalog_request(request) -> bool:
    return '"pages": [' in request.prompt and 'Answer with JSON' in request.prompt


def test_a_catalog_the_model_proposes_is_used_when_valid(redis_conn, database, chat, sample_repo, burst_worker, env):
    env.setenv('LLM_CATALOG', 'model')
    settings.reset()
    proposal = {
        'pages': [
            {'title': 'Overview', 'slug': 'overview', 'description': 'What it is.', 'sources': ['README.md']},
            {
                'title': 'Greeting',
                'slug': 'greeting',
                'description': 'How people are greeted.',
                'sources': ['sample/core.py', 'sample/missing.py'],
                'children': [{'title': 'Command line', 'slug': 'cli', 'sources': ['sample/cli.py']}],
            },
        ]
    }
    chat.script = lambda request: Reply.text(json.dumps(proposal)) if catalog_request(request) else None
    warehouse_id = planned(redis_conn, sample_repo, burst_worker)
    assert set(pages_of(warehouse_id)) == {'overview', 'greeting', 'greeting/cli', 'changelog'}
    assert pages_of(warehouse_id)['greeting'].dependent_file == ['sample/core.py']
    drain(redis_conn, warehouse_id)
    assert Warehouse.get_by_id(warehouse_id).status == WarehouseStatus.COMPLETED
    job = queues.JsonJob.fetch(warehouses.process_job_id(warehouse_id), connection=redis_conn)
    assert job.return_value()['catalog'] == 'model'


def test_an_invalid_proposed_catalog_falls_back_to_the_deterministic_one(
    redis_conn, database, chat, sample_repo, burst_worker, env
):
    env.setenv('LLM_CATALOG', 'model')
    settings.reset()
    bad = {'pages': [{'title': 'Overview', 'slug': 'Over View!', 'sources': ['README.md']}]}
    chat.script = lambda request: Reply.text(json.dumps(bad)) if catalog_request(request) else None
    warehouse_id = planned(redis_conn, sample_repo, burst_worker)
    assert {'overview', 'structure', 'components', 'changelog'} <= set(pages_of(warehouse_id))
    job = queues.JsonJob.fetch(warehouses.process_job_id(warehouse_id), connection=redis_conn)
    assert job.return_value()['catalog'].startswith('deterministic, the proposal was refused: ')
    assert 'slug' in job.return_value()['catalog']


def test_a_reply_slower_than_the_timeout_is_a_failed_try(redis_conn, database, chat, sample_repo, burst_worker, env):
    env.setenv('LLM_TIMEOUT', '1')
    settings.reset()
    warehouse_id = planned(redis_conn, sample_repo, burst_worker)
    page = by_page(warehouse_id)
    slow = []

    def script(request):
        if page(request) == 'overview' and not slow:
            slow.append(request)
            return Reply.default(delay=3)
        return None

    chat.script = script
    drain(redis_conn, warehouse_id)
    overview = pages_of(warehouse_id)['overview']
    assert overview.status == PageStatus.COMPLETED and overview.tries == 2
    assert requests_per_page(chat, warehouse_id)['overview'] == 2


def test_regenerate_rewrites_one_page_and_names_the_pages_it_does_not_know(
    redis_conn, database, chat, sample_repo, burst_worker, env
):
    warehouse_id = planned(redis_conn, sample_repo, burst_worker)
    drain(redis_conn, warehouse_id)
    before = requests_per_page(chat, warehouse_id)
    result = CliRunner().invoke(cli.main, ['warehouse', 'regenerate', warehouse_id, '--page', 'overview'])
    assert result.exit_code == 0 and '1 page jobs queued' in result.output, result.output
    drain(redis_conn, warehouse_id)
    after = requests_per_page(chat, warehouse_id)
    assert after - before == Counter({'overview': 1})
    unknown = CliRunner().invoke(cli.main, ['warehouse', 'regenerate', warehouse_id, '--page', 'nope'])
    assert unknown.exit_code == 1 and "has no page 'nope'" in unknown.output and 'overview' in unknown.output
    env.delenv('LLM_BASE_URL')
    settings.reset()
    offline = CliRunner().invoke(cli.main, ['warehouse', 'regenerate', warehouse_id])
    assert offline.exit_code == 1 and 'LLM_BASE_URL' in offline.output and 'reprocess' in offline.output


def test_a_cancelled_or_deleted_page_job_does_not_hold_its_warehouse_for_ever(
    redis_conn, database, chat, sample_repo, burst_worker
):
    warehouse_id = planned(redis_conn, sample_repo, burst_worker)
    cancelled = page_jobs.page_job_id(warehouse_id, 'structure')
    finish = queues.JsonJob.key_for(page_jobs.finish_job_id(warehouse_id))
    assert CliRunner().invoke(cli.main, ['job', 'cancel', cancelled]).exit_code == 0
    drain(redis_conn, warehouse_id, max_jobs=50)
    # rq counts a cancelled dependency as never ending: the finishing job would wait for ever.
    assert redis_conn.hget(finish, 'status') == b'deferred'
    assert warehouses.schedule_warehouse_processing()['pages_resumed'] == [warehouse_id]
    drain(redis_conn, warehouse_id)
    pages = pages_of(warehouse_id)
    assert pages['structure'].status == PageStatus.FAILED and pages['structure'].error == 'its job was cancelled'
    assert requests_per_page(chat, warehouse_id)['structure'] == 0
    warehouse = Warehouse.get_by_id(warehouse_id)
    assert warehouse.status == WarehouseStatus.COMPLETED and 'structure' in warehouse.error

    # A page job deleted while it waits is lost, not meant: the periodic pass queues its page again.
    CliRunner().invoke(cli.main, ['warehouse', 'regenerate', warehouse_id, '--failed'])
    assert CliRunner().invoke(cli.main, ['job', 'delete', cancelled]).exit_code == 0
    assert redis_conn.hget(finish, 'status') == b'deferred'
    assert warehouses.schedule_warehouse_processing()['pages_resumed'] == [warehouse_id]
    drain(redis_conn, warehouse_id)
    assert pages_of(warehouse_id)['structure'].status == PageStatus.COMPLETED
    assert Warehouse.get_by_id(warehouse_id).error is None
