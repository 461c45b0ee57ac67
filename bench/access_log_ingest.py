"""Sustained access-log ingest: a producer at a fixed rate against the plan and one worker, as shipped.

For each rate, twice in turn (the drain going on by itself, as shipped, and with ACCESS_LOG_CONTINUE=false, which
is the drain as it was: one budget per plan run), it starts a private embedded Redis and a SQLite database in a
temporary directory, a `jobs scheduler` (every plan entry but `process-access-logs` switched off) and one
`jobs worker` with default settings, then sends entries through `enqueue_access_logs` (the project's producer, one
call per 10 ms tick: one Python process cannot make 10,000 single calls a second on a small machine) for
--seconds. Then it waits up to the plan's gap for the drain to store what is left, and prints per rate and mode:

- sent, stored, dropped (refused by the producer, counted) and left (still in Redis at the end): sent = stored +
  dropped + dead-lettered + left, checked;
- p50 and p99 of the time from send to stored: a row's `created_at` (when the drain took it) minus its
  `access_time` (the producer's clock at the send, the default when the entry names none);
- the buffer's largest length (sampled every 0.5 s), the drain runs, the share of the time the worker spent in them,
  and the drain's speed in them (stored per second of run): a rate above it cannot be carried on this machine.

The knee is the highest rate with nothing dropped or left and p99 <= 35 s.
Usage: python bench/access_log_ingest.py [--seconds 60] [--rates 2000,5000,10000]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The project root replaces this script's directory on the path, which holds scripts named like modules.
sys.path[0] = str(ROOT)

from bench.harness import DRAIN_ENTRY, drain_alone_env, jobs_command
from models import AccessRecord
from rqjobs import settings as settings_module
from rqjobs.contrib import access_log as producer
from rqjobs.embedded import EmbeddedRedis

ENTRY = DRAIN_ENTRY
TICK = 0.01
SAMPLE = 0.5
# The plan's 30 s and the scheduler's 5 s look, and some slack: long enough for the last run of either mode.
TAIL = 45
LATENCY_MAX = 35
MODES = (('continuing', 'true'), ('before', 'false'))


def entry(number: int) -> dict:
    return {
        'resource_type': 'Repository',
        'resource_id': f'owner/repo{number % 500}',
        'user_id': None,
        'ip_address': '203.0.113.7',
        'user_agent': 'Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0',
        'path': f'/owner/repo{number % 500}/docs/page{number % 37}',
        'method': 'GET',
        'status_code': 200,
        'response_time': 12,
    }


def produce(connection, rate: int, seconds: float) -> dict:
    """Send `rate` entries a second for `seconds`, paced per tick; sample the buffer meanwhile."""
    sent = accepted = 0
    largest = 0
    started = time.monotonic()
    next_sample = started
    while True:
        now = time.monotonic()
        if now - started >= seconds:
            break
        due = int((now - started) * rate) - sent
        if due > 0:
            accepted += producer.enqueue_access_logs([entry(sent + i) for i in range(due)])
            sent += due
        if now >= next_sample:
            largest = max(largest, connection.llen(producer.BUFFER_KEY))
            next_sample += SAMPLE
        time.sleep(max(0.0, TICK - (time.monotonic() - now)))
    return {'sent': sent, 'accepted': accepted, 'largest': largest, 'send_seconds': time.monotonic() - started}


def backlog(connection) -> int:
    return connection.llen(producer.BUFFER_KEY) + connection.llen(producer.PROCESSING_KEY)


def phase(rate: int, mode: str, continuing: str, seconds: float) -> dict:
    with tempfile.TemporaryDirectory() as directory:
        server = EmbeddedRedis(Path(directory) / 'redis')
        env = drain_alone_env(directory, server.ensure_running(), ACCESS_LOG_CONTINUE=continuing)
        try:
            subprocess.run(jobs_command('-q', 'db', 'init'), cwd=ROOT, env=env, check=True, capture_output=True)
            # This process sends through the same settings as the processes it starts.
            os.environ.update({key: env[key] for key in ('REDIS_URL', 'JOBS_DATA_DIR', 'DATABASE_URL')})
            settings_module.reset()
            connection = server.client(timeout=10)
            drops_before = {reason: producer.local_drop_count(reason) for reason in ('full', 'unavailable', 'error')}
            with contextlib.ExitStack() as stack:
                processes = []
                for name, command in (('scheduler', ('scheduler',)), ('worker', ('-q', 'worker'))):
                    log = stack.enter_context(open(Path(directory) / f'{name}.log', 'w'))
                    processes.append(
                        subprocess.Popen(jobs_command(*command), cwd=ROOT, env=env, stdout=log, stderr=log)
                    )
                try:
                    # The plan is registered (its first run 30 s ahead) and the worker waits on its queues.
                    deadline = time.monotonic() + 30
                    while not (connection.zcard('rq:scheduler:scheduled_jobs') and connection.scard('rq:workers')):
                        if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
                            raise SystemExit(f'the scheduler or the worker did not start; see the logs in {directory}')
                        time.sleep(0.1)
                    began = time.monotonic()
                    sent = produce(connection, rate, seconds)
                    deadline = time.monotonic() + TAIL
                    while time.monotonic() < deadline and (backlog(connection) or connection.exists(producer.LOCK_KEY)):
                        sent['largest'] = max(sent['largest'], connection.llen(producer.BUFFER_KEY))
                        time.sleep(SAMPLE)
                    sent['wall'] = time.monotonic() - began
                finally:
                    for process in processes:
                        process.send_signal(signal.SIGTERM)
                    for process in processes:
                        process.wait(timeout=120)
            dropped = {reason: producer.local_drop_count(reason) - drops_before[reason] for reason in drops_before}
            left = backlog(connection)
            dead = connection.llen(producer.DEAD_KEY)
            runs, busy = drain_runs(connection)
            with contextlib.closing(sqlite3.connect(f'{directory}/bench.db')) as db:
                delays = sorted(
                    value
                    for (value,) in db.execute(
                        'SELECT (julianday(created_at) - julianday(access_time)) * 86400.0 '
                        f'FROM {AccessRecord._meta.table_name}'
                    )
                )
            connection.close()
        finally:
            server.stop()
    stored = len(delays)
    if sent['sent'] != stored + sum(dropped.values()) + dead + left:
        print(
            f'  warning: {mode} at {rate}/s: sent {sent["sent"]} != stored {stored} + dropped {sum(dropped.values())} '
            f'+ dead-lettered {dead} + left {left}'
        )
    return {
        'rate': rate,
        'mode': mode,
        **sent,
        'stored': stored,
        'dropped': sum(dropped.values()),
        'dropped_by_reason': dropped,
        'dead': dead,
        'left': left,
        'p50': percentile(delays, 0.50),
        'p99': percentile(delays, 0.99),
        'runs': runs,
        'busy': busy,
    }


def drain_runs(connection) -> tuple[int, float]:
    """Return the drain runs the worker ran (plan runs and their continuations) and the seconds they took."""
    runs, busy = 0, 0.0
    for key in connection.scan_iter(f'rq:job:{ENTRY}-*'):
        started, ended = connection.hmget(key, 'started_at', 'ended_at')
        if started and ended:
            runs += 1
            busy += (parse_time(ended) - parse_time(started)).total_seconds()
    return runs, busy


def parse_time(value: bytes) -> datetime:
    return datetime.fromisoformat(value.decode().rstrip('Z'))


def percentile(values: list[float], share: float) -> float | None:
    if not values:
        return None
    return values[min(len(values) - 1, int(share * len(values)))]


def show(result: dict) -> str:
    p50 = '-' if result['p50'] is None else f'{result["p50"]:.1f}'
    p99 = '-' if result['p99'] is None else f'{result["p99"]:.1f}'
    achieved = result['sent'] / result['send_seconds']
    drained = f'{result["stored"] / result["busy"]:.0f}' if result['busy'] else '-'
    return (
        f'{result["rate"]:>6} {result["mode"]:<11} {result["sent"]:>8} {achieved:>8.0f} {result["stored"]:>8} '
        f'{result["dropped"]:>8} {result["left"]:>6} {p50:>6} {p99:>6} {result["largest"]:>7} {result["runs"]:>5} '
        f'{100 * result["busy"] / result["wall"]:>5.0f}% {drained:>8}'
    )


def knee(results: list[dict], mode: str) -> str:
    good = [
        r['rate']
        for r in results
        if r['mode'] == mode
        and r['dropped'] == 0
        and r['left'] == 0
        and r['p99'] is not None
        and r['p99'] <= LATENCY_MAX
    ]
    return f'{max(good)}/s' if good else 'none of the rates tried'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--seconds', type=float, default=60, help='seconds the producer sends at each rate')
    parser.add_argument('--rates', default='2000,5000,10000', help='events per second, comma-separated')
    options = parser.parse_args()
    try:
        rates = [int(rate) for rate in options.rates.split(',')]
    except ValueError:
        parser.error(f'--rates {options.rates!r} is not a list of whole numbers; for example --rates 2000,5000')
    if any(rate <= 0 for rate in rates) or options.seconds <= 0:
        parser.error('rates and --seconds must be above 0; for example --rates 2000,5000 --seconds 60')

    print(
        f'{options.seconds:g} s per rate, one worker, the plan every 30 s; "continuing" is the drain as shipped, '
        f'"before" the same with ACCESS_LOG_CONTINUE=false (one budget per plan run)'
    )
    header = (
        f'{"rate":>6} {"mode":<11} {"sent":>8} {"sent/s":>8} {"stored":>8} {"dropped":>8} {"left":>6} '
        f'{"p50 s":>6} {"p99 s":>6} {"buffer":>7} {"runs":>5} {"busy":>6} {"drain/s":>8}'
    )
    print(header)
    results = []
    for index, rate in enumerate(rates):
        # Interleaved, the mode that goes first alternating, so that neither always meets a warmer machine.
        modes = MODES if index % 2 == 0 else MODES[::-1]
        for mode, continuing in modes:
            result = phase(rate, mode, continuing, options.seconds)
            results.append(result)
            print(show(result), flush=True)
    print(
        f'knee (highest rate with 0 dropped, 0 left and p99 <= {LATENCY_MAX} s): '
        f'continuing {knee(results, "continuing")}, before {knee(results, "before")}'
    )


if __name__ == '__main__':
    main()
