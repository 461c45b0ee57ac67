"""Cost of REDIS_WAIT_REPLICAS: enqueue and the access-log producer waiting for one replica, against not waiting.

Starts a master and one replica (the embedded server's binary, no persistence) on loopback ports in a temporary
directory, both stopped at the end; prints the medians of several rounds and the ratios, all measured in this run.
Usage: python bench/wait.py [--calls N] [--rounds R]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis

from rqjobs import embedded, queues
from rqjobs.contrib import access_log as producer
from rqjobs.settings import Settings


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        return probe.getsockname()[1]


def start(directory: str, port: int, *args: str) -> subprocess.Popen:
    process = subprocess.Popen(
        [embedded.server_binary(), '--port', str(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
         '--dir', directory, *args],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            return process
        except redis.ConnectionError:
            time.sleep(0.05)
    raise SystemExit(f'redis-server on {port} did not start')


def timed(function, count: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        function()
    return (time.perf_counter() - started) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--calls', type=int, default=1000, help='calls per round and measure')
    parser.add_argument('--rounds', type=int, default=5, help='rounds; the median is reported')
    options = parser.parse_args()

    with tempfile.TemporaryDirectory() as directory:
        master_port, replica_port = free_port(), free_port()
        servers = [start(directory, master_port)]
        try:
            servers.append(start(directory, replica_port, '--replicaof', '127.0.0.1', str(master_port)))
            replica = redis.Redis(port=replica_port)
            while replica.info('replication').get('master_link_status') != 'up':
                time.sleep(0.05)
            environ = {**os.environ, 'REDIS_URL': f'redis://127.0.0.1:{master_port}/0', 'JOBS_DATA_DIR': directory}
            off = Settings.from_env(environ)
            on = Settings.from_env({**environ, 'REDIS_WAIT_REPLICAS': '1', 'REDIS_WAIT_TIMEOUT': '1000'})
            from rqjobs.connections import get_redis

            connection = get_redis(off)
            entry = {'resource_type': 'Page', 'resource_id': '/openai/whisper', 'path': '/openai/whisper'}
            results: dict[str, list[float]] = {name: [] for name in ('enqueue off', 'enqueue on', 'log off', 'log on')}
            for _ in range(options.rounds):
                for name, settings in (('off', off), ('on', on)):
                    connection.flushall()
                    enqueue = lambda s=settings: queues.enqueue('ping', connection=connection, settings=s)  # noqa: E731
                    results[f'enqueue {name}'].append(timed(enqueue, options.calls))
                    results[f'log {name}'].append(
                        timed(lambda s=settings: producer.enqueue_access_log(entry, settings=s), options.calls)
                    )
            unreplicated = producer.local_drop_count('unreplicated')
        finally:
            for server in servers:
                server.kill()
                server.wait()

    medians = {name: statistics.median(times) for name, times in results.items()}
    print(f'calls per round: {options.calls}, rounds: {options.rounds}, one replica on loopback')
    for name, seconds in medians.items():
        print(f'{name:12} {seconds * 1e6:8.1f} us/call')
    print(f'enqueue: WAIT on / off (time per call): {medians["enqueue on"] / medians["enqueue off"]:.2f}x')
    print(f'access-log producer: WAIT on / off (time per call): {medians["log on"] / medians["log off"]:.2f}x')
    print(f'entries not confirmed in time: {unreplicated}')


if __name__ == '__main__':
    main()
