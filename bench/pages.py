"""Time to write a warehouse's pages through queue `pages` against a model server answering in a fixed time.

Starts a private embedded Redis, a SQLite database in a temporary directory and the stand-in chat server
(`tests/chat_server.py --delay 0.3`) as a process. For each number of `rqjobs worker pages` processes (with
LLM_CONCURRENCY=8) and each repeat: one warehouse with --pages open pages is created directly in the database, the
workers are started and waited on until all are registered in Redis (their start-up is not timed), then the clock
starts just before `enqueue_pages` and stops when the warehouse's finishing job ends (its `ended_at`). Checks: every
page Completed, the server saw exactly one request per page and never more than 8 at once.

Printed per size (medians of the repeats): the wall time; the ideal, pages × delay / min(workers, cap); their ratio
(aim ≤ 1.25x); and the queue's overhead per page as a fraction of the call (aim ≤ 5 %), two ways: from the wall
time, (wall × min(workers, cap) − pages × delay) / pages; and from rq's job timestamps, the median of
(ended_at − started_at − delay) per job plus the median idle gap of a worker between the end of one job and the start
of its next (dequeue, fork) while jobs were waiting.

Usage: python bench/pages.py [--pages 100] [--delay 0.3] [--sizes 1,2,4,8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The project root replaces this script's directory on the path, which holds scripts named like modules.
sys.path[0] = str(ROOT)

from rq import worker_registration

from bench.harness import jobs_command
from rqjobs import queues
from rqjobs.embedded import EmbeddedRedis

CAP = 8
REGISTER_TIMEOUT = 60
RUN_TIMEOUT = 600


def server_call(base_url: str, path: str, method: str = 'GET') -> dict:
    root = base_url.rstrip('/').removesuffix('/v1')
    request = urllib.request.Request(root + path, method=method, data=b'' if method == 'POST' else None)
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b'{}')


def open_warehouse(count: int) -> str:
    """Create a Processing warehouse with `count` Pending pages, each with a small model request; return its id."""
    from models import Document, DocumentCatalog, PageStatus, Warehouse, WarehouseStatus
    from rqjobs import database

    with database.connection() as db_, db_.atomic():
        warehouse = Warehouse.create(
            organization_name='bench',
            name='pages',
            address='https://example.invalid/bench/pages.git',
            status=WarehouseStatus.PROCESSING,
        )
        document = Document.create(warehouse=warehouse.id)
        for number in range(count):
            digest = f'bench-{warehouse.id}-{number}'
            DocumentCatalog.create(
                warehouse=warehouse.id,
                document=document.id,
                name=f'Page {number}',
                url=f'page-{number}',
                sort_order=number,
                status=PageStatus.PENDING,
                request={
                    'messages': [{'role': 'user', 'content': f'Write page {number} about `src/module_{number}.py`.'}],
                    'digest': digest,
                    'sources': [],
                    'outlined': [],
                    'omitted': [],
                    'estimated_tokens': 20,
                },
                request_digest=digest,
            )
        return str(warehouse.id)


def page_statuses(warehouse_id: str) -> dict[str, int]:
    from models import DocumentCatalog
    from rqjobs import database

    with database.connection():
        rows = DocumentCatalog.select(DocumentCatalog.status).where(DocumentCatalog.warehouse == warehouse_id).tuples()
        counts: dict[str, int] = defaultdict(int)
        for (status,) in rows:
            counts[status] += 1
        return dict(counts)


def one_run(workers: int, options, env: dict, directory: Path, connection, base_url: str) -> dict:
    from rqjobs.pages import jobs as page_jobs

    connection.flushall()
    server_call(base_url, '/_reset', 'POST')
    warehouse_id = open_warehouse(options.pages)
    queue = queues.JsonQueue(queues.PAGES, connection=connection)
    with contextlib.ExitStack() as stack:
        processes = []
        for number in range(workers):
            log = stack.enter_context(open((options.logs or directory) / f'worker-{workers}-{number}.log', 'a'))
            processes.append(
                subprocess.Popen(jobs_command('worker', queues.PAGES), cwd=ROOT, env=env, stdout=log, stderr=log)
            )
        try:
            deadline = time.monotonic() + REGISTER_TIMEOUT
            while len(worker_registration.get_keys(queue=queue)) < workers:
                if time.monotonic() > deadline:
                    raise SystemExit(f'only {len(worker_registration.get_keys(queue=queue))} of {workers} registered')
                time.sleep(0.02)
            started = time.time()
            enqueue_started = time.perf_counter()
            page_jobs.enqueue_pages(warehouse_id, connection)
            enqueue_seconds = time.perf_counter() - enqueue_started
            finish_id = page_jobs.finish_job_id(warehouse_id)
            deadline = time.monotonic() + RUN_TIMEOUT
            while True:
                finish = queues.JsonJob.fetch(finish_id, connection=connection)
                if finish.get_status() in ('finished', 'failed') and finish.ended_at:
                    break
                if time.monotonic() > deadline:
                    raise SystemExit(f'the finishing job did not end within {RUN_TIMEOUT} s')
                time.sleep(0.01)
        finally:
            for process in processes:
                process.send_signal(signal.SIGTERM)
            for process in processes:
                process.wait(timeout=60)
    wall = finish.ended_at.timestamp() - started
    stats = server_call(base_url, '/_stats')
    statuses = page_statuses(warehouse_id)
    problems = []
    if finish.get_status() != 'finished':
        problems.append(f'finishing job {finish.get_status()}')
    if statuses.get('Completed', 0) != options.pages:
        problems.append(f'pages {statuses}')
    if stats['requests'] != options.pages:
        problems.append(f'{stats["requests"]} requests')
    if stats['max_in_flight'] > CAP:
        problems.append(f'max_in_flight {stats["max_in_flight"]}')

    page_ids = [page_jobs.page_job_id(warehouse_id, f'page-{number}') for number in range(options.pages)]
    runs = [job for job in queues.JsonJob.fetch_many(page_ids, connection=connection) if job is not None]
    in_job = [(job.ended_at - job.started_at).total_seconds() - options.delay for job in runs]
    by_worker = defaultdict(list)
    for job in runs:
        by_worker[job.worker_name].append((job.started_at.timestamp(), job.ended_at.timestamp()))
    gaps = []
    for spans in by_worker.values():
        spans.sort()
        gaps.extend(later[0] - earlier[1] for earlier, later in zip(spans, spans[1:], strict=False))
    return {
        'wall': wall,
        'enqueue': enqueue_seconds,
        'in_job': statistics.median(in_job) if in_job else float('nan'),
        'gap': statistics.median(gaps) if gaps else 0.0,
        'max_in_flight': stats['max_in_flight'],
        'problems': problems,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--pages', type=int, default=100, help='pages of the warehouse')
    parser.add_argument('--delay', type=float, default=0.3, help='seconds the server takes to answer')
    parser.add_argument('--sizes', default='1,2,4,8', help='numbers of worker processes, comma-separated')
    parser.add_argument('--repeats', type=int, default=3, help='runs per size; medians are printed')
    parser.add_argument('--logs', type=Path, default=None, help="directory to keep the workers' logs in")
    options = parser.parse_args()
    sizes = [int(size) for size in options.sizes.split(',')]

    with tempfile.TemporaryDirectory() as name, contextlib.ExitStack() as stack:
        directory = Path(name)
        server = EmbeddedRedis(directory / 'redis')
        stack.callback(server.stop)
        chat = subprocess.Popen(
            [sys.executable, str(ROOT / 'tests' / 'chat_server.py'), '--port', '0', '--delay', str(options.delay)],
            stdout=subprocess.PIPE,
            text=True,
        )
        stack.callback(chat.wait, timeout=30)
        stack.callback(chat.send_signal, signal.SIGTERM)
        base_url = chat.stdout.readline().strip()
        env = dict(
            os.environ,
            REDIS_URL=server.ensure_running(),
            JOBS_DATA_DIR=name,
            DATABASE_URL=f'sqlite:///{name}/bench.db',
            LLM_BASE_URL=base_url,
            LLM_MODEL='bench-model',
            LLM_CONCURRENCY=str(CAP),
        )
        env.pop('TEST_DATABASE_URL', None)
        os.environ.update(env)
        subprocess.run(jobs_command('-q', 'db', 'init'), cwd=ROOT, env=env, check=True, capture_output=True)
        connection = server.client(timeout=10)

        print(f'{options.pages} pages, server answering in {options.delay:g} s, LLM_CONCURRENCY={CAP}, ')
        print(f'medians of {options.repeats} runs; timed from enqueue_pages to the end of the finishing job')
        print(
            f'{"workers":>7} {"wall s":>7} {"ideal s":>7} {"ratio":>6} {"ovh/wall":>8} '
            f'{"in-job":>7} {"gap":>6} {"ovh/jobs":>8} {"enqueue":>7}  checks'
        )
        for workers in sizes:
            runs = [one_run(workers, options, env, directory, connection, base_url) for _ in range(options.repeats)]
            parallel = min(workers, CAP)
            wall = statistics.median(run['wall'] for run in runs)
            ideal = options.pages * options.delay / parallel
            from_wall = (wall * parallel - options.pages * options.delay) / options.pages / options.delay
            in_job = statistics.median(run['in_job'] for run in runs)
            gap = statistics.median(run['gap'] for run in runs)
            enqueue = statistics.median(run['enqueue'] for run in runs)
            problems = sorted({problem for run in runs for problem in run['problems']})
            checks = 'ok' if not problems else '; '.join(problems)
            print(
                f'{workers:>7} {wall:>7.2f} {ideal:>7.2f} {wall / ideal:>5.2f}x {from_wall:>8.1%} '
                f'{in_job * 1000:>5.0f}ms {gap * 1000:>4.0f}ms {(in_job + gap) / options.delay:>8.1%} '
                f'{enqueue * 1000:>5.0f}ms  {checks}'
            )
        print('aims: ratio ≤ 1.25x; overhead per page ≤ 5 % of the call (ovh/wall, ovh/jobs = (in-job + gap) / delay)')


if __name__ == '__main__':
    main()
