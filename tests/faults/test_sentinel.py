"""A Redis master SIGKILLed under load, with a replica and three Sentinels: the time until work resumes, what is lost.

The Sentinels are tuned for a test (down-after-milliseconds 1000, failover-timeout 5000); in production the
defaults (30 s, 3 min) or values close to them are usual, and the resume time grows with them.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import redis
from faultkit import FAULT_QUEUE

from helpers import wait_until
from rqjobs import connections, embedded, queues, settings
from rqjobs.contrib import access_log as producer
from rqjobs.exceptions import RqjobsError

pytestmark = pytest.mark.slow

MASTER_NAME = 'jobs'
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 5000
# Aimed at in docs/operations.md: the promoted replica takes work within this many seconds of the master's death.
RESUME_WITHIN = 30


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        return probe.getsockname()[1]


class Cluster:
    """A master, one replica and three Sentinels on loopback, without persistence; all killed by `stop`."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.binary = embedded.server_binary()
        self.servers: dict[int, subprocess.Popen] = {}
        self.sentinels: list[subprocess.Popen] = []
        self.master_port, self.replica_port = free_port(), free_port()
        self.sentinel_ports = [free_port() for _ in range(3)]

    @property
    def url(self) -> str:
        hosts = ','.join(f'127.0.0.1:{port}' for port in self.sentinel_ports)
        return f'redis+sentinel://{hosts}/{MASTER_NAME}/0'

    def start(self) -> None:
        self.start_server(self.master_port)
        self.start_server(self.replica_port, '--replicaof', '127.0.0.1', str(self.master_port))
        replica = redis.Redis(port=self.replica_port)
        wait_until(lambda: replica.info('replication').get('master_link_status') == 'up', 10, 'the replica synced')
        replica.close()
        for number, port in enumerate(self.sentinel_ports):
            config = self.directory / f'sentinel-{number}.conf'
            config.write_text(
                f'port {port}\nbind 127.0.0.1\ndir {self.directory}\n'
                f'sentinel monitor {MASTER_NAME} 127.0.0.1 {self.master_port} 2\n'
                f'sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n'
                f'sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}\n'
            )
            self.sentinels.append(self.spawn(f'sentinel-{number}', str(config), '--sentinel'))
        for port in self.sentinel_ports:
            sentinel = redis.Redis(port=port)
            wait_until(lambda s=sentinel: self.known_by(s), 15, 'every Sentinel knows the others and the replica')
            sentinel.close()

    def known_by(self, sentinel: redis.Redis) -> bool:
        with contextlib.suppress(redis.RedisError):
            state = sentinel.sentinel_master(MASTER_NAME)
            return state['num-other-sentinels'] == 2 and state['num-slaves'] == 1
        return False

    def spawn(self, name: str, *args: str) -> subprocess.Popen:
        with open(self.directory / f'{name}.log', 'ab') as log:
            return subprocess.Popen([self.binary, *args], stdout=log, stderr=subprocess.STDOUT, cwd=self.directory)

    def start_server(self, port: int, *args: str) -> None:
        self.servers[port] = self.spawn(
            f'redis-{port}',
            '--port', str(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
            '--dir', str(self.directory), *args,
        )  # fmt: skip
        client = redis.Redis(port=port)
        wait_until(lambda: self.answers(client), 10, f'redis on {port} answers')
        client.close()

    @staticmethod
    def answers(client: redis.Redis) -> bool:
        with contextlib.suppress(redis.RedisError):
            return client.ping()
        return False

    def master(self) -> int | None:
        """Return the port that a Sentinel names as the master's, if one answers."""
        for port in self.sentinel_ports:
            with contextlib.suppress(redis.RedisError), redis.Redis(port=port, socket_timeout=1) as sentinel:
                address = sentinel.sentinel_get_master_addr_by_name(MASTER_NAME)
                if address:
                    return int(address[1])
        return None

    def kill(self, port: int) -> None:
        self.servers[port].kill()
        self.servers[port].wait(10)

    def stop(self) -> None:
        for process in [*self.servers.values(), *self.sentinels]:
            if process.poll() is None:
                process.kill()
            process.wait(10)


@pytest.fixture
def cluster(tmp_path, env):
    started = Cluster(tmp_path / 'cluster')
    started.directory.mkdir()
    try:
        started.start()
        env.setenv('REDIS_URL', started.url)
        settings.reset()
        yield started
    finally:
        started.stop()


class Producer(threading.Thread):
    """Enqueues a `mark` job and sends an access-log event every few milliseconds, noting what was acknowledged."""

    def __init__(self, marker: Path):
        super().__init__(daemon=True)
        self.marker = marker
        self.stopping = threading.Event()
        self.jobs: dict[str, float] = {}  # token -> when the enqueue was acknowledged
        self.ids: dict[str, str] = {}
        self.events: list[str] = []
        self.refused = 0

    def run(self) -> None:
        number = 0
        while not self.stopping.is_set():
            number += 1
            token = f'job-{number}'
            try:
                job = queues.enqueue('mark', [str(self.marker), token], connection=connections.get_redis(check=False))
            except (RqjobsError, redis.RedisError):
                self.refused += 1
            else:
                self.jobs[token] = time.time()
                self.ids[token] = job.id
            if producer.enqueue_access_log(
                {'resource_type': 'Page', 'resource_id': f'/page/{number}', 'event_id': f'event-{number}'}
            ):
                self.events.append(f'event-{number}')
            time.sleep(0.01)


def runs(marker: Path) -> list[tuple[str, float]]:
    lines = marker.read_text().splitlines() if marker.exists() else []
    return [(token, float(when)) for token, when in (line.split() for line in lines)]


@pytest.mark.parametrize('wait_replicas', [0, 1], ids=['no-wait', 'wait'])
def test_a_master_killed_under_load_fails_over(cluster, faults, processes, env, tmp_path, wait_replicas):
    env.setenv('REDIS_WAIT_REPLICAS', str(wait_replicas))
    env.setenv('REDIS_WAIT_TIMEOUT', '500')
    settings.reset()
    marker = tmp_path / 'runs.txt'
    unreplicated_before = producer.local_drop_count('unreplicated')
    workers = [processes.worker(FAULT_QUEUE, name=f'worker-{number}') for number in range(2)]
    scheduler = processes.jobs('scheduler', '--interval', '1', name='scheduler')
    load = Producer(marker)
    load.start()
    try:
        wait_until(lambda: len(runs(marker)) >= 50, 30, 'the workers run jobs', details=processes.logs_text)
        old = cluster.master_port
        killed_at = time.time()
        cluster.kill(old)
        new = wait_until(lambda: (cluster.master() or old) != old and cluster.master(), 30, 'a replica promoted')
        promoted_after = time.time() - killed_at
        # The old master comes back empty, as a process manager would restart it; the Sentinels make it a replica.
        cluster.start_server(old)
        wait_until(
            lambda: any(when > killed_at and load.jobs.get(token, 0) > killed_at for token, when in runs(marker)),
            RESUME_WITHIN * 2,
            'a job enqueued after the kill ran',
            details=processes.logs_text,
        )
        time.sleep(3)  # load on the new master, with the old one rejoining as its replica
    finally:
        load.stopping.set()
        load.join(30)
    acknowledged = dict(load.jobs)
    # Every acknowledged job that survived runs; wait for the queue to drain.
    connection = connections.get_redis()
    wait_until(
        lambda: (
            queues.get_queue(FAULT_QUEUE, connection).count == 0
            and set(token for token, _ in runs(marker)) >= {t for t in acknowledged if acknowledged[t] > killed_at}
        ),
        60,
        'the queue drained',
        details=processes.logs_text,
    )
    time.sleep(2)
    ran = runs(marker)
    counts = Counter(token for token, _ in ran)
    resumed = min(when for token, when in ran if acknowledged.get(token, 0) > killed_at) - killed_at
    # An acknowledged job that never ran is lost when the new master does not have it; one it has, dequeued on the
    # old master just before its death (in rq's intermediate queue), is stranded: rq's maintenance fails it after a
    # minute there and retries it, minutes later, which this test does not wait for.
    unrun = sorted(set(acknowledged) - set(counts))
    lost_jobs = [token for token in unrun if not queues.JsonJob.exists(load.ids[token], connection=connection)]
    stranded = [token for token in unrun if token not in lost_jobs]
    intermediate = set(queues.get_queue(FAULT_QUEUE, connection).intermediate_queue.get_job_ids())
    duplicates = sorted(token for token, count in counts.items() if count > 1)
    buffered = {json.loads(entry)['event_id'] for entry in connection.lrange(producer.BUFFER_KEY, 0, -1)}
    lost_events = sorted(set(load.events) - buffered)
    report = {
        'wait_replicas': wait_replicas,
        'promoted_after_s': round(promoted_after, 1),
        'resumed_after_s': round(resumed, 1),
        'jobs_acknowledged': len(acknowledged),
        'jobs_refused': load.refused,
        'jobs_lost': len(lost_jobs),
        'jobs_stranded': len(stranded),
        'jobs_stranded_in_intermediate_queue': len({load.ids[token] for token in stranded} & intermediate),
        'jobs_run_twice': len(duplicates),
        'events_acknowledged': len(load.events),
        'events_lost': len(lost_events),
        'events_unreplicated': producer.local_drop_count('unreplicated') - unreplicated_before,
    }
    print('failover:', json.dumps(report))
    (tmp_path.parent / f'sentinel-{wait_replicas}.json').write_text(json.dumps(report))
    assert new != old
    assert resumed <= RESUME_WITHIN, report
    # The workers and the scheduler rode through the failover instead of exiting.
    assert all(worker.poll() is None for worker in workers), processes.logs_text()
    assert scheduler.poll() is None, processes.logs_text()
    wait_until(lambda: connection.keys('rq:scheduler_instance:*'), 10, 'the scheduler registered on the new master')
    if wait_replicas:
        assert lost_jobs == [] and lost_events == [], report
    assert os.environ['REDIS_URL'] == cluster.url
