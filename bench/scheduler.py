"""Observed cadence of the 30 s plan entry with two schedulers and a worker running for a few minutes.

Starts a private embedded Redis and SQLite database in a temporary directory, two `jobs scheduler` processes and
one `jobs worker`, with every plan entry but `process-access-logs` switched off. Afterwards it reads the runs the
schedulers enqueued and prints the intervals between them (min / median / max) and the number of duplicate runs
(two runs of one period), which must be 0.

Usage: python bench/scheduler.py [--seconds 200]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The project root replaces this script's directory on the path, which holds scripts named like modules.
sys.path[0] = str(ROOT)

from bench.harness import DRAIN_ENTRY, drain_alone_env, jobs_command
from rqjobs.embedded import EmbeddedRedis
from rqjobs.queues import JsonJob

ENTRY = DRAIN_ENTRY


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--seconds', type=int, default=200, help='how long to run (at least 180 for the report)')
    options = parser.parse_args()

    with tempfile.TemporaryDirectory() as directory:
        server = EmbeddedRedis(Path(directory) / 'redis')
        env = drain_alone_env(directory, server.ensure_running())
        subprocess.run(jobs_command('-q', 'db', 'init'), cwd=ROOT, env=env, check=True, capture_output=True)
        commands = {'scheduler-1': ('scheduler',), 'scheduler-2': ('scheduler',), 'worker': ('-q', 'worker')}
        with contextlib.ExitStack() as stack:
            processes = []
            for name, command in commands.items():
                log = stack.enter_context(open(Path(directory) / f'{name}.log', 'w'))
                processes.append(subprocess.Popen(jobs_command(*command), cwd=ROOT, env=env, stdout=log, stderr=log))
            started = time.time()
            try:
                time.sleep(options.seconds)
            finally:
                for process in processes:
                    process.send_signal(signal.SIGTERM)
                for process in processes:
                    process.wait(timeout=60)
        connection = server.client(timeout=5)
        runs = []
        for key in connection.scan_iter(f'rq:job:{ENTRY}-*'):
            job = JsonJob.fetch(key.decode().split(':', 2)[2], connection=connection)
            runs.append((job.enqueued_at.timestamp(), job.get_status()))
        server.stop()

    runs.sort()
    times = [at for at, _ in runs]
    intervals = [later - earlier for earlier, later in itertools.pairwise(times)]
    duplicates = sum(1 for interval in intervals if interval < 15)
    statuses = statistics.multimode([status for _, status in runs]) if runs else []
    print(
        f'ran {options.seconds} s with 2 schedulers and 1 worker; {len(runs)} runs of {ENTRY} '
        f'(expected about {int((time.time() - started) // 30)}); most runs ended: {", ".join(map(str, statuses))}'
    )
    if intervals:
        print(
            f'interval between runs: min {min(intervals):.1f} s, median {statistics.median(intervals):.1f} s, '
            f'max {max(intervals):.1f} s (aim 30 ± 5 s)'
        )
    print(f'duplicate runs: {duplicates} (aim 0)')


if __name__ == '__main__':
    main()
