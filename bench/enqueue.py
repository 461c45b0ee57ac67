"""Cost of the project's enqueue path (registry lookup, signature and JSON checks) against plain rq.

Runs on a private embedded Redis in a temporary directory; prints medians of several rounds and their ratio.
Usage: python bench/enqueue.py [--jobs N] [--rounds R]
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

from rq import Queue

from rqjobs import queues
from rqjobs.embedded import EmbeddedRedis
from rqjobs.settings import Settings


def timed(function, count: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        function()
    return (time.perf_counter() - started) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--jobs', type=int, default=2000, help='enqueues per round')
    parser.add_argument('--rounds', type=int, default=5, help='rounds; the median is reported')
    options = parser.parse_args()

    with tempfile.TemporaryDirectory() as directory:
        server = EmbeddedRedis(Path(directory) / 'redis')
        os.environ['REDIS_URL'] = server.ensure_running()
        os.environ['JOBS_DATA_DIR'] = directory
        try:
            settings = Settings.from_env()
            from rqjobs.connections import get_redis

            connection = get_redis(settings)
            plain = Queue('default', connection=connection)
            baseline, project = [], []
            for _ in range(options.rounds):
                connection.flushall()
                baseline.append(timed(lambda: plain.enqueue_call('rqjobs.system.ping'), options.jobs))
                connection.flushall()
                project.append(
                    timed(lambda: queues.enqueue('ping', connection=connection, settings=settings), options.jobs)
                )
        finally:
            server.stop()

    base, ours = statistics.median(baseline), statistics.median(project)
    print(f'enqueues per round: {options.jobs}, rounds: {options.rounds}')
    print(f'plain rq enqueue_call (pickle):   {base * 1e6:8.1f} us/job  {1 / base:8.0f} jobs/s')
    print(f'rqjobs.queues.enqueue (JSON):     {ours * 1e6:8.1f} us/job  {1 / ours:8.0f} jobs/s')
    print(f'ratio project/plain (time per job): {ours / base:.2f}x')


if __name__ == '__main__':
    main()
