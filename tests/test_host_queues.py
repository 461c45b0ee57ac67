import logging
import socket
from datetime import timedelta

import peewee
import pytest

from models import Warehouse, WarehouseStatus
from rqjobs import clock, hosts, monitor, queues, settings
from rqjobs import warehouse as warehouses
from rqjobs.exceptions import UnknownQueue
from rqjobs.settings import Settings
from rqjobs.worker import build_worker

pytestmark = pytest.mark.db


def on_host(env, tmp_path, host: str) -> Settings:
    """Make this process `host`, with a REPO_ROOT of its own, as a worker process of that host would be."""
    env.setenv('JOBS_HOST_NAME', host)
    env.setenv('REPO_ROOT', str(tmp_path / host / 'repos'))
    settings.reset()
    return settings.get_settings()


@pytest.fixture
def registered(redis_conn):
    """Register idle workers (they take no job) of the current host; all deregistered afterwards."""
    workers = []

    def register(name: str):
        worker = build_worker(redis_conn, ['default'], name=name)
        worker.register_birth()
        workers.append(worker)
        return worker

    yield register
    for worker in workers:
        worker.register_death()


def test_the_host_name_is_reduced_to_a_queue_name_part():
    assert Settings.from_env({'JOBS_HOST_NAME': ' Build.Example.org '}).host_name == 'build-example-org'
    assert Settings.from_env({'JOBS_HOST_NAME': '...'}).host_name == 'localhost'
    assert Settings.from_env({}).host_name == settings.host_name(socket.gethostname())


def test_host_queues_are_known_queues(redis_conn):
    assert queues.get_queue('host-build-01', redis_conn).name == 'host-build-01'
    for name in ('host-Build.01', 'host-', 'hosts'):
        with pytest.raises(UnknownQueue, match='host-<name> for each host'):
            queues.get_queue(name, redis_conn)


def test_clones_of_failed_warehouses_are_removed_on_every_live_host(
    env, tmp_path, redis_conn, database, registered, burst_worker
):
    row = warehouses.submit_warehouse('https://github.com/a/failed', connection=redis_conn)
    Warehouse.update(status=WarehouseStatus.FAILED, updated_at=clock.utcnow() - timedelta(hours=25)).where(
        Warehouse.id == row.id
    ).execute()
    clones = {}
    for host in ('alpha', 'beta'):
        clones[host] = on_host(env, tmp_path, host).repo_root / row.id
        (clones[host] / '.git').mkdir(parents=True)
        registered(f'{host}-worker')

    assert warehouses.cleanup_failed_warehouses()['warehouse_ids'] == [row.id]
    assert clones['alpha'].exists()  # the job ran on beta (the process's host now), whose clone went at once
    assert not clones['beta'].exists()
    for host in ('alpha', 'beta'):
        assert redis_conn.llen(f'rq:queue:host-{host}') == 1
        on_host(env, tmp_path, host)
        assert burst_worker(f'host-{host}')
        assert not clones[host].exists(), host
        assert hosts.usage(redis_conn, [host])[host]['clones'] == 0


def test_a_host_that_does_not_answer_is_named_and_its_chore_withdrawn(env, tmp_path, redis_conn, database, registered):
    on_host(env, tmp_path, 'ghost')
    registered('ghost-worker')  # registered, but never takes a job
    outcomes = hosts.run_on_hosts(redis_conn, 'remove_orphan_clones', [True], timeout=0.3)
    assert outcomes == {'ghost': {'status': 'no answer'}}
    assert redis_conn.llen('rq:queue:host-ghost') == 0


def test_workers_of_several_hosts_on_local_storage_are_warned_once_per_new_host(
    env, tmp_path, redis_conn, database, registered, caplog
):
    # The test's Redis is a unix socket, which no other host can reach; on SQLite, the database file is local too.
    local = 'SQLite' if isinstance(database, peewee.SqliteDatabase) else 'unix-socket Redis'
    on_host(env, tmp_path, 'alpha')
    alpha = registered('alpha-worker')
    assert monitor.host_states(redis_conn)['warnings'] == []
    on_host(env, tmp_path, 'beta')
    with caplog.at_level(logging.WARNING):
        registered('beta-worker')
    assert 'workers of other hosts (alpha) share this Redis' in caplog.text and local in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        alpha.check_hosts()
        alpha.check_hosts()  # beta is no longer new
    assert caplog.text.count('workers of other hosts (beta) share this Redis') == 1
    states = monitor.host_states(redis_conn)
    assert [(row['host'], row['workers']) for row in states['hosts']] == [
        ('alpha', ['alpha-worker']),
        ('beta', ['beta-worker']),
    ]
    (warning,) = states['warnings']
    assert 'Workers of 2 hosts (alpha, beta) share this Redis' in warning and local in warning
