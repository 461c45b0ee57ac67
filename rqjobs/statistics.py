"""Statistics jobs (queue `statistics`): the daily counters and snapshots of the system, a warehouse and the access log.

Every figure is a SQL aggregate (COUNT, COUNT DISTINCT, GROUP BY a day) over a half-open time range
(`col >= start AND col < end`) on the bare column, so the database can use its index and no row reaches Python.
Days are UTC days. Rows are written with one portable upsert: a re-run replaces a day's row or snapshot.

- "new" figures count rows created in the period, deleted since or not, so a past day's figure never shrinks;
  totals count what is live now (not soft-deleted).
- The 30-day trend is 30 entries, oldest first, ending today (today so far included), days without rows as zeros.
- Weeks are ISO weeks, starting on Monday; months are calendar months.
- A snapshot's id is `kind:subject:date` (`system:all:2026-11-28`, `warehouse:<id>:2026-11-28`), its date the UTC
  day it was taken.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from typing import Any

from peewee import SQL, Field, ModelSelect, MySQLDatabase, fn

from models import (
    AccessRecord,
    BaseModel,
    DailyStatistics,
    Document,
    DocumentCatalog,
    DocumentCommitRecord,
    DocumentFileItem,
    SnapshotKind,
    StatisticsSnapshot,
    User,
    Warehouse,
    WarehouseStatus,
)
from rqjobs import clock, database
from rqjobs.exceptions import InvalidStatisticsDate

logger = logging.getLogger(__name__)

JOBS = (
    'generate_statistics',
    'generate_system_statistics',
    'generate_warehouse_statistics',
    'generate_access_statistics',
)

TREND_DAYS = 30
TOP_RESOURCES = 10
# The resource type under which the web side logs views of a warehouse, with `organization/name` as the id.
REPOSITORY_RESOURCE = 'Repository'
ONE_DAY = dt.timedelta(days=1)
_DAY = re.compile(r'[0-9]{4}-[0-9]{2}-[0-9]{2}')


# ---- Days and periods ----


def parse_day(value: str | None) -> dt.date:
    """Return the day `value` names (YYYY-MM-DD; None means yesterday UTC), refusing bad and future days."""
    today = clock.utcnow().date()
    example = (today - ONE_DAY).isoformat()
    if value is None:
        return today - ONE_DAY
    if not isinstance(value, str) or not _DAY.fullmatch(value.strip()):
        raise InvalidStatisticsDate(f'Date {value!r} is not a day written as YYYY-MM-DD; for example {example}.')
    try:
        day = dt.date.fromisoformat(value.strip())
    except ValueError:
        raise InvalidStatisticsDate(f'Date {value!r} is not a day of the calendar; for example {example}.') from None
    if day > today:
        raise InvalidStatisticsDate(
            f'Date {day} is in the future (today is {today} UTC), so it has no statistics yet; for example {example}.'
        )
    return day


def midnight(day: dt.date) -> dt.datetime:
    """Return the start of `day` as a naive UTC datetime."""
    return dt.datetime.combine(day, dt.time.min)


def day_range(day: dt.date, days: int = 1) -> tuple[dt.datetime, dt.datetime]:
    """Return the half-open UTC range [start, end) of `days` days from `day`."""
    return midnight(day), midnight(day + dt.timedelta(days=days))


def month_start(day: dt.date, months: int = 0) -> dt.date:
    """Return the first day of the month `months` months after (or before) the month of `day`."""
    index = day.year * 12 + day.month - 1 + months
    return dt.date(index // 12, index % 12 + 1, 1)


def growth(current: int, previous: int) -> float:
    """Return the change from `previous` to `current` in percent, one decimal; 100 from nothing, 0 for nothing."""
    if previous == 0:
        return 100.0 if current else 0.0
    return round((current - previous) * 100 / previous, 1)


def snapshot_id(kind: str, subject_id: str | None, day: dt.date) -> str:
    """Return the id of the snapshot of `kind` about `subject_id` (None: the whole system) taken on `day`."""
    return f'{kind}:{subject_id or "all"}:{day.isoformat()}'


# ---- Aggregates ----


def _count(column: Field, start: dt.datetime, end: dt.datetime, query: ModelSelect | None = None) -> int:
    """Return COUNT(*) of the rows whose `column` lies in [start, end)."""
    query = query if query is not None else column.model.select(fn.COUNT(SQL('*')))
    return query.where(column >= start, column < end).scalar() or 0


def _per_day(column: Field, start: dt.datetime, end: dt.datetime) -> dict[dt.date, int]:
    """Return COUNT(*) per UTC day of the rows whose `column` lies in [start, end), days without rows left out."""
    # DATE(col) is a function on SQLite and MySQL and a cast on PostgreSQL; not coerced, so no driver reads it as a
    # datetime. It is only grouped on: the WHERE keeps the bare column for its index.
    day = fn.DATE(column).coerce(False)
    rows = column.model.select(day, fn.COUNT(SQL('*'))).where(column >= start, column < end).group_by(day).tuples()
    return {_as_date(value): count for value, count in rows}


def _as_date(value: Any) -> dt.date:
    # SQLite returns DATE() as text, PostgreSQL and MySQL as a date.
    if isinstance(value, str):
        return dt.date.fromisoformat(value[:10])
    return value.date() if isinstance(value, dt.datetime) else value


def _visits(start: dt.datetime, end: dt.datetime) -> tuple[int, int, int]:
    """Return page views, unique visitors (IP addresses) and active users (user ids) in [start, end)."""
    # COUNT(DISTINCT user_id) skips NULLs: anonymous views are not active users.
    views, visitors, users = (
        AccessRecord.select(
            fn.COUNT(SQL('*')), fn.COUNT(AccessRecord.ip_address.distinct()), fn.COUNT(AccessRecord.user_id.distinct())
        )
        .where(AccessRecord.access_time >= start, AccessRecord.access_time < end)
        .scalar(as_tuple=True)
    )
    return views or 0, visitors or 0, users or 0


def _upsert(model: type[BaseModel], values: dict[str, Any], key: str, keep: tuple[str, ...] = ()) -> None:
    """Insert a row, or update the row with the same unique `key` except the `keep` columns, in one statement."""
    preserve = [model._meta.fields[name] for name in values if name != key and name not in keep]
    query = model.insert(values)
    if isinstance(model._meta.database.obj, MySQLDatabase):
        # MySQL/MariaDB: INSERT ... ON DUPLICATE KEY UPDATE, which takes no conflict target.
        query = query.on_conflict(preserve=preserve)
    else:
        # SQLite (3.24+) and PostgreSQL: INSERT ... ON CONFLICT (key) DO UPDATE SET col = EXCLUDED.col.
        query = query.on_conflict(conflict_target=[model._meta.fields[key]], preserve=preserve)
    query.execute()


def _iso(value: dt.datetime) -> str:
    return value.isoformat(timespec='seconds') + 'Z'


def _daily_row(row: DailyStatistics) -> dict:
    return {
        'date': row.date.isoformat(),
        'new_users': row.new_users,
        'new_repositories': row.new_repositories,
        'new_documents': row.new_documents,
        'page_views': row.page_views,
        'unique_visitors': row.unique_visitors,
        'active_users': row.active_users,
        'created_at': _iso(row.created_at),
        'updated_at': _iso(row.updated_at),
    }


def _store_snapshot(kind: str, subject_id: str | None, data: dict, now: dt.datetime) -> dict:
    identifier = snapshot_id(kind, subject_id, now.date())
    _upsert(
        StatisticsSnapshot,
        {
            'id': identifier,
            'kind': kind,
            'subject_id': subject_id,
            'snapshot_date': now.date(),
            'data': data,
            'created_at': now,
        },
        key='id',
    )
    return {'snapshot_id': identifier, **data}


# ---- Jobs ----


def generate_statistics(date: str | None = None) -> dict:
    """Count one UTC day's new users, warehouses and pages, page views and visitors (default: yesterday)."""
    # Safe twice: the row is upserted on its unique date, so a re-run replaces the figures instead of adding a row.
    day = parse_day(date)
    start, end = day_range(day)
    with database.connection() as db:
        views, visitors, users = _visits(start, end)
        now = clock.utcnow()
        values = {
            'date': day,
            'new_users': _count(User.created_at, start, end),
            'new_repositories': _count(Warehouse.created_at, start, end),
            'new_documents': _count(DocumentFileItem.created_at, start, end),
            'page_views': views,
            'unique_visitors': visitors,
            'active_users': users,
            'created_at': now,
            'updated_at': now,
        }
        with db.atomic():
            _upsert(DailyStatistics, values, key='date', keep=('created_at',))
            row = DailyStatistics.get(DailyStatistics.date == day)
    result = _daily_row(row)
    logger.info(
        'statistics %s: %d page views, %d visitors, %d new users, %d new warehouses, %d new pages',
        day,
        views,
        visitors,
        values['new_users'],
        values['new_repositories'],
        values['new_documents'],
    )
    return result


def generate_system_statistics() -> dict:
    """Take today's snapshot of the platform: totals, this and last month's new rows, growth and a 30-day trend."""
    # Safe twice: the snapshot's id is derived from its day, so a re-run overwrites today's snapshot.
    now = clock.utcnow()
    today = now.date()
    this_month, next_month, last_month = month_start(today), month_start(today, 1), month_start(today, -1)
    trend_start, trend_end = day_range(today - dt.timedelta(days=TREND_DAYS - 1), TREND_DAYS)
    with database.connection():
        by_status = dict.fromkeys(WarehouseStatus.ALL, 0)
        by_status.update(
            Warehouse.select(Warehouse.status, fn.COUNT(SQL('*')))
            .where(Warehouse.is_deleted == False)
            .group_by(Warehouse.status)
            .tuples()
        )
        totals = {
            'users': User.select(fn.COUNT(SQL('*'))).where(User.is_deleted == False).scalar() or 0,
            'warehouses': sum(by_status.values()),
            'warehouses_by_status': by_status,
            'documents': (
                Document.select(fn.COUNT(SQL('*')))
                .join(Warehouse)
                .where(Document.is_deleted == False, Warehouse.is_deleted == False)
                .scalar()
                or 0
            ),
            'pages': (
                DocumentFileItem.select(fn.COUNT(SQL('*')))
                .join(DocumentCatalog)
                .join(Warehouse)
                .where(DocumentCatalog.is_deleted == False, Warehouse.is_deleted == False)
                .scalar()
                or 0
            ),
            'access_records': AccessRecord.select(fn.COUNT(SQL('*'))).scalar() or 0,
        }
        columns = {'users': User.created_at, 'warehouses': Warehouse.created_at, 'pages': DocumentFileItem.created_at}
        months = {}
        for label, first, last in (('this_month', this_month, next_month), ('last_month', last_month, this_month)):
            months[label] = {name: _count(column, midnight(first), midnight(last)) for name, column in columns.items()}
        per_day = {
            'new_users': _per_day(User.created_at, trend_start, trend_end),
            'new_warehouses': _per_day(Warehouse.created_at, trend_start, trend_end),
            'page_views': _per_day(AccessRecord.access_time, trend_start, trend_end),
        }
        days = [trend_start.date() + dt.timedelta(days=offset) for offset in range(TREND_DAYS)]
        data = {
            'date': today.isoformat(),
            'generated_at': _iso(now),
            'totals': totals,
            **months,
            'growth': {name: growth(months['this_month'][name], months['last_month'][name]) for name in columns},
            'trend': [
                {'date': day.isoformat(), **{name: counts.get(day, 0) for name, counts in per_day.items()}}
                for day in days
            ],
        }
        result = _store_snapshot(SnapshotKind.SYSTEM, None, data, now)
    logger.info(
        'system statistics %s: %d users, %d warehouses, %d pages',
        today,
        totals['users'],
        totals['warehouses'],
        totals['pages'],
    )
    return result


def generate_warehouse_statistics(warehouse_id: str) -> dict:
    """Take today's snapshot of one warehouse: pages, total and today's views, commits."""
    # Safe twice: the snapshot's id is derived from the warehouse and the day, so a re-run overwrites it.
    now = clock.utcnow()
    today_start, today_end = day_range(now.date())
    with database.connection():
        warehouse = Warehouse.get_or_none(Warehouse.id == warehouse_id, Warehouse.is_deleted == False)
        if warehouse is None:
            logger.info('warehouse %s: not found or deleted; no statistics', warehouse_id)
            return {'warehouse_id': warehouse_id, 'status': 'missing', 'message': 'warehouse not found or deleted'}
        resource_id = f'{warehouse.organization_name}/{warehouse.name}'
        views = AccessRecord.select(fn.COUNT(SQL('*'))).where(
            AccessRecord.resource_type == REPOSITORY_RESOURCE, AccessRecord.resource_id == resource_id
        )
        data = {
            'date': now.date().isoformat(),
            'generated_at': _iso(now),
            'warehouse_id': warehouse_id,
            'repository': resource_id,
            'status': 'ok',
            'pages': (
                DocumentFileItem.select(fn.COUNT(SQL('*')))
                .join(DocumentCatalog)
                .where(DocumentCatalog.warehouse == warehouse_id, DocumentCatalog.is_deleted == False)
                .scalar()
                or 0
            ),
            'views': views.scalar() or 0,
            'views_today': _count(AccessRecord.access_time, today_start, today_end, views),
            'tokens': (
                DocumentCatalog.select(fn.SUM(DocumentCatalog.tokens_in + DocumentCatalog.tokens_out))
                .where(DocumentCatalog.warehouse == warehouse_id)
                .scalar()
                or 0
            ),
            'commits': (
                DocumentCommitRecord.select(fn.COUNT(SQL('*')))
                .where(DocumentCommitRecord.warehouse == warehouse_id)
                .scalar()
                or 0
            ),
        }
        result = _store_snapshot(SnapshotKind.WAREHOUSE, warehouse_id, data, now)
    logger.info(
        'warehouse %s: %d pages, %d views (%d today), %d commits',
        warehouse_id,
        data['pages'],
        data['views'],
        data['views_today'],
        data['commits'],
    )
    return result


def generate_access_statistics() -> dict:
    """Take today's snapshot of the access log: views and visitors today, this week and this month, top resources."""
    # Safe twice: the snapshot's id is derived from its day, so a re-run overwrites today's snapshot.
    now = clock.utcnow()
    today = now.date()
    monday = today - dt.timedelta(days=today.weekday())
    periods = {
        'today': day_range(today),
        'week': day_range(monday, 7),
        'month': (midnight(month_start(today)), midnight(month_start(today, 1))),
    }
    month_from, month_to = periods['month']
    views = fn.COUNT(SQL('*'))
    with database.connection():
        figures = {}
        for name, (start, end) in periods.items():
            count, visitors, _ = _visits(start, end)
            figures[name] = {'start': start.date().isoformat(), 'views': count, 'unique_visitors': visitors}
        # Ties are broken by the resource, so the list is the same on every run and every database.
        top = (
            AccessRecord.select(AccessRecord.resource_type, AccessRecord.resource_id, views)
            .where(AccessRecord.access_time >= month_from, AccessRecord.access_time < month_to)
            .group_by(AccessRecord.resource_type, AccessRecord.resource_id)
            .order_by(views.desc(), AccessRecord.resource_type, AccessRecord.resource_id)
            .limit(TOP_RESOURCES)
            .tuples()
        )
        data = {
            'date': today.isoformat(),
            'generated_at': _iso(now),
            **figures,
            'top_resources': [
                {'resource_type': kind, 'resource_id': resource, 'views': count} for kind, resource, count in top
            ],
        }
        result = _store_snapshot(SnapshotKind.ACCESS, None, data, now)
    logger.info(
        'access statistics %s: %d views today, %d this week, %d this month',
        today,
        figures['today']['views'],
        figures['week']['views'],
        figures['month']['views'],
    )
    return result


# ---- Operator actions (the CLI) ----


def show(date: str | None = None) -> dict:
    """Return one day's statistics row (default yesterday UTC, None if not made) and the latest snapshots."""
    day = parse_day(date)
    with database.connection():
        row = DailyStatistics.get_or_none(DailyStatistics.date == day)
        latest = {kind: _latest_snapshot(kind) for kind in (SnapshotKind.SYSTEM, SnapshotKind.ACCESS)}
        tokens = token_usage()
    return {'date': day.isoformat(), 'daily': _daily_row(row) if row else None, **latest, 'tokens': tokens}


def token_usage(limit: int = 10) -> dict:
    """Return the tokens pages written by a model have spent (every try): in all, per warehouse and per user."""
    spent_in, spent_out = fn.SUM(DocumentCatalog.tokens_in), fn.SUM(DocumentCatalog.tokens_out)
    total = (
        DocumentCatalog.select(spent_in, spent_out, fn.COUNT(SQL('*')))
        .where(DocumentCatalog.tries > 0)
        .tuples()
        .first()
    )
    by_warehouse = (
        DocumentCatalog.select(
            Warehouse.id, Warehouse.organization_name, Warehouse.name, spent_in.alias('i'), spent_out.alias('o')
        )
        .join(Warehouse)
        .where(DocumentCatalog.tries > 0)
        .group_by(Warehouse.id, Warehouse.organization_name, Warehouse.name)
        .order_by((spent_in + spent_out).desc(), Warehouse.id)
        .limit(limit)
        .tuples()
    )
    by_user = (
        DocumentCatalog.select(Warehouse.creator, spent_in, spent_out)
        .join(Warehouse)
        .where(DocumentCatalog.tries > 0)
        .group_by(Warehouse.creator)
        .order_by((spent_in + spent_out).desc(), Warehouse.creator)
        .limit(limit)
        .tuples()
    )
    names = {row.id: row.name for row in User.select(User.id, User.name)}
    return {
        'tokens_in': int(total[0] or 0),
        'tokens_out': int(total[1] or 0),
        'pages': int(total[2] or 0),
        'warehouses': [
            {'warehouse_id': i, 'repository': f'{org}/{name}', 'tokens_in': int(a or 0), 'tokens_out': int(b or 0)}
            for i, org, name, a, b in by_warehouse
        ],
        'users': [
            {'user': names.get(user, user) if user else '(none)', 'tokens_in': int(a or 0), 'tokens_out': int(b or 0)}
            for user, a, b in by_user
        ],
    }


def generate(date: str | None = None) -> dict:
    """Make one day's statistics row and today's system and access snapshots in this process; return `show(date)`."""
    day = parse_day(date).isoformat()
    generate_statistics(day)
    generate_system_statistics()
    generate_access_statistics()
    return show(day)


def _latest_snapshot(kind: str) -> dict | None:
    row = (
        StatisticsSnapshot.select()
        .where(StatisticsSnapshot.kind == kind)
        .order_by(StatisticsSnapshot.snapshot_date.desc(), StatisticsSnapshot.created_at.desc())
        .first()
    )
    return {'snapshot_id': row.id, **row.data} if row else None
