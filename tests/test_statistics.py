"""Tests of the statistics jobs and `jobs stats`, on SQLite or the database named by TEST_DATABASE_URL."""

import datetime as dt
import itertools
import json

import pytest
from click.testing import CliRunner
from rq.job import JobStatus

import cli
from models import (
    AccessRecord,
    DailyStatistics,
    DocumentCatalog,
    DocumentCommitRecord,
    DocumentFileItem,
    StatisticsSnapshot,
    User,
    Warehouse,
    WarehouseStatus,
)
from rqjobs import clock, queues, statistics
from rqjobs.exceptions import PermanentJobError

pytestmark = pytest.mark.db

# A Sunday: yesterday is Saturday 2026-11-28, the ISO week began on Monday 2026-11-23.
NOW = dt.datetime(2026, 11, 29, 12, 0, 0)
LAST_TICK = dt.timedelta(microseconds=1000)  # 23:59:59.999 is this far before midnight
_events = itertools.count()


@pytest.fixture
def freeze(monkeypatch):
    """Freeze `rqjobs.clock.utcnow` at NOW; call the fixture's value to move it."""

    def move(moment: dt.datetime) -> None:
        monkeypatch.setattr(clock, 'utcnow', lambda: moment)

    move(NOW)
    return move


def at(day: str, time: str = '12:00:00') -> dt.datetime:
    return dt.datetime.fromisoformat(f'{day} {time}')


def visit(
    when: dt.datetime,
    resource: str = 'acme/wiki',
    kind: str = 'Repository',
    ip: str = '10.0.0.1',
    user: str | None = None,
) -> None:
    AccessRecord.create(
        event_id=f'event-{next(_events)}',
        resource_type=kind,
        resource_id=resource,
        ip_address=ip,
        user_id=user,
        access_time=when,
    )


def make_user(name: str, created: dt.datetime) -> User:
    return User.create(name=name, email=f'{name}@example.invalid', password='x', created_at=created)


def make_warehouse(name: str, created: dt.datetime = NOW, **fields) -> Warehouse:
    return Warehouse.create(
        organization_name='acme',
        name=name,
        address=f'https://example.invalid/acme/{name}.git',
        created_at=created,
        **fields,
    )


def make_page(warehouse: Warehouse, created: dt.datetime = NOW) -> DocumentFileItem:
    catalog = DocumentCatalog.create(warehouse=warehouse, name='Page', created_at=created)
    return DocumentFileItem.create(catalog=catalog, title='Page', created_at=created)


# ---- Daily statistics ----


def test_records_at_the_edges_of_a_day_land_in_the_right_day(database, freeze):
    midnight = at('2026-11-28', '00:00:00')
    visit(midnight - LAST_TICK, ip='10.0.0.1')
    visit(midnight, ip='10.0.0.2', user='u1')
    visit(at('2026-11-28'), ip='10.0.0.2', user='u1')
    visit(midnight + dt.timedelta(days=1) - LAST_TICK, ip='10.0.0.3', user='u2')
    visit(midnight + dt.timedelta(days=1), ip='10.0.0.4', user='u3')
    make_user('early', midnight - LAST_TICK)
    make_user('first', midnight)
    make_page(make_warehouse('wiki', midnight + dt.timedelta(days=1) - LAST_TICK), midnight)

    row = statistics.generate_statistics()

    assert row['date'] == '2026-11-28'
    assert {
        key: row[key]
        for key in ('page_views', 'unique_visitors', 'active_users', 'new_users', 'new_repositories', 'new_documents')
    } == {
        'page_views': 3,
        'unique_visitors': 2,
        'active_users': 2,
        'new_users': 1,
        'new_repositories': 1,
        'new_documents': 1,
    }
    before = statistics.generate_statistics('2026-11-27')
    assert (before['page_views'], before['unique_visitors'], before['active_users'], before['new_users']) == (
        1,
        1,
        0,
        1,
    )
    assert statistics.generate_statistics('2026-11-29')['page_views'] == 1


def test_running_twice_keeps_one_row_and_a_rerun_after_new_data_updates_it(database, freeze):
    visit(at('2026-11-28'))
    first = statistics.generate_statistics('2026-11-28')
    assert statistics.generate_statistics('2026-11-28') == first
    assert DailyStatistics.select().count() == 1

    visit(at('2026-11-28', '18:00:00'), ip='10.0.0.9', user='u9')
    freeze(NOW + dt.timedelta(hours=1))
    again = statistics.generate_statistics('2026-11-28')

    assert (again['page_views'], again['unique_visitors'], again['active_users']) == (2, 2, 1)
    assert again['created_at'] == first['created_at'] and again['updated_at'] > first['updated_at']
    assert DailyStatistics.select().count() == 1
    assert DailyStatistics.get().page_views == 2


@pytest.mark.parametrize(
    'value', ['2026-13-01', 'tomorrow', '2026-11-30', '2026-02-30', '28/11/2026', '20261128', '', 20261128]
)
def test_bad_dates_are_refused_with_an_example(database, freeze, value):
    with pytest.raises(statistics.InvalidStatisticsDate, match='for example 2026-11-28') as excinfo:
        statistics.generate_statistics(value)
    assert isinstance(excinfo.value, PermanentJobError)
    assert DailyStatistics.select().count() == 0


def test_today_is_allowed_and_counts_the_day_so_far(database, freeze):
    visit(NOW - dt.timedelta(hours=1))
    assert statistics.generate_statistics('2026-11-29')['page_views'] == 1


def test_jobs_run_on_a_real_worker_and_a_bad_date_fails_without_retry(database, freeze, redis_conn, burst_worker):
    visit(at('2026-11-28'))
    good = queues.enqueue('generate_statistics', ['2026-11-28'], connection=redis_conn)
    bad = queues.enqueue('generate_statistics', ['2026-13-01'], connection=redis_conn)
    assert good.origin == queues.STATISTICS

    burst_worker(queues.STATISTICS)

    good.refresh()
    bad.refresh()
    assert good.get_status() == JobStatus.FINISHED and good.return_value()['page_views'] == 1
    assert bad.get_status() == JobStatus.FAILED and bad.retries_left == 0
    assert 'for example 2026-11-28' in bad.latest_result().exc_string


# ---- System statistics ----


@pytest.mark.parametrize(
    'current, previous, expected',
    [
        (0, 0, 0.0),
        (5, 0, 100.0),
        (0, 4, -100.0),
        (4, 3, 33.3),
        (2, 3, -33.3),
        (3, 3, 0.0),
        (7, 6, 16.7),
    ],
)
def test_growth_rules(current, previous, expected):
    assert statistics.growth(current, previous) == expected


def test_system_statistics_totals_months_growth_and_a_zero_filled_trend(database, freeze):
    for index in range(3):
        make_user(f'october{index}', at('2026-10-10'))
    for index in range(4):
        make_user(f'november{index}', at('2026-11-02'))
    make_user('gone', at('2026-11-03')).delete_instance()
    User.update(is_deleted=True).where(User.name == 'november3').execute()
    wiki = make_warehouse('wiki', at('2026-11-05'), status=WarehouseStatus.COMPLETED)
    make_warehouse('tool', at('2026-11-28'))
    make_warehouse('old', at('2026-11-28'), status=WarehouseStatus.FAILED, is_deleted=True)
    make_page(wiki, at('2026-11-05'))
    visit(at('2026-10-30'))  # 30 days before today: just outside the trend
    visit(at('2026-10-31', '00:00:00'))
    visit(at('2026-11-28'))
    visit(at('2026-11-28', '23:59:59'))

    data = statistics.generate_system_statistics()

    assert data['snapshot_id'] == 'system:all:2026-11-29'
    assert data['totals'] == {
        'users': 6,
        'warehouses': 2,
        'documents': 0,
        'pages': 1,
        'access_records': 4,
        'warehouses_by_status': {
            'Pending': 1,
            'Processing': 0,
            'Completed': 1,
            'Canceled': 0,
            'Unauthorized': 0,
            'Failed': 0,
        },
    }
    assert data['this_month'] == {'users': 4, 'warehouses': 3, 'pages': 1}
    assert data['last_month'] == {'users': 3, 'warehouses': 0, 'pages': 0}
    assert data['growth'] == {'users': 33.3, 'warehouses': 100.0, 'pages': 100.0}
    trend = data['trend']
    assert len(trend) == statistics.TREND_DAYS == 30
    assert [entry['date'] for entry in trend] == [
        (dt.date(2026, 10, 31) + dt.timedelta(days=offset)).isoformat() for offset in range(30)
    ]
    assert trend[0] == {'date': '2026-10-31', 'new_users': 0, 'new_warehouses': 0, 'page_views': 1}
    assert trend[-2] == {'date': '2026-11-28', 'new_users': 0, 'new_warehouses': 2, 'page_views': 2}
    assert trend[-1] == {'date': '2026-11-29', 'new_users': 0, 'new_warehouses': 0, 'page_views': 0}
    # Soft-deleted rows still count as new on the day they were made.
    assert sum(entry['new_users'] for entry in trend) == 4
    assert json.loads(json.dumps(data)) == data


# ---- Warehouse statistics ----


def test_warehouse_statistics_count_its_pages_views_and_commits(database, freeze):
    wiki = make_warehouse('wiki', status=WarehouseStatus.COMPLETED)
    other = make_warehouse('other')
    make_page(wiki)
    make_page(wiki)
    make_page(other)
    DocumentCommitRecord.create(warehouse=wiki, commit_id='a' * 40, last_update=NOW)
    visit(NOW - dt.timedelta(hours=1))
    visit(at('2026-11-28'))
    visit(at('2026-10-01'))
    visit(NOW, kind='Document')
    visit(NOW, resource='acme/other')

    data = statistics.generate_warehouse_statistics(wiki.id)

    assert data['snapshot_id'] == f'warehouse:{wiki.id}:2026-11-29'
    assert {key: data[key] for key in ('status', 'repository', 'pages', 'views', 'views_today', 'commits')} == {
        'status': 'ok',
        'repository': 'acme/wiki',
        'pages': 2,
        'views': 3,
        'views_today': 1,
        'commits': 1,
    }
    stored = StatisticsSnapshot.get_by_id(data['snapshot_id'])
    assert (stored.kind, stored.subject_id, stored.snapshot_date) == ('warehouse', wiki.id, NOW.date())


def test_a_missing_or_deleted_warehouse_is_a_normal_outcome(database, freeze):
    gone = make_warehouse('gone', is_deleted=True)
    for warehouse_id in ('no-such-warehouse', gone.id):
        result = statistics.generate_warehouse_statistics(warehouse_id)
        assert (result['warehouse_id'], result['status']) == (warehouse_id, 'missing')
    assert StatisticsSnapshot.select().count() == 0


# ---- Access statistics ----


def test_access_statistics_weeks_start_on_monday(database, freeze):
    monday = at('2026-11-23', '00:00:00')
    visit(monday - LAST_TICK, ip='10.0.0.1')  # Sunday of the week before, same month
    visit(monday, ip='10.0.0.2')
    visit(NOW, ip='10.0.0.2')
    visit(at('2026-10-31', '23:59:59'), ip='10.0.0.3')  # last month

    data = statistics.generate_access_statistics()

    assert data['snapshot_id'] == 'access:all:2026-11-29'
    assert data['today'] == {'start': '2026-11-29', 'views': 1, 'unique_visitors': 1}
    assert data['week'] == {'start': '2026-11-23', 'views': 2, 'unique_visitors': 1}
    assert data['month'] == {'start': '2026-11-01', 'views': 3, 'unique_visitors': 2}
    freeze(monday)
    on_monday = statistics.generate_access_statistics()
    assert on_monday['week']['start'] == on_monday['today']['start'] == '2026-11-23'
    assert on_monday['today'] == {'start': '2026-11-23', 'views': 1, 'unique_visitors': 1}


def test_top_resources_are_ordered_by_views_then_resource(database, freeze):
    views = {
        ('Repository', 'acme/a'): 2,
        ('Repository', 'acme/b'): 5,
        ('Document', 'acme/c'): 5,
        ('Repository', 'acme/c'): 5,
        ('Repository', 'acme/d'): 9,
    }
    views.update({('Repository', f'acme/z{index}'): 1 for index in range(8)})
    for (kind, resource), count in views.items():
        for _ in range(count):
            visit(NOW, resource=resource, kind=kind)
    for _ in range(20):
        visit(at('2026-10-15'), resource='acme/last-month')

    top = statistics.generate_access_statistics()['top_resources']

    assert [(entry['resource_type'], entry['resource_id'], entry['views']) for entry in top] == [
        ('Repository', 'acme/d', 9),
        ('Document', 'acme/c', 5),
        ('Repository', 'acme/b', 5),
        ('Repository', 'acme/c', 5),
        ('Repository', 'acme/a', 2),
        ('Repository', 'acme/z0', 1),
        ('Repository', 'acme/z1', 1),
        ('Repository', 'acme/z2', 1),
        ('Repository', 'acme/z3', 1),
        ('Repository', 'acme/z4', 1),
    ]


# ---- Snapshots ----


def test_snapshots_are_overwritten_the_same_day_and_added_on_a_new_day(database, freeze):
    make_user('first', NOW)
    statistics.generate_system_statistics()
    make_user('second', NOW)
    freeze(NOW + dt.timedelta(hours=2))
    statistics.generate_system_statistics()

    assert [row.id for row in StatisticsSnapshot.select()] == ['system:all:2026-11-29']
    stored = StatisticsSnapshot.get_by_id('system:all:2026-11-29')
    assert stored.data['totals']['users'] == 2
    assert stored.created_at == NOW + dt.timedelta(hours=2)

    freeze(NOW + dt.timedelta(days=1))
    statistics.generate_system_statistics()
    statistics.generate_access_statistics()
    assert sorted(row.id for row in StatisticsSnapshot.select()) == [
        'access:all:2026-11-30',
        'system:all:2026-11-29',
        'system:all:2026-11-30',
    ]
    assert statistics.show('2026-11-29')['system']['snapshot_id'] == 'system:all:2026-11-30'


def test_the_indexes_the_ranges_use_exist(database):
    def shapes(model):
        return {(tuple(index.columns), index.unique) for index in database.get_indexes(model._meta.table_name)}

    assert (('access_time',), False) in shapes(AccessRecord)
    assert (('resource_type', 'resource_id', 'access_time'), False) in shapes(AccessRecord)
    assert (('created_at',), False) in shapes(Warehouse)
    assert (('date',), True) in shapes(DailyStatistics)
    assert (('snapshot_date',), False) in shapes(StatisticsSnapshot)


# ---- Command line ----


def test_cli_generate_and_show(database, freeze):
    visit(at('2026-11-28'), user='u1')
    runner = CliRunner()

    made = runner.invoke(cli.main, ['stats', 'generate', '--date', '2026-11-28', '--json'])
    assert made.exit_code == 0, made.output
    data = json.loads(made.stdout)
    assert data['date'] == '2026-11-28'
    assert (data['daily']['page_views'], data['daily']['active_users']) == (1, 1)
    assert data['system']['snapshot_id'] == 'system:all:2026-11-29'
    assert data['access']['snapshot_id'] == 'access:all:2026-11-29'

    shown = runner.invoke(cli.main, ['stats', 'show', '--date', '2026-11-28', '--json'])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout) == data
    human = runner.invoke(cli.main, ['stats', 'show'])
    assert human.exit_code == 0 and 'Statistics of 2026-11-28' in human.stdout and 'page views:' in human.stdout


def test_cli_show_without_a_row_says_how_to_make_one(database, freeze):
    result = CliRunner().invoke(cli.main, ['stats', 'show', '--date', '2026-11-20'])
    assert result.exit_code == 0, result.output
    assert 'jobs stats generate --date 2026-11-20' in result.stdout


@pytest.mark.parametrize('value', ['2026-13-01', 'tomorrow', '2026-12-01'])
def test_cli_refuses_a_bad_date_with_an_example(database, freeze, value):
    for command in ('generate', 'show'):
        result = CliRunner().invoke(cli.main, ['stats', command, '--date', value])
        assert result.exit_code == 2, result.output
        assert '--date' in result.stderr and 'for example 2026-11-28' in result.stderr
    assert DailyStatistics.select().count() == 0
