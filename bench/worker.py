"""The project's enqueue and worker against plain rq's, on a no-op job: enqueue rate, drain rate, latency.

Starts a private embedded Redis and a SQLite database in a temporary directory. The no-op job lives in a module
written there (JOBS_EXTRA_MODULES, on the queue `statistics`, which an --in-process worker may serve), so every
lane runs the very same function from the same queue. Four lanes:

- `rq fork`: plain rq, `Queue(serializer=JSONSerializer).enqueue_call` and `rq.Worker` (a work horse per job);
- `rqjobs fork`: `rqjobs.queues.enqueue` and `rqjobs worker statistics`, as shipped;
- `rq simple`: plain rq's `SimpleWorker` (the job runs in the worker process);
- `rqjobs simple`: `rqjobs worker --in-process statistics`.

Enqueueing is timed first, in this process: blocks of `--block` enqueues through plain rq's path and the project's,
taken in turn, `--enqueue-blocks` each; the rate is the median over the blocks. Then each round runs the lanes one
after the other, in an order that turns by one each round, and for each lane:

1. drain: `--workers` worker processes in burst mode work through them; the rate is jobs / (last job's end − first
   job's start), from rq's job timestamps, so that the workers' start-up is not counted;
2. latency: the same number of workers, started and idle, get `--latency-jobs` jobs one at a time (each enqueued once
   the one before has finished); the latency of one is its end − its enqueue time, from rq's job timestamps.

Printed: medians over the rounds for each lane, and the ratios of the project's lanes to plain rq's (rates: higher is
better; latency: the difference in milliseconds).

Usage: python bench/worker.py [--rounds 3] [--jobs 400] [--latency-jobs 40] [--workers 2] [--lanes 'rq fork,...']
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The project root replaces this script's directory on the path, which holds scripts named like modules.
sys.path[0] = str(ROOT)

import redis
from rq import Queue
from rq.serializers import JSONSerializer

from rqjobs import queues
from rqjobs.embedded import EmbeddedRedis
from rqjobs.settings import Settings

JOB_MODULE = 'bench_noop'
# A queue that an --in-process worker may serve, so that every lane runs the job from the same queue.
QUEUE = 'statistics'
JOB_PATH = f'{JOB_MODULE}.noop'
NOOP_JOBS = '''
JOBS = ('noop',)


def noop():
    """Do nothing."""
'''
START_TIMEOUT = 60
RUN_TIMEOUT = 600
LANES = ('rq fork', 'rqjobs fork', 'rq simple', 'rqjobs simple')

# A plain rq worker, as `rq worker` runs one with the JSON serializer (and a scheduler, as the project's runs one).
PLAIN_WORKER = """
import sys

import redis
from rq import Queue, SimpleWorker, Worker
from rq.serializers import JSONSerializer

url, kind, burst = sys.argv[1], sys.argv[2], sys.argv[3] == 'burst'
connection = redis.Redis.from_url(url)
worker_class = SimpleWorker if kind == 'simple' else Worker
queue = Queue(sys.argv[4], connection=connection, serializer=JSONSerializer)
worker_class([queue], connection=connection, serializer=JSONSerializer).work(burst=burst, with_scheduler=True)
"""


def job_times(connection: redis.Redis, job_ids: list[str], *fields: str) -> list[tuple[float, ...]]:
    """Return the given timestamp fields of each job, as seconds."""
    with connection.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.hmget(f'rq:job:{job_id}', *fields)
        rows = pipe.execute()
    return [tuple(parse_time(value) for value in row) for row in rows]


def parse_time(value: bytes | None) -> float:
    if not value:
        raise RuntimeError('a job has no timestamp: it did not finish')
    return datetime.strptime(value.decode(), '%Y-%m-%dT%H:%M:%S.%fZ').replace(tzinfo=UTC).timestamp()


class Lane:
    """One way of enqueueing and working: plain rq or the project, forking or not."""

    def __init__(self, name: str, connection: redis.Redis, settings: Settings, env: dict, url: str):
        self.name = name
        self.connection = connection
        self.settings = settings
        self.env = env
        self.url = url
        self.project = name.startswith('rqjobs')
        self.simple = name.endswith('simple')
        self.plain_queue = Queue(QUEUE, connection=connection, serializer=JSONSerializer)
        queues.registered_jobs(settings)  # the job modules are imported once per process, not timed

    def enqueue(self) -> str:
        if self.project:
            return queues.enqueue(JOB_PATH, connection=self.connection, settings=self.settings).id
        return self.plain_queue.enqueue_call(JOB_PATH).id

    def start_workers(self, count: int, burst: bool) -> list[subprocess.Popen]:
        if self.project:
            command = [str(Path(sys.executable).with_name('rqjobs')), '-q', 'worker', QUEUE]
            command += ['--in-process'] if self.simple else []
            command += ['--burst'] if burst else []
        else:
            command = [
                sys.executable,
                '-c',
                PLAIN_WORKER,
                self.url,
                'simple' if self.simple else 'fork',
                'burst' if burst else 'wait',
                QUEUE,
            ]
        return [
            subprocess.Popen(command, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for _ in range(count)
        ]


def wait_for(condition, timeout: float, what: str, interval: float = 0.005) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f'bench: timed out waiting for {what}')
        time.sleep(interval)


def stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def enqueue_rates(lanes: list[Lane], blocks: int, per_block: int) -> dict[str, float]:
    """Return each lane's median enqueue rate over small blocks that alternate between the lanes."""
    # Blocks of a hundred, taken in turn, meet the same load from the rest of the machine; one long run per lane
    # would not.
    rates: dict[str, list[float]] = {lane.name: [] for lane in lanes}
    for block in range(blocks):
        for lane in lanes if block % 2 == 0 else reversed(lanes):
            lane.connection.flushall()
            started = time.perf_counter()
            for _ in range(per_block):
                lane.enqueue()
            rates[lane.name].append(per_block / (time.perf_counter() - started))
    lanes[0].connection.flushall()
    return {name: statistics.median(values) for name, values in rates.items()}


def run_lane(lane: Lane, options: argparse.Namespace) -> dict[str, float]:
    connection = lane.connection
    connection.flushall()
    job_ids = [lane.enqueue() for _ in range(options.jobs)]

    workers = lane.start_workers(options.workers, burst=True)
    try:
        for process in workers:
            process.wait(timeout=RUN_TIMEOUT)
    finally:
        stop(workers)
    if any(process.returncode for process in workers):
        raise SystemExit(f'bench: a {lane.name} worker exited with status {workers[0].returncode}')
    times = job_times(connection, job_ids, 'started_at', 'ended_at')
    drain = (len(times) - 1) / (max(end for _, end in times) - min(start for start, _ in times))

    connection.flushall()
    workers = lane.start_workers(options.workers, burst=False)
    latencies = []
    try:
        wait_for(lambda: connection.scard('rq:workers') >= options.workers, START_TIMEOUT, f'{lane.name} workers')
        for index in range(options.latency_jobs + 3):
            job_id = lane.enqueue()
            key = f'rq:job:{job_id}'
            wait_for(lambda key=key: connection.hget(key, 'ended_at'), RUN_TIMEOUT, 'a job', 0.0005)
            if index >= 3:  # the first jobs warm the workers up
                ((enqueued, ended),) = job_times(connection, [job_id], 'enqueued_at', 'ended_at')
                latencies.append(ended - enqueued)
    finally:
        stop(workers)
    return {'drain': drain, 'latency': statistics.median(latencies)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--rounds', type=int, default=3, help='rounds; medians are reported')
    parser.add_argument('--jobs', type=int, default=400, help='jobs enqueued and drained per lane and round')
    parser.add_argument('--latency-jobs', type=int, default=40, help='jobs run one at a time per lane and round')
    parser.add_argument('--workers', type=int, default=2, help='worker processes per lane')
    parser.add_argument('--enqueue-blocks', type=int, default=40, help='alternating blocks of enqueues per lane')
    parser.add_argument('--block', type=int, default=100, help='enqueues per block')
    parser.add_argument('--lanes', default=','.join(LANES), help='lanes to run, comma-separated')
    options = parser.parse_args()
    lanes_wanted = [lane.strip() for lane in options.lanes.split(',')]

    with tempfile.TemporaryDirectory() as directory:
        Path(directory, f'{JOB_MODULE}.py').write_text(NOOP_JOBS)
        server = EmbeddedRedis(Path(directory) / 'redis')
        url = server.ensure_running()
        env = {
            **os.environ,
            'REDIS_URL': url,
            'JOBS_DATA_DIR': directory,
            'DATABASE_URL': f'sqlite:///{directory}/jobs.db',
            'JOBS_EXTRA_MODULES': f'{JOB_MODULE}={QUEUE}',
            'PYTHONPATH': os.pathsep.join(filter(None, [directory, str(ROOT), os.environ.get('PYTHONPATH')])),
        }
        os.environ.update({name: env[name] for name in ('REDIS_URL', 'JOBS_DATA_DIR', 'DATABASE_URL')})
        os.environ['JOBS_EXTRA_MODULES'] = env['JOBS_EXTRA_MODULES']
        sys.path.insert(0, directory)
        try:
            settings = Settings.from_env()
            from rqjobs.connections import get_redis

            connection = get_redis(settings)
            lanes = [Lane(name, connection, settings, env, url) for name in LANES if name in lanes_wanted]
            # Enqueueing does not depend on the worker: one plain lane and one project lane stand for both.
            enqueue = enqueue_rates(
                [lane for lane in lanes if not lane.simple] or lanes, options.enqueue_blocks, options.block
            )
            results: dict[str, list[dict[str, float]]] = {lane.name: [] for lane in lanes}
            for round_index in range(options.rounds):
                turn = round_index % len(lanes)
                for lane in lanes[turn:] + lanes[:turn]:
                    results[lane.name].append(run_lane(lane, options))
                    print(f'round {round_index + 1} {lane.name}: {results[lane.name][-1]}', file=sys.stderr)
        finally:
            server.stop()

    medians = {
        name: {measure: statistics.median(run[measure] for run in runs) for measure in runs[0]}
        for name, runs in results.items()
    }
    print(
        f'{options.workers} workers, {options.jobs} jobs drained and {options.latency_jobs} timed one by one per lane'
    )
    print(f'medians of {options.rounds} interleaved rounds')
    print(f'{"lane":14} {"drain/s":>9} {"p50 ms":>8}')
    for name, figures in medians.items():
        print(f'{name:14} {figures["drain"]:9.1f} {figures["latency"] * 1000:8.2f}')
    print()
    ours_enqueue = next(rate for name, rate in enqueue.items() if name.startswith('rqjobs'))
    plain_enqueue = next(rate for name, rate in enqueue.items() if name.startswith('rq '))
    print(
        f'enqueue ({options.enqueue_blocks} alternating blocks of {options.block}): rq {plain_enqueue:.0f}/s, '
        f'rqjobs {ours_enqueue:.0f}/s, rqjobs/rq {ours_enqueue / plain_enqueue:.2f}x'
    )
    for kind in ('fork', 'simple'):
        ours, plain = medians.get(f'rqjobs {kind}'), medians.get(f'rq {kind}')
        if ours and plain:
            print(
                f'rqjobs/rq {kind:6}: drain {ours["drain"] / plain["drain"]:.2f}x, '
                f'p50 latency {(ours["latency"] - plain["latency"]) * 1000:+.2f} ms'
            )
    fork, simple = medians.get('rqjobs fork'), medians.get('rqjobs simple')
    if fork and simple:
        print(f'rqjobs simple/fork: drain {simple["drain"] / fork["drain"]:.2f}x')


if __name__ == '__main__':
    main()
