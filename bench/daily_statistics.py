"""Cost of `generate_statistics(day)` against the raw SQL aggregates it runs, on a million access records.

Loads `--records` access records (spread evenly over `--days` days ending yesterday UTC, in time order, as a log
grows) plus users, warehouses and pages, into a temporary SQLite file or the database of `--database-url`, then
times in the same run: the job (connection, the aggregates, the upsert and the read-back) and the same COUNT /
COUNT DISTINCT statements alone, sent with `db.execute_sql` on an open connection. Prints the query plan of the
access-log aggregate, medians of several rounds after a warm-up, and their ratio (aim: at most 2x).

The project's tables are never touched: PostgreSQL gets a schema of its own (`bench_statistics`, through
`search_path`), MySQL/MariaDB a database of its own (`<name>_bench_statistics`); both are dropped at the end.
Usage: python bench/daily_statistics.py [--records N] [--days D] [--rounds R] [--database-url URL]
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file is named statistics.py: its directory, first on the path, would shadow the standard library's module.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse
import datetime as dt
import os
import random
import statistics
import tempfile
import time
from urllib.parse import quote, urlsplit, urlunsplit

import peewee

import models
from rqjobs import clock, database, migration, settings
from rqjobs import statistics as jobs

AIM_RATIO = 2.0
BENCH_NAME = 'bench_statistics'
BATCH = 50_000
ACCESS_COLUMNS = (
    'event_id',
    'resource_type',
    'resource_id',
    'user_id',
    'ip_address',
    'user_agent',
    'path',
    'method',
    'status_code',
    'response_time',
    'access_time',
    'created_at',
)
# The statements generate_statistics sends, written by hand.
RAW_QUERIES = (
    (
        'SELECT COUNT(*), COUNT(DISTINCT ip_address), COUNT(DISTINCT user_id) FROM access_record '
        'WHERE access_time >= {p} AND access_time < {p}'
    ),
    'SELECT COUNT(*) FROM users WHERE created_at >= {p} AND created_at < {p}',
    'SELECT COUNT(*) FROM warehouse WHERE created_at >= {p} AND created_at < {p}',
    'SELECT COUNT(*) FROM document_file_item WHERE created_at >= {p} AND created_at < {p}',
)


def isolated_url(url: str) -> tuple[str, str | None]:
    """Return the URL the benchmark uses, and the SQL that makes its private schema or database (None: SQLite)."""
    parts = urlsplit(url)
    if parts.scheme in ('postgres', 'postgresql'):
        options = quote(f'-c search_path={BENCH_NAME}')
        return urlunsplit(parts._replace(query=f'options={options}')), f'CREATE SCHEMA IF NOT EXISTS {BENCH_NAME}'
    if parts.scheme == 'mysql':
        name = f'{parts.path.lstrip("/")}_{BENCH_NAME}'
        return (
            urlunsplit(parts._replace(path=f'/{name}')),
            f'CREATE DATABASE IF NOT EXISTS `{name}` CHARACTER SET utf8mb4',
        )
    return url, None


def drop_sql(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme in ('postgres', 'postgresql'):
        return f'DROP SCHEMA IF EXISTS {BENCH_NAME} CASCADE'
    if parts.scheme == 'mysql':
        return f'DROP DATABASE IF EXISTS `{parts.path.lstrip("/")}_{BENCH_NAME}`'
    return None


def run_on_server(url: str, sql: str | None) -> None:
    if sql:
        server = database.open_database(url)
        with server.connection_context():
            server.execute_sql(sql)


def access_rows(count: int, first: dt.datetime, span: dt.timedelta, as_text: bool, rng: random.Random):
    """Yield access records in time order: 30% signed in, 50,000 visitor addresses, 5,000 resources."""
    step = span / count
    kinds = ('Repository', 'Document', 'Page')
    for index in range(count):
        when = first + step * index
        user = f'user-{rng.randrange(10_000):05d}' if rng.random() < 0.3 else None
        visitor = rng.randrange(50_000)
        resource = rng.randrange(5_000)
        stamp = str(when) if as_text else when
        yield (
            f'bench-{index}',
            kinds[resource % 3],
            f'org{resource % 97}/repo{resource}',
            user,
            f'10.{visitor >> 16}.{(visitor >> 8) & 255}.{visitor & 255}',
            'bench',
            '/',
            'GET',
            200,
            rng.randrange(5, 500),
            stamp,
            stamp,
        )


def insert(db, table: str, columns: tuple[str, ...], rows) -> None:
    """Insert rows in transactions of BATCH rows, with the driver's fastest multi-row form."""
    sql = f'INSERT INTO {table} ({", ".join(columns)}) VALUES '
    batch: list[tuple] = []

    def flush() -> None:
        with db.atomic():
            cursor = db.cursor()
            if isinstance(db, peewee.PostgresqlDatabase):
                from psycopg2.extras import execute_values

                execute_values(cursor, sql + '%s', batch, page_size=5000)
            else:
                # sqlite3 prepares the statement once; PyMySQL rewrites it into multi-row INSERTs.
                cursor.executemany(sql + f'({", ".join([db.param] * len(columns))})', batch)
        batch.clear()

    for row in rows:
        batch.append(row)
        if len(batch) >= BATCH:
            flush()
    if batch:
        flush()


def load(db, records: int, day: dt.date, days: int) -> None:
    """Fill the tables: access records over `days` days ending with `day`, and users, warehouses and pages."""
    rng = random.Random(42)
    first = dt.datetime.combine(day - dt.timedelta(days=days - 1), dt.time.min)
    span = dt.timedelta(days=days)
    as_text = isinstance(db, peewee.SqliteDatabase)
    insert(db, 'access_record', ACCESS_COLUMNS, access_rows(records, first, span, as_text, rng))

    def stamp(index: int, count: int):
        when = first + span * index / count
        return str(when) if as_text else when

    users, warehouses, pages = 10_000, 1_000, 20_000
    insert(
        db,
        'users',
        ('id', 'name', 'email', 'password', 'avatar', 'is_deleted', 'created_at', 'updated_at'),
        (
            (f'u{i:08d}', f'user{i}', f'user{i}@example.invalid', 'x', '', False, stamp(i, users), stamp(i, users))
            for i in range(users)
        ),
    )
    insert(
        db,
        'warehouse',
        (
            'id',
            'organization_name',
            'name',
            'description',
            'address',
            'type',
            'branch',
            'status',
            'readme',
            'optimized_directory_structure',
            'is_recommended',
            'stars',
            'forks',
            'is_deleted',
            'created_at',
            'updated_at',
        ),
        (
            (
                f'w{i:08d}',
                f'org{i % 97}',
                f'repo{i}',
                '',
                f'https://example.invalid/{i}.git',
                'git',
                '',
                'Completed',
                '',
                '',
                False,
                0,
                0,
                False,
                stamp(i, warehouses),
                stamp(i, warehouses),
            )
            for i in range(warehouses)
        ),
    )
    insert(
        db,
        'document_catalog',
        (
            'id',
            'warehouse_id',
            'name',
            'url',
            'description',
            'prompt',
            'sort_order',
            'is_completed',
            'is_deleted',
            'created_at',
            'updated_at',
        ),
        (
            (
                f'c{i:08d}',
                f'w{i % warehouses:08d}',
                'Page',
                f'p{i}',
                '',
                '',
                0,
                True,
                False,
                stamp(i, pages),
                stamp(i, pages),
            )
            for i in range(pages)
        ),
    )
    insert(
        db,
        'document_file_item',
        (
            'id',
            'catalog_id',
            'title',
            'description',
            'content',
            'comment_count',
            'size',
            'request_token',
            'response_token',
            'metadata',
            'created_at',
            'updated_at',
        ),
        (
            (f'f{i:08d}', f'c{i:08d}', 'Page', '', '# Page', 0, 6, 0, 0, '{}', stamp(i, pages), stamp(i, pages))
            for i in range(pages)
        ),
    )
    db.execute_sql(
        'ANALYZE'
        if not isinstance(db, peewee.MySQLDatabase)
        else 'ANALYZE TABLE access_record, users, warehouse, document_file_item'
    )


def query_plan(db, sql: str, params: list) -> str:
    if isinstance(db, peewee.SqliteDatabase):
        rows = db.execute_sql('EXPLAIN QUERY PLAN ' + sql, params).fetchall()
        return '; '.join(str(row[-1]) for row in rows)
    rows = db.execute_sql('EXPLAIN ' + sql, params).fetchall()
    if isinstance(db, peewee.MySQLDatabase):
        return '; '.join(f'{row[2]}: {row[3]} key={row[5]} rows={row[8]}' for row in rows)
    return '; '.join(row[0].strip() for row in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--records', type=int, default=1_000_000, help='access records to load')
    parser.add_argument('--days', type=int, default=30, help='days the access records are spread over')
    parser.add_argument('--rounds', type=int, default=3, help='timed rounds after one warm-up; medians are reported')
    parser.add_argument(
        '--database-url',
        help='PostgreSQL or MySQL server to use instead of a temporary SQLite file, '
        'for example postgresql://postgres@127.0.0.1:5432/test',
    )
    options = parser.parse_args()

    with tempfile.TemporaryDirectory() as directory:
        base_url = options.database_url or f'sqlite:///{directory}/bench.db'
        url, create = isolated_url(base_url)
        run_on_server(base_url, drop_sql(base_url))
        run_on_server(base_url, create)
        os.environ.update({'DATABASE_URL': url, 'JOBS_DATA_DIR': directory})
        settings.reset()
        try:
            run(options)
        finally:
            models.db.obj.close()
            run_on_server(base_url, drop_sql(base_url))


def run(options: argparse.Namespace) -> None:
    day = clock.utcnow().date() - dt.timedelta(days=1)
    start, end = jobs.day_range(day)
    migration.upgrade()  # the private schema starts empty; the job's connection checks that it is current
    with database.connection() as db:
        started = time.perf_counter()
        load(db, options.records, day, options.days)
        loaded = time.perf_counter() - started
        params = [str(start), str(end)] if isinstance(db, peewee.SqliteDatabase) else [start, end]
        statements = [sql.format(p=db.param) for sql in RAW_QUERIES]
        plan = query_plan(db, statements[0], params)
        in_day = db.execute_sql(statements[0], params).fetchone()[0]

    def raw() -> list:
        return [value for sql in statements for value in db.execute_sql(sql, params).fetchone()]

    def job() -> dict:
        return jobs.generate_statistics(day.isoformat())

    raw_times, job_times = [], []
    with database.connection():
        expected = raw()
    result = job()
    for _ in range(options.rounds):
        with database.connection():
            began = time.perf_counter()
            raw()
            raw_times.append(time.perf_counter() - began)
        began = time.perf_counter()
        job()
        job_times.append(time.perf_counter() - began)
    figures = [
        result[key]
        for key in ('page_views', 'unique_visitors', 'active_users', 'new_users', 'new_repositories', 'new_documents')
    ]

    base, ours = statistics.median(raw_times), statistics.median(job_times)
    print(
        f'database: {type(db).__name__}; {options.records:,} access records over {options.days} days, loaded in '
        f'{loaded:.1f} s; day {day}: {in_day:,} records'
    )
    print(f'plan of the access-log aggregate: {plan}')
    print(f'figures match the raw queries: {figures == expected} {figures}')
    print(
        f'raw SQL aggregates (db.execute_sql):   median {base * 1000:8.1f} ms  of {options.rounds} rounds '
        f'{[round(t * 1000, 1) for t in raw_times]}'
    )
    print(
        f'generate_statistics(day) (the job):    median {ours * 1000:8.1f} ms  of {options.rounds} rounds '
        f'{[round(t * 1000, 1) for t in job_times]}'
    )
    verdict = 'met' if ours / base <= AIM_RATIO else 'MISSED'
    print(f'ratio job/raw: {ours / base:.2f}x (aim <= {AIM_RATIO:.0f}x: {verdict})')


if __name__ == '__main__':
    main()
