"""Throughput of `rqjobs worker --processes N` for CPU-bound and waiting-bound jobs, against one process.

Starts a private embedded Redis and a SQLite database in a temporary directory. Two kinds of job:

- CPU-bound: `process_warehouse` of copies of the demo repository (`rqjobs.demo.build_repository`: clone, analysis,
  catalog), each copy a warehouse of its own (ALLOW_LOCAL_REPOSITORIES=true), on queue `warehouse`;
- waiting-bound: a job that waits for a tiny local TCP server answering after 0.2 s, standing in for a model call,
  in a module written into the temporary directory (JOBS_EXTRA_MODULES), on queue `scale`.

For each number of processes and each repeat, workers are suspended (`rq suspend`), `jobs worker QUEUE
--processes N` is started and waited on until its N workers are registered and suspended (start-up is not timed),
then `--per-worker` × N jobs are submitted and the workers resumed (each within a second), so that neither the
submissions nor the polling compete with the jobs for the cores. The throughput is jobs / (last job's end − first
job's start), from rq's job timestamps. Printed per size (medians of the repeats): jobs/s and the ratio to one
process, against the aims: waiting-bound ≥ 0.8 × N, CPU-bound ≥ 0.8 × min(N, cores). The CPU-bound table also
shows the machine's ceiling measured in the same run: the ratio of N processes spinning a fixed Python loop to one
(on a machine shared with other work it is below min(N, cores), and so is what any pool can reach).

Usage: python bench/scale.py [--sizes 1,2,4,8] [--repeats 3] [--cpu-per-worker 20] [--wait-per-worker 25]
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import shutil
import signal
import socketserver
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The project root replaces this script's directory on the path, which holds scripts named like modules.
sys.path[0] = str(ROOT)

from rq import worker_registration
from rq.suspension import resume, suspend

from bench.harness import jobs_command
from rqjobs import queues
from rqjobs.embedded import EmbeddedRedis

DELAY = 0.2
WAIT_QUEUE = 'scale'
REGISTER_TIMEOUT = 60
RUN_TIMEOUT = 900

# The waiting-bound job: one request to the stand-in server, as a page job makes one call to the model.
SCALE_JOBS = '''
import socket

JOBS = ('wait_for_answer',)


def wait_for_answer(port: int) -> int:
    """Ask the local stand-in server and wait for its answer; return its length."""
    with socket.create_connection(('127.0.0.1', port), timeout=30) as connection:
        connection.sendall(b'?')
        return len(connection.recv(16))
'''


class SlowHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.recv(16)
        time.sleep(DELAY)
        self.request.sendall(b'answer')


class SlowServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def cores() -> tuple[int, int]:
    """Return the machine's core count and the cores this process may run on."""
    return os.cpu_count() or 1, len(os.sched_getaffinity(0))


def spin(_: int) -> None:
    """Spend a fixed amount of CPU time in Python."""
    total = 0
    for number in range(2_000_000):
        total += number


def ceiling(processes: int) -> float:
    """Return the rate of fixed loops that `processes` processes spin through (loops per second)."""
    loops = processes * 4
    began = time.perf_counter()
    with multiprocessing.get_context('fork').Pool(processes) as workers:
        workers.map(spin, range(loops))
    return loops / (time.perf_counter() - began)


@contextlib.contextmanager
def pool(queue_name: str, processes: int, env: dict, log: Path, connection):
    """Run `jobs worker QUEUE --processes N`, suspended, until the block ends; enter once all wait suspended."""
    queue = queues.JsonQueue(queue_name, connection=connection)
    suspend(connection)
    with open(log, 'a') as out:
        process = subprocess.Popen(
            jobs_command('-q', 'worker', queue_name, '--processes', str(processes)),
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=out,
        )
    try:
        deadline = time.monotonic() + REGISTER_TIMEOUT
        while sum(state == b'suspended' for state in states(connection, queue)) < processes:
            if time.monotonic() > deadline or process.poll() is not None:
                raise SystemExit(f'only {states(connection, queue)} of {processes} workers registered and suspended')
            time.sleep(0.02)
        yield
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


def states(connection, queue) -> list[bytes]:
    """Return the state of each worker registered on `queue`."""
    with connection.pipeline(transaction=False) as pipe:
        for key in worker_registration.get_keys(queue=queue):
            pipe.hget(key, 'state')
        return pipe.execute()


def run_until_done(job_ids: list[str], connection) -> list:
    """Resume the workers, wait until every job has ended and return the jobs."""
    resume(connection)
    deadline = time.monotonic() + RUN_TIMEOUT
    while True:
        # One round trip of small reads: the poll takes next to no CPU from the workers.
        with connection.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hget(queues.JsonJob.key_for(job_id), 'status')
            if all(status in (b'finished', b'failed') for status in pipe.execute()):
                return queues.JsonJob.fetch_many(job_ids, connection=connection)
        if time.monotonic() > deadline:
            raise SystemExit(f'the jobs did not end within {RUN_TIMEOUT} s')
        time.sleep(0.2)


def throughput(jobs: list) -> tuple[float, list[str]]:
    """Return jobs per second from the first start to the last end, and what went wrong."""
    problems = sorted({f'{job.id}: {job.get_status()}' for job in jobs if job.get_status() != 'finished'})[:3]
    span = max(job.ended_at for job in jobs) - min(job.started_at for job in jobs)
    return len(jobs) / span.total_seconds(), problems


def waiting_run(processes: int, options, env: dict, directory: Path, connection, port: int) -> tuple[float, list]:
    connection.flushall()
    count = options.wait_per_worker * processes
    with pool(WAIT_QUEUE, processes, env, directory / 'wait.log', connection):
        ids = [queues.enqueue('wait_for_answer', [port], connection=connection).id for _ in range(count)]
        return throughput(run_until_done(ids, connection))


def cpu_run(processes: int, options, env: dict, directory: Path, connection, repository: Path, run: int):
    from rqjobs import warehouse as warehouses

    connection.flushall()
    count = options.cpu_per_worker * processes
    copies = []
    for number in range(count):
        # Each copy is a warehouse of its own (organization: the parent directory, name: the directory).
        copy = directory / 'repos' / f'run{run}' / f'inkwell-{number}'
        shutil.copytree(repository, copy)
        copies.append(copy)
    with pool(queues.WAREHOUSE, processes, env, directory / 'cpu.log', connection):
        rows = [warehouses.submit_warehouse(str(copy), connection=connection) for copy in copies]
        ids = [warehouses.process_job_id(row.id) for row in rows]
        result = throughput(run_until_done(ids, connection))
    for copy in copies:
        shutil.rmtree(copy)
    return result


def report(title: str, sizes: list[int], rates: dict, aim, problems: dict, machine: dict | None = None) -> None:
    print(title)
    print(f'{"workers":>7} {"jobs/s":>8} {"ratio":>6} {"aim":>6} {"ceiling" if machine else "":>7}  checks')
    base = statistics.median(rates[sizes[0]]) if sizes[0] == 1 else None
    for size in sizes:
        rate = statistics.median(rates[size])
        ratio = rate / base if base else float('nan')
        checks = 'ok' if ratio >= aim(size) and not problems[size] else '; '.join(problems[size]) or 'below aim'
        limit = f'{machine[size]:>6.2f}x' if machine else ''
        print(f'{size:>7} {rate:>8.2f} {ratio:>5.2f}x {aim(size):>5.2f}x {limit:>7}  {checks}')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--sizes', default='1,2,4,8', help='numbers of worker processes, comma-separated (1 first)')
    parser.add_argument('--repeats', type=int, default=3, help='runs per size; medians are printed')
    parser.add_argument('--cpu-per-worker', type=int, default=20, help='warehouses per worker process')
    parser.add_argument('--wait-per-worker', type=int, default=25, help='waiting jobs per worker process')
    parser.add_argument('--only', choices=('cpu', 'wait'), help='run one series only')
    options = parser.parse_args()
    sizes = [int(size) for size in options.sizes.split(',')]

    with tempfile.TemporaryDirectory() as name, contextlib.ExitStack() as stack:
        directory = Path(name)
        server = EmbeddedRedis(directory / 'redis')
        stack.callback(server.stop)
        slow = SlowServer(('127.0.0.1', 0), SlowHandler)
        threading.Thread(target=slow.serve_forever, daemon=True).start()
        stack.callback(slow.server_close)
        stack.callback(slow.shutdown)
        port = slow.server_address[1]
        (directory / 'scalejobs').mkdir()
        (directory / 'scalejobs' / 'scale_jobs.py').write_text(SCALE_JOBS)
        sys.path.insert(0, str(directory / 'scalejobs'))
        env = dict(
            os.environ,
            REDIS_URL=server.ensure_running(),
            JOBS_DATA_DIR=name,
            DATABASE_URL=f'sqlite:///{name}/bench.db',
            ALLOW_LOCAL_REPOSITORIES='true',
            TASK_MAX_SIZE_PER_USER='100000',
            JOBS_EXTRA_MODULES=f'scale_jobs={WAIT_QUEUE}',
            PYTHONPATH=str(directory / 'scalejobs'),
        )
        for variable in ('TEST_DATABASE_URL', 'LLM_BASE_URL', 'LLM_MODEL', 'LLM_API_KEY'):
            env.pop(variable, None)
            os.environ.pop(variable, None)
        os.environ.update(env)
        subprocess.run(jobs_command('-q', 'db', 'init'), cwd=ROOT, env=env, check=True, capture_output=True)
        connection = server.client(timeout=10)
        from rqjobs import demo

        repository = demo.build_repository(directory / 'demo' / 'inkwell')

        count, usable = cores()
        print(f'cores: os.cpu_count() = {count}, os.sched_getaffinity(0) = {usable}; medians of {options.repeats} runs')
        print(
            'timed from the first job start to the last job end; '
            'workers started, registered and suspended before the jobs are submitted'
        )
        if options.only != 'wait':
            rates, problems, spins = {}, {}, {}
            for size in sizes:
                runs = [
                    cpu_run(size, options, env, directory, connection, repository, run)
                    for run in range(size * 100, size * 100 + options.repeats)
                ]
                rates[size] = [rate for rate, _ in runs]
                problems[size] = sorted({p for _, found in runs for p in found})
                spins[size] = statistics.median(ceiling(size) for _ in range(options.repeats))
            report(
                f'CPU-bound: process_warehouse of the demo repository, {options.cpu_per_worker} per worker; ceiling: '
                f'N processes spinning a Python loop against one',
                sizes,
                rates,
                lambda size: 0.8 * min(size, usable),
                problems,
                {size: spins[size] / spins[sizes[0]] for size in sizes},
            )
        if options.only != 'cpu':
            rates, problems = {}, {}
            for size in sizes:
                runs = [waiting_run(size, options, env, directory, connection, port) for _ in range(options.repeats)]
                rates[size] = [rate for rate, _ in runs]
                problems[size] = sorted({p for _, found in runs for p in found})
            report(
                f'waiting-bound: one {DELAY:g} s answer of a local TCP server, {options.wait_per_worker} per worker',
                sizes,
                rates,
                lambda size: 0.8 * size,
                problems,
            )


if __name__ == '__main__':
    main()
