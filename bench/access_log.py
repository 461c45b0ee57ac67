"""Throughput of the access-log path: producers against raw redis-py, the drain against a raw executemany.

Runs on a private embedded Redis in a temporary directory and a temporary SQLite file, or the database of
--database-url (in a private table, `bench_access_record`, dropped afterwards, so a test database in use is left
alone). Prints the median of several rounds of each measure and the ratios, all measured in this run.
Usage: python bench/access_log.py [--events N] [--drain-events N] [--rounds R] [--database-url URL]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis
from peewee import SqliteDatabase

from models import AccessRecord
from rqjobs import access_log, clock, database
from rqjobs import settings as settings_module
from rqjobs.contrib import access_log as producer
from rqjobs.embedded import EmbeddedRedis
from rqjobs.settings import redact_url

BATCH = 100
TABLE = 'bench_access_record'
AGENTS = (
    'Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0',
    'Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5',
    'curl/8.5.0',
)
PATHS = (
    '/openai/whisper',
    '/torvalds/linux/docs/overview',
    '/api/Warehouse/GetWarehouseList',
    '/search/rq jobs',
    '/login',
    '/',
    '/admin/users',
    '/pallets/flask/changelog',
    '/文档/示例/页面',
)


def entries(count: int) -> list[dict]:
    """Return `count` realistic entries, built as the middleware builds them."""
    built = []
    for i in range(count):
        headers = {'User-Agent': AGENTS[i % len(AGENTS)], 'X-Forwarded-For': f'203.0.113.{i % 250}, 10.0.0.1'}
        built.append(
            producer.entry_from_request(
                'GET',
                PATHS[i % len(PATHS)],
                headers,
                '10.0.0.1',
                200 if i % 10 else 404,
                3 + i % 40,
                user_id=f'{i % 500:08d}-0000-4000-8000-000000000000',
            )
        )
    return built


def timed(function, count: int) -> float:
    """Return the seconds `count` calls of `function` take."""
    started = time.perf_counter()
    for _ in range(count):
        function()
    return time.perf_counter() - started


def paired(ours, baseline, calls: int, slice_size: int) -> tuple[float, float]:
    """Return the seconds per call of `ours` and `baseline`, run in alternating slices so both see the same load."""
    totals = [0.0, 0.0]
    for index, start in enumerate(range(0, calls, slice_size)):
        count = min(slice_size, calls - start)
        order = ((0, ours), (1, baseline)) if index % 2 == 0 else ((1, baseline), (0, ours))
        for slot, function in order:
            totals[slot] += timed(function, count)
    return totals[0] / calls, totals[1] / calls


def bench_enqueue(raw: redis.Redis, sample: list[dict], options) -> dict:
    payloads = [producer._payload(entry, clock.utcnow()) for entry in sample[:BATCH]]
    entry, batch = sample[0], sample[:BATCH]

    def raw_pipelined() -> None:
        with raw.pipeline(transaction=False) as pipe:
            for payload in payloads:
                pipe.rpush(access_log.BUFFER_KEY, payload)
            pipe.execute()

    one, many = [], []
    for _ in range(options.rounds):
        raw.delete(access_log.BUFFER_KEY)
        one.append(
            paired(
                lambda: producer.enqueue_access_log(entry),
                lambda: raw.rpush(access_log.BUFFER_KEY, payloads[0]),
                options.events,
                250,
            )
        )
        raw.delete(access_log.BUFFER_KEY)
        ours, baseline = paired(lambda: producer.enqueue_access_logs(batch), raw_pipelined, options.events // BATCH, 5)
        many.append((ours / BATCH, baseline / BATCH))
    raw.delete(access_log.BUFFER_KEY)
    return {
        'ours_one': statistics.median(o for o, _ in one),
        'raw_one': statistics.median(b for _, b in one),
        'ours_batch': statistics.median(o for o, _ in many),
        'raw_batch': statistics.median(b for _, b in many),
    }


def clear_table(db) -> None:
    if isinstance(db, SqliteDatabase):
        db.execute_sql(f'DELETE FROM "{TABLE}"')
    else:
        AccessRecord.truncate_table()


def bench_drain(raw: redis.Redis, sample: list[dict], options, batch_size: int) -> dict:
    ours, baseline, baseline_objects = [], [], []

    def drain() -> None:
        with database.connection() as db:
            clear_table(db)
        started = time.perf_counter()
        result = access_log.process_access_log()
        ours.append(time.perf_counter() - started)
        if result['stored'] != len(sample) or result['remaining']:
            raise SystemExit(f'drain stored {result["stored"]} of {len(sample)}: {result}')

    def executemany(raws: list[bytes]) -> None:
        with database.connection() as db:
            parsed = access_log._parse(raws, clock.utcnow())[0]
            prefix, group, suffix, _ = access_log._insert_statement(db, TABLE)
            sql = prefix + group + suffix
            connection = db.connection()
            # The same rows with the parameter values the drain sends (SQLite: datetimes as text, which sqlite3
            # would otherwise make through its adapter), and as parsed (datetime objects).
            for rows, times in (
                ([tuple(access_log._values(db, [row])) for row in parsed], baseline),
                (parsed, baseline_objects),
            ):
                clear_table(db)
                started = time.perf_counter()
                for start in range(0, len(rows), batch_size):
                    with db.atomic():
                        connection.cursor().executemany(sql, rows[start : start + batch_size])
                times.append(time.perf_counter() - started)

    for round_number in range(options.rounds):
        raw.delete(access_log.BUFFER_KEY, access_log.PROCESSING_KEY)
        for start in range(0, len(sample), 1000):
            producer.enqueue_access_logs(sample[start : start + 1000])
        raws = raw.lrange(access_log.BUFFER_KEY, 0, -1)
        if round_number % 2:
            executemany(raws)
            drain()
        else:
            drain()
            executemany(raws)
    count = len(sample)
    return {
        'ours': count / statistics.median(ours),
        'raw': count / statistics.median(baseline),
        'raw_objects': count / statistics.median(baseline_objects),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--events', type=int, default=5000, help='enqueue calls per round')
    parser.add_argument('--drain-events', type=int, default=20000, help='entries drained per round')
    parser.add_argument('--rounds', type=int, default=5, help='rounds; the median is reported')
    parser.add_argument('--database-url', help='database to drain into [default: a temporary SQLite file]')
    options = parser.parse_args()

    with tempfile.TemporaryDirectory() as directory:
        server = EmbeddedRedis(Path(directory) / 'redis')
        url = server.ensure_running()
        os.environ.update(
            {
                'REDIS_URL': url,
                'JOBS_DATA_DIR': directory,
                'DATABASE_URL': options.database_url or f'sqlite:///{directory}/bench.db',
                'ACCESS_LOG_BUFFER_MAX': str(10 * options.drain_events),
                'ACCESS_LOG_MAX_PER_RUN': str(10 * options.drain_events),
            }
        )
        settings_module.reset()
        settings = settings_module.get_settings()
        # A private table: the drain and the baseline write there, and a shared test database stays untouched.
        AccessRecord._meta.set_table_name(TABLE)
        # The drain writes only the private table: the schema of a shared database is not the benchmark's to
        # create, so its check is skipped.
        database._schema_current = settings.database_url
        try:
            with database.connection() as db:
                db.drop_tables([AccessRecord], safe=True)
                db.create_tables([AccessRecord])
            raw = redis.Redis.from_url(url)
            sample = entries(options.drain_events)
            enqueue = bench_enqueue(raw, sample, options)
            drain = bench_drain(raw, sample, options, settings.access_log_batch_size)
        finally:
            with database.connection() as db:
                db.drop_tables([AccessRecord], safe=True)
            server.stop()

    print(
        f'Redis: embedded (unix socket); database: {redact_url(settings.database_url).split(":", 1)[0]}; '
        f'rounds: {options.rounds}, median reported'
    )
    print(f'enqueue, one entry per call ({options.events} calls):')
    print(f'  raw redis-py RPUSH:                 {1 / enqueue["raw_one"]:9.0f} calls/s')
    print(
        f'  enqueue_access_log:                 {1 / enqueue["ours_one"]:9.0f} calls/s  '
        f'ratio {enqueue["raw_one"] / enqueue["ours_one"]:.2f}x (aim >= 0.7x)'
    )
    print(f'enqueue, {BATCH} entries per call:')
    print(f'  raw pipelined RPUSH:                {1 / enqueue["raw_batch"]:9.0f} entries/s')
    print(
        f'  enqueue_access_logs:                {1 / enqueue["ours_batch"]:9.0f} entries/s  '
        f'ratio {enqueue["raw_batch"] / enqueue["ours_batch"]:.2f}x (aim >= 0.5x)'
    )
    print(f'drain, buffer to rows ({options.drain_events} entries, batches of {settings.access_log_batch_size}):')
    sqlite = settings.database_url.startswith('sqlite')
    print(f'  raw executemany, values as sent:    {drain["raw"]:9.0f} rows/s')
    if sqlite:
        print(f'  raw executemany, datetime objects:  {drain["raw_objects"]:9.0f} rows/s')
    aim = 20_000 if sqlite else 10_000
    print(
        f'  process_access_log (end to end):    {drain["ours"]:9.0f} events/s  '
        f'ratio {drain["ours"] / drain["raw"]:.2f}x (aim >= 0.5x, >= {aim} events/s)'
        + (f', {drain["ours"] / drain["raw_objects"]:.2f}x the second' if sqlite else '')
    )


if __name__ == '__main__':
    main()
