"""Access-log jobs (queue `access_log`): the entries the web side buffers in Redis become `AccessRecord` rows.

The producer (`rqjobs.contrib.access_log`) appends entries to a capped Redis list. `process_access_log`, run every
30 s, moves entries batch by batch to a processing list, inserts each batch in one transaction and removes it from
Redis only after the commit, so a worker killed at any point loses nothing, and a replayed entry is refused by the
unique `event_id`. A run that stops at its budget with a backlog left enqueues the next run at once
(`queues.continue_job`), and the plan starts a run before its time once the buffer is a quarter full (`backlogged`):
so sustained ingest keeps up with the drain's speed, and at low traffic the plan's runs are all there is.
Entries the database must not see go to a dead-letter list with the reason; `requeue_dead` puts them back after a
fix. The sum holds: entries sent = rows stored + entries dead-lettered + drops counted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import peewee
import redis
from redis.exceptions import NoScriptError
from rq.job import get_current_job

from models import AccessRecord
from rqjobs import clock, connections, database, limits, queues
from rqjobs.contrib.access_log import (
    BUFFER_KEY,
    DEAD_KEY,
    DROPPED_KEY,
    EARLIEST,
    FUTURE_TOLERANCE,
    LOCK_KEY,
    PROCESSING_KEY,
    # The producer's public names stay importable from here, where they were before the producer moved.
    AccessLogMiddleware,  # noqa: F401
    enqueue_access_log,  # noqa: F401
    enqueue_access_logs,  # noqa: F401
    entry_from_request,  # noqa: F401
    local_drop_count,  # noqa: F401
    run_script,
    validate,
)
from rqjobs.exceptions import DatabaseUnavailable, PermanentJobError
from rqjobs.settings import Settings, get_settings, redact_url

logger = logging.getLogger(__name__)

JOBS = ('process_access_log', 'cleanup_old_access_records', 'cleanup_old_access_logs')

# A valid entry is a few KB even with every character escaped; anything far larger is not ours.
RAW_MAX = 65_536
DAYS_MAX = 36_500
# Short enough that a killed drainer's lock is gone by the second next run, long enough for any one batch.
LOCK_MS = 60_000
CLEANUP_CHUNK = 5000
# The plan runs the drain before its time once the buffer is this full (`backlogged`): the scheduler looks every
# 5 s, so a jump from no traffic to 10,000 entries a second still finds room (25,000 + 5 s of it, of 100,000).
EARLY_FILL = 0.25
DEAD_CHUNK = 1000

# Every column of a row, in the order the drain builds row tuples.
FIELDS = (
    AccessRecord.event_id,
    AccessRecord.resource_type,
    AccessRecord.resource_id,
    AccessRecord.user_id,
    AccessRecord.ip_address,
    AccessRecord.user_agent,
    AccessRecord.path,
    AccessRecord.method,
    AccessRecord.status_code,
    AccessRecord.response_time,
    AccessRecord.access_time,
    AccessRecord.created_at,
)

# ---- Lua scripts ----

# KEYS: buffer, processing, lock. ARGV: token, count, lock ms. Unless the processing list still holds entries (left
# by a killed run), moves up to `count` entries there from the buffer; 0 when the lock is no longer ours. The
# entries themselves are read with a plain LRANGE in the same round trip: Lua would copy each one into its reply.
_TAKE = """
if redis.call('GET', KEYS[3]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[3], ARGV[3])
if redis.call('LLEN', KEYS[2]) > 0 then return 1 end
local items = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1)
for i = 1, #items, 1000 do
  redis.call('RPUSH', KEYS[2], unpack(items, i, math.min(i + 999, #items)))
end
redis.call('LTRIM', KEYS[1], #items, -1)
return 1
"""
# KEYS: processing, dead, lock. ARGV: token, count, lock ms, dead entries... Drops the committed head of the
# processing list and records the dead letters together, only while the lock is ours.
_ACKNOWLEDGE = """
if redis.call('GET', KEYS[3]) ~= ARGV[1] then return 0 end
redis.call('LTRIM', KEYS[1], tonumber(ARGV[2]), -1)
for i = 4, #ARGV, 1000 do
  redis.call('RPUSH', KEYS[2], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
redis.call('PEXPIRE', KEYS[3], ARGV[3])
return 1
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_TAKE_SHA = hashlib.sha1(_TAKE.encode()).hexdigest()
_SCRIPTS = {'take': _TAKE, 'acknowledge': _ACKNOWLEDGE, 'release': _RELEASE}


def _run(connection: redis.Redis, name: str, keys: tuple, args: tuple) -> Any:
    """Run one of the drain's scripts by name."""
    return run_script(connection, _SCRIPTS[name], keys, args)


# ---- Draining ----


def process_access_log() -> dict:
    """Store the buffered access-log entries in the database in batches and dead-letter the malformed ones."""
    # Safe twice: an entry leaves Redis only after its row is committed, and a replayed entry's event_id is
    # refused by the unique index, so a rerun after a kill stores each entry exactly once.
    settings = get_settings()
    started = time.monotonic()
    result = {'status': 'done', 'stored': 0, 'duplicates': 0, 'dead_lettered': 0, 'batches': 0}
    token = uuid.uuid4().hex
    job = get_current_job()
    timeout = job.timeout if job is not None else None
    soft_limit = limits.soft_limit_for(timeout) if timeout and timeout > 0 else settings.soft_time_limit
    with connections.get_redis(settings) as connection:
        if not connection.set(LOCK_KEY, token, nx=True, px=LOCK_MS):
            logger.info('access log: another drain is running; nothing to do')
            busy = {'status': 'busy', 'remaining': _backlog(connection), 'elapsed': 0.0, 'continued': None}
            return {**result, **busy}
        try:
            # Half the soft limit: a batch takes a second or so, and the run ends well before it is stopped.
            stopped = _drain(connection, token, settings, result, started + soft_limit / 2)
        finally:
            _run(connection, 'release', (LOCK_KEY,), (token,))
        result['remaining'] = _backlog(connection)
        result['continued'] = None
        if stopped in ('budget', 'time') and result['remaining'] and settings.access_log_continue:
            # Left for the plan, the backlog would wait up to 35 s while the buffer fills: the next run starts now.
            result['continued'] = queues.continue_job(connection, settings=settings)
    result['elapsed'] = round(time.monotonic() - started, 3)
    logger.info(
        'access log: %d stored, %d duplicates, %d dead-lettered in %d batches, %d remaining (%.2f s)%s',
        result['stored'],
        result['duplicates'],
        result['dead_lettered'],
        result['batches'],
        result['remaining'],
        result['elapsed'],
        f'; {result["continued"]} goes on' if result['continued'] else '',
    )
    return result


def backlogged(connection: redis.Redis) -> bool:
    """Return whether the buffer is full enough for the plan to run the drain before its time."""
    settings = get_settings()
    if not settings.access_log_continue:
        return False
    return connection.llen(BUFFER_KEY) >= settings.access_log_buffer_max * EARLY_FILL


def _drain(connection: redis.Redis, token: str, settings: Settings, result: dict, stop_at: float) -> str:
    """Store batches until the buffer is empty, the run's budget is spent or `stop_at`; return which stopped it."""
    budget = settings.access_log_max_per_run
    try:
        with database.connection(settings) as db:
            while budget > 0:
                if time.monotonic() >= stop_at:
                    return 'time'
                raws = _take(connection, token, min(settings.access_log_batch_size, budget))
                if raws is None:
                    logger.warning('access log: the drain lock expired; stopping, the next run goes on')
                    result['status'] = 'lock lost'
                    return 'lock lost'
                if not raws:
                    return 'empty'
                rows, kept, dead = _parse(raws, clock.utcnow())
                stored, refused = _store(db, rows, kept)
                dead += refused
                letters = [_dead_letter(raw, reason) for raw, reason in dead]
                if not _run(
                    connection,
                    'acknowledge',
                    (PROCESSING_KEY, DEAD_KEY, LOCK_KEY),
                    (token, len(raws), LOCK_MS, *letters),
                ):
                    # The rows are committed; whoever holds the lock now replays the batch and finds them stored.
                    logger.warning('access log: the drain lock expired after a commit; stopping')
                    result['status'] = 'lock lost'
                    return 'lock lost'
                if dead:
                    logger.warning('access log: %d entries dead-lettered, first because %s', len(dead), dead[0][1])
                result['stored'] += stored
                result['duplicates'] += len(raws) - len(dead) - stored
                result['dead_lettered'] += len(dead)
                result['batches'] += 1
                budget -= len(raws)
            return 'budget'
    except DatabaseUnavailable as exc:
        raise DatabaseUnavailable(
            f'Access log: {exc} The entries stay in Redis and the next run stores them.'
        ) from None
    except (peewee.DatabaseError, peewee.InterfaceError) as exc:
        url = redact_url(settings.database_url)
        reason = ' '.join(str(exc).split())  # drivers' messages span lines
        raise DatabaseUnavailable(
            f'Access log: cannot write to the database {url} ({reason}); it is locked, down or has no schema yet '
            f'(`rqjobs db init`). The entries stay in Redis and the next run stores them.'
        ) from exc


def _take(connection: redis.Redis, token: str, count: int) -> list[bytes] | None:
    """Return the next batch, moved to the processing list first; None when the lock is no longer ours."""

    def attempt() -> list:
        with connection.pipeline(transaction=False) as pipe:
            pipe.evalsha(_TAKE_SHA, 3, BUFFER_KEY, PROCESSING_KEY, LOCK_KEY, token, count, LOCK_MS)
            pipe.lrange(PROCESSING_KEY, 0, count - 1)
            return pipe.execute()

    try:
        owned, raws = attempt()
    except NoScriptError:
        connection.script_load(_TAKE)
        owned, raws = attempt()
    return raws if owned else None


def _parse(raws: list[bytes], created_at: datetime) -> tuple[list[tuple], list[bytes], list[tuple[bytes, str]]]:
    """Split raw entries into row tuples (with the raw text of each) and dead letters; repeats within it are dropped."""
    rows: list[tuple] = []
    kept: list[bytes] = []
    dead: list[tuple[bytes, str]] = []
    seen: set[str] = set()
    latest = created_at + FUTURE_TOLERANCE
    decode = _raw_decode
    for raw in raws:
        try:
            if len(raw) > RAW_MAX:
                raise ValueError(f'entry is larger than {RAW_MAX} bytes')
            try:
                text = raw.decode('utf-8')
                # Whitespace around the object as json.loads() allows it: JSON's four characters, no others.
                start = len(text) - len(text.lstrip(_JSON_SPACE)) if text[:1].isspace() else 0
                data, end = decode(text, start)
                if end != len(text) and text[end:].strip(_JSON_SPACE):
                    raise ValueError(f'extra data at character {end}')
            except UnicodeDecodeError:
                raise ValueError('not UTF-8') from None
            except (ValueError, RecursionError) as exc:
                raise ValueError(f'not JSON ({exc})') from None
            if type(data) is not dict:
                raise ValueError(f'not a JSON object but {type(data).__name__}')
            row = validate(data, created_at, producer=False, latest=latest)
        except ValueError as exc:
            dead.append((raw, str(exc)))
            continue
        if row[0] not in seen:
            seen.add(row[0])
            rows.append((*row, created_at))
            kept.append(raw)
    return rows, kept, dead


# json.loads() without its trailing-whitespace regex, a measurable share of the drain's time.
_raw_decode = json.JSONDecoder().raw_decode
_JSON_SPACE = ' \t\n\r'


def _store(db: peewee.Database, rows: list[tuple], raws: list[bytes]) -> tuple[int, list[tuple[bytes, str]]]:
    """Insert rows in one transaction, ignoring event ids already stored; return the count and refused entries."""
    if not rows:
        return 0, []
    try:
        with db.atomic():
            return _insert(db, rows), []
    except (peewee.IntegrityError, peewee.DataError) as exc:
        # One row the database refuses must not hold the others back forever: store them one by one.
        logger.warning('access log: the database refused a batch (%s); storing it row by row', exc)
    stored, refused = 0, []
    for row, raw in zip(rows, raws, strict=True):
        try:
            with db.atomic():
                stored += _insert(db, [row])
        except (peewee.IntegrityError, peewee.DataError) as exc:
            refused.append((raw, f'refused by the database: {exc}'))
    return stored, refused


def _insert(db: peewee.Database, rows: list[tuple]) -> int:
    prefix, group, suffix, per_statement = _insert_statement(db, AccessRecord._meta.table_name)
    inserted = 0
    for start in range(0, len(rows), per_statement):
        chunk = rows[start : start + per_statement]
        sql = prefix + ', '.join([group] * len(chunk)) + suffix
        inserted += db.execute_sql(sql, _values(db, chunk)).rowcount
    return inserted


def _values(db: peewee.Database, rows: list[tuple]) -> list:
    """Return the statement parameters of rows, flat."""
    if not isinstance(db, peewee.SqliteDatabase):
        return [value for row in rows for value in row]
    # sqlite3 turns each datetime into this same text through a Python adapter (deprecated since Python 3.12);
    # spelled out, it costs a fraction.
    values: list = []
    for row in rows:
        values += row[:10]
        values.append(row[10].isoformat(' '))
        values.append(row[11].isoformat(' '))
    return values


_statements: dict[tuple, tuple[str, str, str, int]] = {}


def _insert_statement(db: peewee.Database, table: str) -> tuple[str, str, str, int]:
    """Return peewee's `insert_many(...).on_conflict_ignore()` for one row, split around its VALUES group.

    peewee builds the dialect's statement (INSERT OR IGNORE, ON CONFLICT DO NOTHING, INSERT IGNORE); repeating
    the group makes the multi-row statement without peewee's per-value work, which costs more than the insert.
    """
    key = (type(db), table)
    if key not in _statements:
        sample = ('', '', '', '', '', '', '', '', 0, 0, EARLIEST, EARLIEST)
        sql, _ = AccessRecord.insert_many([sample], fields=FIELDS).on_conflict_ignore().returning().sql()
        group = '(' + ', '.join([db.param] * len(FIELDS)) + ')'
        prefix, found, suffix = sql.partition(group)
        if not found or group in suffix:
            raise RuntimeError(f'Unexpected INSERT statement from peewee: {sql}')
        _statements[key] = (prefix, group, suffix, max(1, _variable_limit(db) // len(FIELDS)))
    return _statements[key]


def _variable_limit(db: peewee.Database) -> int:
    if isinstance(db, peewee.SqliteDatabase):
        # SQLITE_MAX_VARIABLE_NUMBER: 999 before 3.32, 32766 since.
        return 32_766 if sqlite3.sqlite_version_info >= (3, 32, 0) else 999
    return 65_535


def _dead_letter(raw: bytes, reason: str) -> str:
    text = raw.decode('utf-8', 'surrogateescape')
    letter = {'reason': reason, 'entry': text[:RAW_MAX], 'at': clock.utcnow().isoformat(timespec='seconds') + 'Z'}
    if len(text) > RAW_MAX:
        letter['truncated'] = True
    # ASCII escapes keep bytes that were not UTF-8 (as surrogate escapes), so a requeued entry is the one sent.
    return json.dumps(letter)


def _backlog(connection: redis.Redis) -> int:
    with connection.pipeline(transaction=False) as pipe:
        pipe.llen(BUFFER_KEY)
        pipe.llen(PROCESSING_KEY)
        return sum(pipe.execute())


# ---- Operator actions (the CLI) ----


def status(connection: redis.Redis, settings: Settings | None = None) -> dict:
    """Return the buffer, processing and dead-letter lengths, the drop counts and whether a drain runs."""
    settings = settings or get_settings()
    with connection.pipeline(transaction=False) as pipe:
        pipe.llen(BUFFER_KEY)
        pipe.llen(PROCESSING_KEY)
        pipe.llen(DEAD_KEY)
        pipe.hgetall(DROPPED_KEY)
        pipe.exists(LOCK_KEY)
        buffer, processing, dead, dropped, draining = pipe.execute()
    full, invalid = int(dropped.get(b'full', 0)), int(dropped.get(b'invalid', 0))
    return {
        'buffer': buffer,
        'buffer_max': settings.access_log_buffer_max,
        'processing': processing,
        'dead': dead,
        'dropped': full + invalid,
        'dropped_full': full,
        'dropped_invalid': invalid,
        'draining': bool(draining),
    }


def requeue_dead(connection: redis.Redis, limit: int | None = None) -> int:
    """Move dead-lettered entries (their raw text), oldest first, back to the buffer; return how many moved."""
    moved = 0
    while limit is None or moved < limit:
        count = DEAD_CHUNK if limit is None else min(DEAD_CHUNK, limit - moved)

        def move(pipe: redis.client.Pipeline, count: int = count) -> int:
            letters = pipe.lrange(DEAD_KEY, 0, count - 1)
            pipe.multi()
            if letters:
                pipe.rpush(BUFFER_KEY, *[_raw_entry(letter) for letter in letters])
                pipe.ltrim(DEAD_KEY, len(letters), -1)
            return len(letters)

        # WATCH: a drain appending dead letters meanwhile makes the move start over rather than lose any.
        done = connection.transaction(move, DEAD_KEY, value_from_callable=True)
        if not done:
            break
        moved += done
    if moved:
        logger.info('access log: %d dead-lettered entries requeued', moved)
    return moved


def _raw_entry(letter: bytes) -> bytes:
    try:
        return json.loads(letter)['entry'].encode('utf-8', 'surrogateescape')
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeError):
        return letter  # not one of ours: it goes through validation again and comes back with the reason


# ---- Cleanup ----


def _cutoff(days_to_keep: Any) -> datetime:
    if isinstance(days_to_keep, bool) or not isinstance(days_to_keep, int) or not 1 <= days_to_keep <= DAYS_MAX:
        raise PermanentJobError(
            f'days_to_keep must be a whole number of days from 1 to {DAYS_MAX}, not '
            f'{days_to_keep!r}; for example days_to_keep=90.'
        )
    return clock.utcnow() - timedelta(days=days_to_keep)


def cleanup_old_access_records(days_to_keep: int = 90) -> dict:
    """Delete access records older than `days_to_keep` days, a few thousand rows per short transaction."""
    # Safe twice: every chunk commits on its own, and a rerun deletes only what is still older than the cutoff.
    cutoff = _cutoff(days_to_keep)
    deleted = 0
    with database.connection() as db:
        chunk = min(CLEANUP_CHUNK, _variable_limit(db) - 1)
        while True:
            # Ids first, then a delete by key: short locks, and MySQL has no LIMIT inside IN (SELECT ...).
            ids = [
                row[0]
                for row in AccessRecord.select(AccessRecord.id)
                .where(AccessRecord.access_time < cutoff)
                .limit(chunk)
                .tuples()
            ]
            if not ids:
                break
            with db.atomic():
                deleted += AccessRecord.delete().where(AccessRecord.id.in_(ids)).execute()
    logger.info('access log: %d records older than %s deleted', deleted, cutoff.isoformat(timespec='seconds'))
    return {'deleted': deleted, 'cutoff': cutoff.isoformat(timespec='seconds')}


def cleanup_old_access_logs(days_to_keep: int = 30) -> dict:
    """Delete dead-lettered access-log entries older than `days_to_keep` days from Redis."""
    # Safe twice: each chunk goes in one transaction, and a rerun finds only entries younger than the cutoff.
    cutoff = _cutoff(days_to_keep)
    deleted = 0

    def trim(pipe: redis.client.Pipeline) -> tuple[int, bool]:
        letters = pipe.lrange(DEAD_KEY, 0, DEAD_CHUNK - 1)
        old = 0
        for letter in letters:
            moment = _letter_time(letter)
            if moment is not None and moment >= cutoff:
                break
            old += 1
        pipe.multi()
        pipe.ltrim(DEAD_KEY, old, -1)
        return old, old < DEAD_CHUNK

    done = False
    with connections.get_redis() as connection:
        while not done:
            # Letters are appended as entries die, oldest first: the first young one ends the run.
            old, done = connection.transaction(trim, DEAD_KEY, value_from_callable=True)
            deleted += old
    logger.info('access log: %d dead letters older than %s deleted', deleted, cutoff.isoformat(timespec='seconds'))
    return {'deleted': deleted, 'cutoff': cutoff.isoformat(timespec='seconds')}


def _letter_time(letter: bytes) -> datetime | None:
    """Return when a dead letter was written (naive UTC), or None when it cannot be read (it is removed too)."""
    try:
        moment = datetime.fromisoformat(json.loads(letter)['at'])
    except (ValueError, KeyError, TypeError):
        return None
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment
