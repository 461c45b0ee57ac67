import json
from datetime import timedelta

import pytest
from click.testing import CliRunner
from rq.job import JobStatus

import cli
from helpers import commit_files, git, redis_contents, run_jobs_cli, wait_until
from models import (
    Document,
    DocumentCatalog,
    DocumentCommitRecord,
    DocumentFileItem,
    DocumentFileItemSource,
    DocumentOverview,
    MiniMap,
    User,
    Warehouse,
    WarehouseStatus,
)
from rqjobs import clock, minimap, queues, settings
from rqjobs import warehouse as warehouses
from rqjobs.exceptions import InvalidRepositoryAddress, InvalidSubmission, SecretKeyMissing, WarehouseNotFound
from rqjobs.repository.storage import TRASH_DIR

pytestmark = pytest.mark.db


def fetch(warehouse_id):
    return Warehouse.get_by_id(warehouse_id)


def job_of(redis_conn, warehouse_id):
    return queues.JsonJob.fetch(warehouses.process_job_id(warehouse_id), connection=redis_conn)


def documents_of(warehouse_id):
    return {
        'catalog': DocumentCatalog.select().where(DocumentCatalog.warehouse == warehouse_id).count(),
        'pages': DocumentFileItem.select()
        .join(DocumentCatalog)
        .where(DocumentCatalog.warehouse == warehouse_id)
        .count(),
        'overviews': DocumentOverview.select().join(Document).where(Document.warehouse == warehouse_id).count(),
        'documents': Document.select().where(Document.warehouse == warehouse_id).count(),
        'minimaps': MiniMap.select().where(MiniMap.warehouse == warehouse_id).count(),
        'commits': DocumentCommitRecord.select().where(DocumentCommitRecord.warehouse == warehouse_id).count(),
    }


def make_user(name='alice'):
    return User.create(name=name, email=f'{name}@example.invalid', password='x')


# ---- Submitting ----


def test_submit_normalises_the_address(redis_conn, database):
    row = warehouses.submit_warehouse('https://github.com/OpenOrg/My-Repo/', connection=redis_conn)
    assert (row.organization_name, row.name, row.address) == (
        'openorg',
        'my-repo',
        'https://github.com/OpenOrg/My-Repo.git',
    )
    assert fetch(row.id).status == WarehouseStatus.PENDING
    job = job_of(redis_conn, row.id)
    assert job.args == [row.id] and job.origin == 'warehouse'


def test_submissions_can_be_disabled(redis_conn, database, env):
    env.setenv('ENABLE_WAREHOUSE_COMMIT', 'false')
    settings.reset()
    with pytest.raises(InvalidSubmission, match='ENABLE_WAREHOUSE_COMMIT=false'):
        warehouses.submit_warehouse('https://github.com/a/b', connection=redis_conn)
    assert Warehouse.select().count() == 0


LONG = 'x' * 192


@pytest.mark.parametrize(
    'address, options, field',
    [
        (f'https://github.com/{LONG}/repo', {}, 'organization name'),
        (f'https://github.com/org/{LONG}', {}, 'name'),
        ('https://github.com/org/repo', {'git_user_name': LONG}, 'git user name'),
        ('https://github.com/org/repo', {'branch': LONG}, 'branch'),
    ],
)
def test_values_longer_than_their_column_are_refused_on_every_database(redis_conn, database, address, options, field):
    with pytest.raises(InvalidSubmission, match=f'^The {field} is 192 characters long; at most 191 are allowed'):
        warehouses.submit_warehouse(address, connection=redis_conn, **options)
    assert Warehouse.select().count() == 0
    at_limit = warehouses.submit_warehouse('https://github.com/org/' + 'y' * 191, connection=redis_conn)
    assert len(fetch(at_limit.id).name) == 191


def test_warehouse_add_refuses_a_long_name_in_one_line(redis_conn, database):
    result = CliRunner().invoke(cli.main, ['warehouse', 'add', 'https://github.com/org/' + 'x' * 300])
    assert result.exit_code == 2, result.output
    assert 'The name is 300 characters long; at most 191 are allowed.' in result.stderr
    assert 'Traceback' not in result.output and Warehouse.select().count() == 0


@pytest.mark.parametrize('bad_id', ['bad id/..', '../x', 'a_b', 'caf\u00e9'])
def test_a_row_whose_id_names_no_job_or_clone_holds_back_no_other(redis_conn, database, caplog, bad_id):
    old = clock.utcnow() - timedelta(days=30)

    def rows(status):
        bad = Warehouse.create(
            id=bad_id, organization_name='o', name='bad', address='https://github.com/o/bad.git', status=status
        )
        good = Warehouse.create(
            organization_name='o', name='good', address='https://github.com/o/good.git', status=status
        )
        for row in (bad, good):
            Document.create(warehouse=row, last_update=old)
        Warehouse.update(updated_at=old).execute()
        return bad, good

    bad, good = rows(WarehouseStatus.PENDING)
    assert warehouses.dispatch_pending(redis_conn) == [good.id]
    assert job_of(redis_conn, good.id).args == [good.id]
    assert f'warehouse {bad_id!r}: id cannot name a job or a clone' in caplog.text
    Warehouse.delete().execute()

    bad, good = rows(WarehouseStatus.COMPLETED)
    assert warehouses.schedule_warehouse_updates()['warehouse_ids'] == [good.id]
    Warehouse.delete().execute()

    bad, good = rows(WarehouseStatus.FAILED)
    assert warehouses.cleanup_failed_warehouses()['warehouse_ids'] == [good.id]
    assert fetch(good.id).is_deleted and not fetch(bad_id).is_deleted


@pytest.mark.parametrize(
    'address',
    [
        'ext::sh -c touch% /tmp/x',
        'file:///etc',
        '/tmp/repo',
        '-uhttps://x/y/z',
        'http://github.com/a/b',
        'https://github.com/a/../b',
        'https://github.com/a',
    ],
)
def test_bad_addresses_are_refused_before_anything_is_stored(redis_conn, database, address):
    with pytest.raises(InvalidRepositoryAddress):
        warehouses.submit_warehouse(address, connection=redis_conn)
    assert Warehouse.select().count() == 0
    assert redis_conn.llen('rq:queue:warehouse') == 0


def test_bad_branch_and_unknown_user_are_refused(redis_conn, database):
    with pytest.raises(InvalidSubmission, match='Branch name .* is refused'):
        warehouses.submit_warehouse('https://github.com/a/b', branch='-x', connection=redis_conn)
    with pytest.raises(InvalidSubmission, match='does not exist'):
        warehouses.submit_warehouse('https://github.com/a/b', user_id='nobody', connection=redis_conn)
    assert Warehouse.select().count() == 0


@pytest.mark.parametrize('action', [warehouses.get_warehouse, warehouses.reprocess, warehouses.remove])
def test_an_unknown_warehouse_is_not_found_rather_than_a_refused_submission(redis_conn, database, action):
    arguments = ('nope',) if action is warehouses.get_warehouse else ('nope', redis_conn)
    with pytest.raises(WarehouseNotFound, match='^Warehouse nope does not exist') as excinfo:
        action(*arguments)
    assert not isinstance(excinfo.value, InvalidSubmission)


@pytest.mark.parametrize('command', ['show', 'reprocess', 'remove'])
def test_cli_says_an_unknown_warehouse_does_not_exist_with_a_usage_exit(redis_conn, database, command):
    result = CliRunner().invoke(cli.main, ['--quiet', 'warehouse', command, 'nope'])
    assert (result.exit_code, result.output.splitlines()[-1]) == (
        2,
        'Error: Warehouse nope does not exist (or was removed); `rqjobs warehouse list` shows the ids.',
    )


def test_duplicates_follow_the_original_rules(redis_conn, database):
    first = warehouses.submit_warehouse('https://github.com/a/b', connection=redis_conn)
    with pytest.raises(InvalidSubmission, match='already queued'):
        warehouses.submit_warehouse('https://github.com/A/B.git', connection=redis_conn)
    Warehouse.update(status=WarehouseStatus.COMPLETED).where(Warehouse.id == first.id).execute()
    with pytest.raises(InvalidSubmission, match='already exists'):
        warehouses.submit_warehouse('https://github.com/a/b/', connection=redis_conn)
    # Another branch is another warehouse.
    warehouses.submit_warehouse('https://github.com/a/b', branch='dev', connection=redis_conn)
    Warehouse.update(status=WarehouseStatus.FAILED).where(Warehouse.id == first.id).execute()
    again = warehouses.submit_warehouse('https://github.com/a/b', connection=redis_conn)
    assert again.id != first.id and fetch(again.id).status == WarehouseStatus.PENDING
    assert fetch(first.id).is_deleted


def test_credentials_are_split_encrypted_and_kept_out_of_redis(redis_conn, database, env):
    address = 'https://bob:ghp_S3cretToken@github.com/a/private'
    with pytest.raises(SecretKeyMissing, match='JOBS_SECRET_KEY'):
        warehouses.submit_warehouse(address, connection=redis_conn)
    env.setenv('JOBS_SECRET_KEY', 'k' * 32)
    settings.reset()
    row = fetch(warehouses.submit_warehouse(address, connection=redis_conn).id)
    assert row.address == 'https://github.com/a/private.git'
    assert row.git_user_name == 'bob'
    assert 'ghp_S3cretToken' not in row.git_password
    stored = redis_contents(redis_conn)
    assert row.id.encode() in stored, 'the search must see job payloads'
    assert b'ghp_S3cretToken' not in stored


def test_per_user_limit_keeps_the_rest_pending(redis_conn, database, env):
    env.setenv('TASK_MAX_SIZE_PER_USER', '2')
    settings.reset()
    alice, bob = make_user('alice'), make_user('bob')
    rows = [
        warehouses.submit_warehouse(f'https://github.com/a/r{i}', user_id=alice.id, connection=redis_conn)
        for i in range(4)
    ]
    bobs = warehouses.submit_warehouse('https://github.com/b/r', user_id=bob.id, connection=redis_conn)
    for _ in range(5):
        assert warehouses.schedule_warehouse_processing()['enqueued'] == 0
    live = queues.live_job_ids(redis_conn, [warehouses.process_job_id(r.id) for r in rows + [bobs]])
    assert live == {warehouses.process_job_id(r.id) for r in rows[:2] + [bobs]}
    assert redis_conn.llen('rq:queue:warehouse') == 3


# ---- Processing ----


def test_process_documents_a_real_repository(redis_conn, database, local, sample_repo, burst_worker):
    row = warehouses.submit_warehouse(str(sample_repo), connection=redis_conn)
    burst_worker('warehouse')
    job = job_of(redis_conn, row.id)
    assert job.get_status() == JobStatus.FINISHED
    result = job.return_value()
    warehouse = fetch(row.id)
    assert warehouse.status == WarehouseStatus.COMPLETED, warehouse.error
    assert warehouse.version == git(sample_repo, 'rev-parse', 'HEAD') == result['version']
    assert (warehouse.organization_name, warehouse.name) == ('upstream', 'sample')
    assert 'Sample is a small tool' in warehouse.readme
    assert warehouse.classify == 'CLITools'
    assert job.meta['progress']['step'] == 'done' and job.meta['progress']['percent'] == 100
    assert set(result['timings']) >= {'clone', 'analyse', 'document', 'store', 'total'}

    counts = documents_of(row.id)
    assert counts == {
        'catalog': result['pages'],
        'pages': result['pages'],
        'overviews': 1,
        'documents': 1,
        'minimaps': 1,
        'commits': 3,
    }
    urls = {c.url for c in DocumentCatalog.select().where(DocumentCatalog.warehouse == row.id)}
    assert {'overview', 'getting-started', 'structure', 'components'} <= urls
    started = warehouses.page_content(row.id, 'getting-started')
    assert 'pip install sample' in started
    sources = {s.address for s in DocumentFileItemSource.select()}
    assert 'sample/core.py' in sources and 'README.md' in sources
    assert 'outside-link' not in sources and 'vendor/lib' not in sources
    pages = ''.join(item.content for item in DocumentFileItem.select())
    assert 'root:x:0:0' not in pages, 'the symlink to /etc/passwd was followed'
    assert 'def greet(self, name: str = ' in pages

    tree = minimap.stored_tree(row.id)
    assert tree['title'] == 'upstream/sample' and tree['url'] == ''
    titles = json.dumps(tree)
    assert 'sample/core.py' in titles and 'class Greeter' in titles


def test_process_twice_leaves_one_set_of_documents(redis_conn, database, local, sample_repo, burst_worker):
    row = warehouses.submit_warehouse(str(sample_repo), connection=redis_conn)
    burst_worker('warehouse')
    first = documents_of(row.id)
    # A retry of a finished job (the job ran twice) finds nothing to do; a reprocess writes the same set again.
    assert warehouses.process_warehouse(row.id)['status'] == 'skipped'
    warehouses.reprocess(row.id, redis_conn)
    burst_worker('warehouse')
    assert fetch(row.id).status == WarehouseStatus.COMPLETED
    assert documents_of(row.id) == first


def test_scheduling_many_times_never_makes_two_live_jobs(redis_conn, database, local, sample_repo):
    row = warehouses.submit_warehouse(str(sample_repo), connection=redis_conn)
    for _ in range(10):
        warehouses.schedule_warehouse_processing()
    assert redis_conn.lrange('rq:queue:warehouse', 0, -1) == [warehouses.process_job_id(row.id).encode()]


def test_a_crashed_processing_warehouse_is_enqueued_again(redis_conn, database, local, sample_repo):
    row = warehouses.submit_warehouse(str(sample_repo), connection=redis_conn)
    # The worker died and its job vanished; the warehouse still says Processing.
    redis_conn.flushall()
    Warehouse.update(status=WarehouseStatus.PROCESSING).where(Warehouse.id == row.id).execute()
    assert warehouses.schedule_warehouse_processing()['warehouse_ids'] == [row.id]
    assert warehouses.schedule_warehouse_processing()['enqueued'] == 0


def test_a_repository_that_disappears_fails_clearly_without_retry(
    redis_conn, database, local, sample_repo, burst_worker
):
    row = warehouses.submit_warehouse(str(sample_repo), connection=redis_conn)
    moved = sample_repo.with_name('moved-away')
    sample_repo.rename(moved)
    burst_worker('warehouse')
    job = job_of(redis_conn, row.id)
    assert job.get_status() == JobStatus.FAILED
    warehouse = fetch(row.id)
    assert warehouse.status == WarehouseStatus.FAILED
    assert str(sample_repo) in warehouse.error or 'not found' in warehouse.error.lower()


def test_a_clone_over_the_size_cap_fails_and_leaves_nothing(
    redis_conn, database, local, sample_repo, env, burst_worker
):
    commit_files(sample_repo, {'blob.bin': bytes(range(256)) * 8192 * 3}, 'Add 6 MB')
    env.setenv('GIT_MAX_REPO_SIZE', '1')
    settings.reset()
    row = warehouses.submit_warehouse(str(sample_repo), connection=redis_conn)
    burst_worker('warehouse')
    warehouse = fetch(row.id)
    assert warehouse.status == WarehouseStatus.FAILED
    assert 'GIT_MAX_REPO_SIZE' in warehouse.error or 'size' in warehouse.error.lower()
    assert not (settings.get_settings().repo_root / row.id).exists()
    assert documents_of(row.id)['catalog'] == 0


def test_a_clone_of_too_many_files_fails_and_its_files_go(redis_conn, database, local, sample_repo, env, burst_worker):
    for index in range(3000):
        (sample_repo / 'many' / f'd{index // 100}').mkdir(parents=True, exist_ok=True)
        (sample_repo / 'many' / f'd{index // 100}' / f'f{index}.txt').write_text(f'{index}\n')
    git(sample_repo, 'add', 'many')
    git(sample_repo, 'commit', '-q', '-m', 'Add 3,000 small files')
    env.setenv('GIT_MAX_REPO_FILES', '1000')
    settings.reset()
    row = warehouses.submit_warehouse(str(sample_repo), connection=redis_conn)
    burst_worker('warehouse')
    warehouse = fetch(row.id)
    assert warehouse.status == WarehouseStatus.FAILED
    assert 'GIT_MAX_REPO_FILES (1000 files)' in warehouse.error
    root = settings.get_settings().repo_root
    assert sorted(path.name for path in root.iterdir()) == [TRASH_DIR]
    # Deleted by a process of its own, which the work horse did not wait for: nothing to join, so watch the trash.
    wait_until(lambda: not any((root / TRASH_DIR).iterdir()), 60, 'the trash was emptied')


def test_a_crash_while_storing_keeps_the_last_good_documentation(
    redis_conn, database, local, sample_repo, burst_worker, monkeypatch
):
    row = warehouses.submit_warehouse(str(sample_repo), connection=redis_conn)
    burst_worker('warehouse')
    before = {item.id: item.content for item in DocumentFileItem.select()}
    commit_files(
        sample_repo,
        {'sample/core.py': 'def changed() -> None:\n    pass\n', 'sample/extra.py': 'X = 1\n'},
        'Rewrite core',
    )
    Document.update(last_update=clock.utcnow() - timedelta(days=30)).execute()

    from rqjobs.repository import documentation

    original = documentation.render

    def failing(page, context):
        if page.key.startswith('components/'):
            raise RuntimeError('disk full')
        return original(page, context)

    monkeypatch.setattr(documentation, 'render', failing)
    with pytest.raises(RuntimeError, match='disk full'):
        warehouses.process_warehouse_update(row.id)
    assert {item.id: item.content for item in DocumentFileItem.select()} == before
    assert fetch(row.id).status == WarehouseStatus.COMPLETED


# ---- Updates ----


def completed(redis_conn, sample_repo, burst_worker):
    row = warehouses.submit_warehouse(str(sample_repo), connection=redis_conn)
    burst_worker('warehouse')
    assert fetch(row.id).status == WarehouseStatus.COMPLETED
    return row


def page_versions(warehouse_id):
    return {
        c.url: item.id
        for c in DocumentCatalog.select().where(DocumentCatalog.warehouse == warehouse_id)
        for item in c.file_items
    }


def test_update_without_new_commits_only_moves_the_timestamp(redis_conn, database, local, sample_repo, burst_worker):
    row = completed(redis_conn, sample_repo, burst_worker)
    before = page_versions(row.id)
    old = Document.get(Document.warehouse == row.id).last_update
    result = warehouses.process_warehouse_update(row.id)
    assert result['status'] == 'unchanged'
    assert page_versions(row.id) == before
    assert Document.get(Document.warehouse == row.id).last_update > old


def test_update_regenerates_only_the_pages_whose_sources_changed(
    redis_conn, database, local, sample_repo, burst_worker
):
    row = completed(redis_conn, sample_repo, burst_worker)
    before = page_versions(row.id)
    head = commit_files(
        sample_repo, {'web/app.js': 'export function render(items) {\n  return items;\n}\n'}, 'Simplify render'
    )
    result = warehouses.process_warehouse_update(row.id)
    assert result['status'] == 'updated' and result['version'] == head
    after = page_versions(row.id)
    rewritten = {url for url in after if after[url] != before.get(url)}
    web_page = next(c.url for c in DocumentCatalog.select() if 'web/app.js' in (c.dependent_file or []))
    assert rewritten == {web_page}
    assert result['minimap'] is False
    assert fetch(row.id).version == head
    assert DocumentCommitRecord.select().where(DocumentCommitRecord.warehouse == row.id).count() == 4


def test_update_with_a_new_file_rewrites_the_structure_pages(redis_conn, database, local, sample_repo, burst_worker):
    row = completed(redis_conn, sample_repo, burst_worker)
    before = page_versions(row.id)
    commit_files(sample_repo, {'sample/extra.py': 'def extra() -> int:\n    return 1\n'}, 'Add extra')
    result = warehouses.process_warehouse_update(row.id)
    after = page_versions(row.id)
    rewritten = {url for url in after if after[url] != before.get(url)}
    assert {'overview', 'structure', 'components'} <= rewritten
    assert 'getting-started' not in rewritten
    assert result['minimap'] is True
    assert 'sample/extra.py' in json.dumps(minimap.stored_tree(row.id))


def test_a_force_push_regenerates_everything(redis_conn, database, local, sample_repo, burst_worker):
    row = completed(redis_conn, sample_repo, burst_worker)
    before = page_versions(row.id)
    git(sample_repo, 'reset', '-q', '--hard', 'HEAD~2')
    head = commit_files(sample_repo, {'NEW.md': '# New history\n'}, 'Rewrite history')
    result = warehouses.process_warehouse_update(row.id)
    assert result['version'] == head and result['changed_files'] is None
    after = page_versions(row.id)
    assert not set(after.values()) & set(before.values())


def test_schedule_updates_enqueues_each_due_warehouse_once(redis_conn, database, local, sample_repo, burst_worker):
    row = completed(redis_conn, sample_repo, burst_worker)
    assert warehouses.schedule_warehouse_updates()['enqueued'] == 0
    Document.update(last_update=clock.utcnow() - timedelta(days=8)).execute()
    assert warehouses.schedule_warehouse_updates()['warehouse_ids'] == [row.id]
    assert warehouses.schedule_warehouse_updates()['enqueued'] == 0
    burst_worker('warehouse')
    job = queues.JsonJob.fetch(warehouses.update_job_id(row.id), connection=redis_conn)
    assert job.return_value()['status'] == 'unchanged'
    assert warehouses.schedule_warehouse_updates()['enqueued'] == 0


def test_missing_or_deleted_warehouses_are_a_normal_outcome(redis_conn, database):
    assert warehouses.process_warehouse('no-such-id')['status'] == 'missing'
    assert warehouses.process_warehouse_update('no-such-id')['status'] == 'missing'
    row = warehouses.submit_warehouse('https://github.com/a/deleted', connection=redis_conn)
    warehouses.remove(row.id, redis_conn)
    assert warehouses.process_warehouse(row.id)['status'] == 'missing'
    assert warehouses.process_warehouse_update(row.id)['status'] == 'missing'


# ---- Cleanup ----


def test_cleanup_removes_warehouses_failed_for_a_day(redis_conn, database, local, sample_repo, monkeypatch):
    row = warehouses.submit_warehouse(str(sample_repo), connection=redis_conn)
    recent = warehouses.submit_warehouse('https://github.com/a/recent', connection=redis_conn)
    clone = settings.get_settings().repo_root / row.id
    clone.mkdir(parents=True)
    (clone / 'file').write_text('x')
    now = clock.utcnow()
    Warehouse.update(status=WarehouseStatus.FAILED, updated_at=now - timedelta(hours=25)).where(
        Warehouse.id == row.id
    ).execute()
    Warehouse.update(status=WarehouseStatus.FAILED, updated_at=now - timedelta(hours=1)).where(
        Warehouse.id == recent.id
    ).execute()
    assert warehouses.cleanup_failed_warehouses()['warehouse_ids'] == [row.id]
    assert warehouses.cleanup_failed_warehouses()['removed'] == 0
    assert fetch(row.id).is_deleted and not clone.exists()
    assert not fetch(recent.id).is_deleted


# ---- Command line ----


def test_cli_add_list_show_reprocess_remove(redis_conn, database, local, sample_repo, burst_worker):
    runner = CliRunner()
    added = runner.invoke(cli.main, ['warehouse', 'add', str(sample_repo), '--json'])
    assert added.exit_code == 0, added.output
    warehouse_id = json.loads(added.output[added.output.index('{') :])['id']
    burst_worker('warehouse')
    listed = runner.invoke(cli.main, ['warehouse', 'list', '--status', 'Completed'])
    assert listed.exit_code == 0 and warehouse_id in listed.output
    shown = runner.invoke(cli.main, ['warehouse', 'show', warehouse_id])
    assert shown.exit_code == 0
    assert 'Completed' in shown.output and 'Getting started' in shown.output
    assert 'done 100%' in shown.output
    assert f'job:           {warehouses.process_job_id(warehouse_id)} finished ' in shown.output
    again = runner.invoke(cli.main, ['warehouse', 'reprocess', warehouse_id])
    assert again.exit_code == 0 and 'Pending' in again.output
    busy = runner.invoke(cli.main, ['warehouse', 'reprocess', warehouse_id])
    assert busy.exit_code == 2 and 'already queued or running' in busy.output
    removed = runner.invoke(cli.main, ['warehouse', 'remove', warehouse_id])
    assert removed.exit_code == 0
    assert redis_conn.llen('rq:queue:warehouse') == 0
    gone = runner.invoke(cli.main, ['warehouse', 'show', warehouse_id])
    assert gone.exit_code == 2 and 'does not exist' in gone.output


def test_cli_refuses_bad_input(redis_conn, database, env):
    runner = CliRunner()
    result = runner.invoke(cli.main, ['warehouse', 'add', 'ext::sh -c id'])
    assert result.exit_code == 2 and '::' in result.output
    result = runner.invoke(cli.main, ['warehouse', 'add', 'https://github.com/a/b', '--token-env', 'NOT_SET_VAR'])
    assert result.exit_code == 2 and 'NOT_SET_VAR' in result.output
    result = runner.invoke(cli.main, ['warehouse', 'list', '--limit', '0'])
    assert result.exit_code == 2
    result = runner.invoke(cli.main, ['warehouse', 'reprocess', 'nope'])
    assert result.exit_code == 2 and 'does not exist' in result.output
    assert Warehouse.select().count() == 0


@pytest.mark.parametrize(
    'address, meant',
    [
        ('https://[64:ff9b::a9fe:a9fe]/o/r.git', '64:ff9b::a9fe:a9fe'),  # NAT64 of the metadata service
        ('https://[2002:a9fe:a9fe::1]/o/r.git', '2002:a9fe:a9fe::1'),  # 6to4
        ('https://0251.0376.0251.0376/o/r.git', '169.254.169.254'),  # octal
        ('https://2852039166/o/r.git', '169.254.169.254'),  # one decimal number
    ],
)
def test_cli_refuses_an_internal_address_however_it_is_spelled(redis_conn, database, env, address, meant):
    result = CliRunner().invoke(cli.main, ['warehouse', 'add', address])
    assert result.exit_code == 2, result.output
    assert meant in result.output and 'not a public address' in result.output
    assert 'Traceback' not in result.output
    assert [line for line in result.output.splitlines() if meant in line][0].startswith('Error: Repository address')
    assert Warehouse.select().count() == 0 and redis_conn.llen('rq:queue:warehouse') == 0


def test_token_from_the_environment_never_reaches_argv_or_redis(redis_conn, database, env):
    env.setenv('JOBS_SECRET_KEY', 's' * 32)
    env.setenv('MY_TOKEN', 'tok_abcdef123456')
    settings.reset()
    result = CliRunner().invoke(
        cli.main, ['warehouse', 'add', 'https://github.com/a/b', '--git-user', 'bob', '--token-env', 'MY_TOKEN']
    )
    assert result.exit_code == 0, result.output
    row = Warehouse.get()
    assert row.git_user_name == 'bob' and row.git_password and 'tok_abcdef' not in row.git_password
    assert 'tok_abcdef' not in result.output
    assert b'tok_abcdef' not in redis_contents(redis_conn)


# ---- Local repositories: the setting must hold in the workers too ----


def registered_worker(redis_conn, env, allow_local: bool):
    """A worker on the warehouse queue, registered as a running one is, built with ALLOW_LOCAL_REPOSITORIES set so."""
    from rqjobs.worker import build_worker

    env.setenv('ALLOW_LOCAL_REPOSITORIES', 'true' if allow_local else 'false')
    settings.reset()
    worker = build_worker(redis_conn, ['warehouse'], settings=settings.get_settings())
    env.setenv('ALLOW_LOCAL_REPOSITORIES', 'true')
    settings.reset()
    worker.register_birth()
    return worker


def test_a_worker_without_allow_local_repositories_names_itself_in_the_error(
    redis_conn, database, local, sample_repo, env, burst_worker
):
    row = warehouses.submit_warehouse(str(sample_repo), connection=redis_conn)
    env.delenv('ALLOW_LOCAL_REPOSITORIES')
    settings.reset()
    burst_worker('warehouse')
    assert job_of(redis_conn, row.id).get_status() == JobStatus.FAILED
    warehouse = fetch(row.id)
    assert warehouse.status == WarehouseStatus.FAILED
    assert 'this worker runs without ALLOW_LOCAL_REPOSITORIES=true: set it for the worker processes too' in (
        warehouse.error
    )


def test_cli_add_refuses_a_local_path_that_the_workers_would_refuse(redis_conn, database, local, sample_repo, env):
    runner = CliRunner()
    refusing = registered_worker(redis_conn, env, allow_local=False)
    try:
        result = runner.invoke(cli.main, ['warehouse', 'add', str(sample_repo)])
    finally:
        refusing.register_death()
    assert result.exit_code == 2, result.output
    assert f'Local paths are turned off in the workers on queue warehouse ({refusing.name})' in result.stderr
    assert 'ALLOW_LOCAL_REPOSITORIES=true rqjobs worker' in result.stderr
    assert Warehouse.select().count() == 0
    accepting = registered_worker(redis_conn, env, allow_local=True)
    try:
        result = runner.invoke(cli.main, ['warehouse', 'add', str(sample_repo)])
    finally:
        accepting.register_death()
    assert result.exit_code == 0, result.output
    assert 'Warning' not in result.stderr and 'is Pending; queued.' in result.stdout


def test_cli_add_warns_when_no_worker_accepts_local_paths(redis_conn, database, local, sample_repo):
    result = CliRunner().invoke(cli.main, ['warehouse', 'add', str(sample_repo)])
    assert result.exit_code == 0, result.output
    assert (
        'Warning: No running worker on queue warehouse says it accepts local paths: start one with '
        'ALLOW_LOCAL_REPOSITORIES=true'
    ) in result.stderr
    assert 'is Pending; queued.' in result.stdout


def test_warehouse_add_against_a_full_redis_is_one_line_and_stores_nothing(full_redis, database):
    keys = full_redis.dbsize()
    result = run_jobs_cli('warehouse', 'add', 'https://github.com/org/repo')
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines()[-1].startswith(
        'Error: Redis is full (maxmemory reached, no eviction): the warehouse was not stored.'
    )
    assert 'Traceback' not in result.stderr
    assert full_redis.dbsize() == keys and Warehouse.select().count() == 0
