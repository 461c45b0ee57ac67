import json
import threading
from datetime import timedelta

import pytest
from click.testing import CliRunner

import cli
from models import MiniMap, Warehouse, WarehouseStatus
from rqjobs import clock, minimap
from rqjobs import warehouse as warehouses
from rqjobs.exceptions import PermanentJobError
from rqjobs.repository import storage
from rqjobs.repository.declarations import Declaration
from rqjobs.repository.results import Analysis, SourceFile


def tree(title='root', url='', nodes=None):
    return {'title': title, 'url': url, 'nodes': nodes or []}


# ---- Validation ----


def test_a_valid_tree_is_counted():
    value = tree(nodes=[tree('a', 'a', [tree('a1', 'a/1'), tree('a2', 'a/2', [tree('x', 'a/2/x')])]), tree('b', 'b')])
    assert minimap.check_tree(value) == {'valid': True, 'nodes': 6, 'edges': 5, 'depth': 4}
    assert minimap.check_tree(tree()) == {'valid': True, 'nodes': 1, 'edges': 0, 'depth': 1}


@pytest.mark.parametrize(
    'value, error',
    [
        ([], 'the root is not an object'),
        ({'title': 1, 'url': '', 'nodes': []}, 'title is not a string'),
        ({'title': 't', 'nodes': []}, 'url is not a string'),
        ({'title': 't', 'url': ''}, 'nodes is not a list'),
        (
            tree(nodes=[tree(), tree(), tree(nodes=[{'title': None, 'url': '', 'nodes': []}])]),
            'nodes[2].nodes[0].title is not a string',
        ),
        (tree(nodes=[tree(), 'leaf']), 'nodes[1] is not an object'),
        (tree(nodes=[dict(tree(), color='red')]), 'nodes[0] has unknown keys: color'),
        (tree(title='x' * 1001), 'title is longer than 1000 characters'),
    ],
)
def test_the_first_bad_path_is_named(value, error):
    result = minimap.check_tree(value)
    assert result == {'valid': False, 'error': error}


def test_cycles_depth_and_size_are_refused(monkeypatch):
    looped = tree()
    looped['nodes'].append(looped)
    assert 'reached twice' in minimap.check_tree(looped)['error']
    deep = tree()
    for _ in range(minimap.MAX_VALID_DEPTH):
        deep = tree(nodes=[deep])
    assert 'deeper than 64 levels' in minimap.check_tree(deep)['error']
    monkeypatch.setattr(minimap, 'MAX_VALID_NODES', 3)
    assert 'more than 3 nodes' in minimap.check_tree(tree(nodes=[tree(), tree(), tree()]))['error']


# ---- Building ----


def analysis_of(components: dict[str, int], declarations: int = 1) -> Analysis:
    """An analysis of components each holding `count` files in one directory, each file with `declarations`."""

    def outline():
        return [Declaration('function', f'f{index}', f'f{index}()', index + 1) for index in range(declarations)]

    files = [
        SourceFile(f'{name}/module{number:04}.py', 'python', 10, 1, outline())
        for name, count in components.items()
        for number in range(count)
    ]
    return Analysis(
        files=files,
        skipped={},
        languages=[],
        readme_path=None,
        readme='',
        tree='',
        classification='',
        components=[
            {'name': name, 'path': name, 'files': [f.path for f in files if f.path.startswith(name + '/')]}
            for name in components
        ],
        total_files=len(files),
        total_bytes=10 * len(files),
    )


def more_entries(tree: dict) -> str:
    last = tree['nodes'][-1]['title'] if tree['nodes'] else ''
    return last if last.startswith('…') else ''


def test_files_cut_by_the_per_directory_cap_are_counted():
    # 10 components of 100 files with one declaration each: 10 + 10 * 100 * 2 = 2,010 entries; forty files a
    # directory are shown (10 + 10 * 40 * 2 = 810 nodes), well within the budget, so 1,200 were left out.
    tree = minimap.build_tree('big', analysis_of({f'c{index}': 100 for index in range(10)}))
    assert minimap.count_nodes(tree) == 1 + 810 + 1
    assert more_entries(tree) == '… 1,200 more entries not shown'


def test_entries_cut_by_the_node_budget_are_counted():
    # 30 components of 40 files with one declaration each: 30 + 30 * 40 * 2 = 2,430 entries, of which 1,998 are
    # shown beside the root and the closing node.
    tree = minimap.build_tree('big', analysis_of({f'c{index:02}': 40 for index in range(30)}))
    assert minimap.count_nodes(tree) == minimap.MAX_NODES
    assert more_entries(tree) == '… 432 more entries not shown'


def test_declarations_cut_per_file_are_counted_and_a_full_map_says_nothing():
    assert more_entries(minimap.build_tree('small', analysis_of({'a': 3}, declarations=12))) == ''
    tree = minimap.build_tree('small', analysis_of({'a': 3}, declarations=13))
    assert more_entries(tree) == '… 3 more entries not shown'
    tree = minimap.build_tree('small', analysis_of({'a': 1}, declarations=13))
    assert more_entries(tree) == '… 1 more entry not shown'


# ---- Jobs on real warehouses ----


@pytest.fixture
def completed(redis_conn, database, local, sample_repo, burst_worker):
    """A Completed warehouse of the sample repository, documented by a real worker."""
    row = warehouses.submit_warehouse(str(sample_repo), connection=redis_conn)
    burst_worker('warehouse')
    assert Warehouse.get_by_id(row.id).status == WarehouseStatus.COMPLETED
    return row


@pytest.mark.db
def test_validate_a_stored_mind_map(completed):
    result = minimap.validate_minimap(completed.id)
    assert result['valid'] and result['status'] == 'valid' and result['nodes'] > 5
    assert result['edges'] == result['nodes'] - 1
    MiniMap.update(value={'title': 'x', 'url': '', 'nodes': [{'title': 3}]}).execute()
    assert minimap.validate_minimap(completed.id)['error'] == 'nodes[0].title is not a string'
    MiniMap._meta.database.execute_sql(f'UPDATE {MiniMap._meta.table_name} SET value = %s' % "'{oops'")
    result = minimap.validate_minimap(completed.id)
    assert result['status'] == 'invalid' and result['error'].startswith('not JSON')
    assert minimap.validate_minimap('no-such-id') == {
        'warehouse_id': 'no-such-id',
        'valid': False,
        'status': 'missing',
        'error': 'no mind map stored',
    }


@pytest.mark.db
def test_generate_fills_in_missing_mind_maps_once(completed, monkeypatch):
    MiniMap.delete().execute()
    first = minimap.generate_minimap()
    assert (first['processed'], first['errors']) == (1, 0)
    assert minimap.generate_minimap()['processed'] == 0
    assert MiniMap.select().count() == 1
    assert 'sample/core.py' in json.dumps(minimap.stored_tree(completed.id))


@pytest.mark.db
def test_generate_runs_concurrently_with_itself(completed):
    MiniMap.delete().execute()
    results = []
    threads = [threading.Thread(target=lambda: results.append(minimap.generate_minimap())) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert MiniMap.select().where(MiniMap.warehouse == completed.id).count() == 1
    assert sum(result['errors'] for result in results) == 0


@pytest.mark.db
def test_generate_is_bounded_and_counts_errors(completed, redis_conn, burst_worker, tmp_path, monkeypatch):
    from helpers import SAMPLE_FILES, commit_files, git

    other = tmp_path / 'upstream' / 'other'
    other.mkdir(parents=True)
    git(other, 'init', '-q')
    commit_files(other, SAMPLE_FILES, 'Initial')
    second = warehouses.submit_warehouse(str(other), connection=redis_conn)
    burst_worker('warehouse')
    MiniMap.delete().execute()
    # The second one lost its clone on this host and its upstream: it cannot be rebuilt.
    import shutil

    shutil.rmtree(other)
    shutil.rmtree(storage.clone_path(second.id))
    monkeypatch.setattr(minimap, 'MINIMAPS_PER_RUN', 1)
    assert minimap.generate_minimap()['warehouse_ids'] == [completed.id]
    failed = minimap.generate_minimap()
    assert (failed['processed'], failed['errors']) == (0, 1)
    assert failed['failures'][0]['warehouse_id'] == second.id


@pytest.mark.db
def test_a_missing_clone_is_fetched_again(completed):
    import shutil

    shutil.rmtree(storage.clone_path(completed.id))
    MiniMap.delete().execute()
    assert minimap.generate_minimap()['processed'] == 1


@pytest.mark.db
def test_regenerate_replaces_the_mind_map(completed):
    before = MiniMap.get(MiniMap.warehouse == completed.id)
    result = minimap.regenerate_minimap(completed.id)
    assert result['status'] == 'regenerated' and result['nodes'] > 5
    after = MiniMap.get(MiniMap.warehouse == completed.id)
    assert after.id != before.id and after.value == before.value
    assert MiniMap.select().count() == 1
    assert minimap.regenerate_minimap('no-such-id')['status'] == 'missing'
    Warehouse.update(status=WarehouseStatus.FAILED).execute()
    assert minimap.regenerate_minimap(completed.id)['status'] == 'skipped'


@pytest.mark.db
def test_cleanup_deletes_only_old_mind_maps(completed, monkeypatch):
    now = clock.utcnow()
    assert minimap.cleanup_old_minimaps(90)['deleted'] == 0
    MiniMap.update(created_at=now - timedelta(days=91)).execute()
    monkeypatch.setattr(clock, 'utcnow', lambda: now)
    result = minimap.cleanup_old_minimaps(90)
    assert result['deleted'] == 1 and result['cutoff'].startswith(str((now - timedelta(days=90)).date()))
    assert minimap.cleanup_old_minimaps(90)['deleted'] == 0


@pytest.mark.parametrize('days', [0, -1, 'x', True, 1.5])
def test_cleanup_refuses_bad_days(days):
    with pytest.raises(PermanentJobError, match='days_to_keep must be a whole number'):
        minimap.cleanup_old_minimaps(days)


@pytest.mark.db
def test_a_4000_file_repository_gets_at_most_2000_nodes(redis_conn, database, local, tmp_path, burst_worker):
    from helpers import git

    repo = tmp_path / 'upstream' / 'huge'
    for number in range(4000):
        # Twelve components (as many as the analysis keeps) of directories of forty files.
        source = repo / f'part{number // 334:02}' / f'pkg{number % 334 // 40}' / f'module{number % 40:02}.py'
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_text(f'def function{number}():\n    return {number}\n')
    git(repo, 'init', '-q')
    git(repo, 'add', '-A')
    git(repo, 'commit', '-q', '-m', 'Four thousand files')
    row = warehouses.submit_warehouse(str(repo), connection=redis_conn)
    burst_worker('warehouse')
    assert Warehouse.get_by_id(row.id).status == WarehouseStatus.COMPLETED
    stored = minimap.stored_tree(row.id)
    assert minimap.count_nodes(stored) == minimap.MAX_NODES == 2000
    # 12 components, 108 directories, 4,000 files and the 720 declarations outlined (60 files a component): 4,840
    # entries, of which 1,998 are shown.
    assert stored['nodes'][-1]['title'] == '… 2,842 more entries not shown'
    assert minimap.regenerate_minimap(row.id)['nodes'] == 2000


@pytest.mark.db
def test_cli_show_validate_regenerate(completed):
    runner = CliRunner()
    shown = runner.invoke(cli.main, ['minimap', 'show', completed.id])
    assert shown.exit_code == 0 and 'upstream/sample' in shown.output and '  sample' in shown.output
    as_json = runner.invoke(cli.main, ['minimap', 'show', completed.id, '--json'])
    assert json.loads(as_json.output)['title'] == 'upstream/sample'
    valid = runner.invoke(cli.main, ['minimap', 'validate', completed.id])
    assert valid.exit_code == 0 and valid.output.startswith('Valid: ')
    again = runner.invoke(cli.main, ['minimap', 'regenerate', completed.id])
    assert again.exit_code == 0 and 'regenerated' in again.output
    MiniMap.delete().execute()
    missing = runner.invoke(cli.main, ['minimap', 'show', completed.id])
    assert missing.exit_code == 1 and f'make one with `rqjobs minimap regenerate {completed.id}`' in missing.output
    invalid = runner.invoke(cli.main, ['minimap', 'validate', completed.id])
    assert invalid.exit_code == 1 and 'Not valid: no mind map stored' in invalid.output
    Warehouse.update(status=WarehouseStatus.FAILED).execute()
    failed = runner.invoke(cli.main, ['minimap', 'show', completed.id])
    assert failed.exit_code == 1 and 'it is Failed, and mind maps are built for Completed' in failed.output


@pytest.mark.db
@pytest.mark.parametrize('command', ['show', 'regenerate', 'validate'])
def test_cli_says_an_unknown_warehouse_does_not_exist(database, command):
    result = CliRunner().invoke(cli.main, ['minimap', command, 'nope'])
    assert result.exit_code == 2 and result.output.splitlines()[-1] == (
        'Error: Warehouse nope does not exist (or was removed); `rqjobs warehouse list` shows the ids.'
    )
