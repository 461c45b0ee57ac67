"""Three hosts, simulated: `rqjobs worker` processes with their own data directory, clones and host name each,
sharing one Redis (over TCP, as hosts do) and one database.

Warehouses land on any host; an update on a host that never cloned its warehouse clones it there; the clean-up of
orphan clones reaches every host and names one that does not answer.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
from datetime import timedelta

import pytest
import redis as redis_module

from helpers import commit_files, git, run_jobs_cli, wait_until
from models import Document, Warehouse, WarehouseStatus
from rqjobs import clock, connections, hosts, queues, settings
from rqjobs import warehouse as warehouses
from rqjobs.embedded import server_binary

pytestmark = [pytest.mark.slow, pytest.mark.db]

HOSTS = ('alpha', 'beta', 'gamma')
WAREHOUSES = 30


@pytest.fixture
def tcp_redis(env, tmp_path):
    """A private Redis listening on 127.0.0.1 (a port of its own), set as REDIS_URL."""
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [server_binary(), '--bind', '127.0.0.1', '--port', str(port), '--save', '', '--appendonly', 'no'],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis_module.Redis(host='127.0.0.1', port=port)

    def answers() -> bool:
        try:
            return bool(client.ping())
        except redis_module.ConnectionError:
            return server.poll() is not None  # ended: the ping after the wait says why

    wait_until(answers, 10, 'redis-server answered on 127.0.0.1', interval=0.05)
    client.ping()
    env.setenv('REDIS_URL', f'redis://127.0.0.1:{port}/0')
    settings.reset()
    yield client
    client.close()
    server.terminate()
    server.wait(timeout=10)


def make_repositories(root, count: int) -> list:
    """Return `count` small git repositories, copies of one with a commit of its own each (a copy is fast)."""
    first = root / 'repo-00'
    first.mkdir(parents=True)
    git(first, 'init', '-q')
    commit_files(first, {'README.md': '# Repo\n', 'app/main.py': 'def main():\n    return 0\n'}, 'Initial version')
    repos = [first]
    for number in range(1, count):
        copy = root / f'repo-{number:02d}'
        shutil.copytree(first, copy, symlinks=True)
        repos.append(copy)
    return repos


def host_env(tmp_path, host: str) -> dict:
    data = tmp_path / 'hosts' / host
    return {
        **os.environ,
        'JOBS_HOST_NAME': host,
        'JOBS_DATA_DIR': str(data),
        'REPO_ROOT': str(data / 'repos'),
    }


def clones_on(tmp_path, host: str) -> set[str]:
    root = tmp_path / 'hosts' / host / 'repos'
    return {entry.name for entry in root.iterdir() if not entry.name.startswith('.')} if root.is_dir() else set()


def host_of(job: queues.JsonJob) -> str:
    return job.worker_name.partition('-worker')[0]


def test_three_hosts_share_the_work_and_each_cleans_its_own_clones(
    env, tmp_path, tcp_redis, database, processes, monkeypatch
):
    env.setenv('ALLOW_LOCAL_REPOSITORIES', 'true')
    env.setenv('TASK_MAX_SIZE_PER_USER', str(WAREHOUSES))
    settings.reset()
    sqlite = settings.get_settings().database_url.startswith('sqlite')
    connection = connections.get_redis()
    repos = make_repositories(tmp_path / 'upstream', WAREHOUSES)

    workers = {
        host: processes.worker('warehouse', '--name', f'{host}-worker', name=host, env=host_env(tmp_path, host))
        for host in HOSTS
    }
    wait_until(
        lambda: set(hosts.live_hosts(connection)) == set(HOSTS), 30, 'three hosts live', details=processes.logs_text
    )
    records = {record['name']: record for record in hosts.worker_records(connection)}
    # The host's own queue comes first among those a worker listens on.
    assert records['alpha-worker']['queues'] == ['host-alpha', 'warehouse']

    # ---- processing: 30 warehouses, any host ----
    rows = [warehouses.submit_warehouse(str(repo), connection=connection) for repo in repos]
    ids = [row.id for row in rows]

    def completed() -> int:
        return Warehouse.select().where(Warehouse.id.in_(ids), Warehouse.status == WarehouseStatus.COMPLETED).count()

    def processed_all() -> dict | None:
        jobs = queues.JsonJob.fetch_many([warehouses.process_job_id(i) for i in ids], connection=connection)
        if completed() == WAREHOUSES and all(job is not None and job.get_status() == 'finished' for job in jobs):
            return dict(zip(ids, jobs, strict=True))
        return None

    processed = wait_until(processed_all, 90, 'every warehouse Completed', interval=0.5, details=processes.logs_text)
    first_hosts = {i: host_of(job) for i, job in processed.items()}
    assert len(set(first_hosts.values())) >= 2, first_hosts
    cloned_before = {host: clones_on(tmp_path, host) for host in HOSTS}
    for warehouse_id, host in first_hosts.items():
        assert warehouse_id in cloned_before[host]

    # ---- updates: a new commit each, queued by the plan's entry, any host ----
    heads = {
        row.id: commit_files(repo, {'app/extra.py': f'VALUE = {number}\n'}, 'Add a value')
        for number, (row, repo) in enumerate(zip(rows, repos, strict=True))
    }
    Document.update(last_update=clock.utcnow() - timedelta(days=30)).where(Document.warehouse.in_(ids)).execute()
    assert warehouses.schedule_warehouse_updates()['enqueued'] == WAREHOUSES

    def updates_done() -> dict | None:
        jobs = queues.JsonJob.fetch_many([warehouses.update_job_id(i) for i in ids], connection=connection)
        if all(job is not None and job.get_status() in ('finished', 'failed') for job in jobs):
            return dict(zip(ids, jobs, strict=True))
        return None

    updated = wait_until(updates_done, 90, 'every update ended', interval=0.5, details=processes.logs_text)
    for warehouse_id, job in updated.items():
        assert job.get_status() == 'finished', (warehouse_id, job.latest_result().exc_string)
        assert job.return_value()['status'] == 'updated'
        assert job.return_value()['version'] == heads[warehouse_id]
    assert completed() == WAREHOUSES
    assert {Warehouse.get_by_id(i).version for i in ids} == set(heads.values())

    # No warehouse ran twice, nor two of its jobs at once: each job ran once, its update after its processing.
    for warehouse_id in ids:
        runs = [processed[warehouse_id], updated[warehouse_id]]
        assert [len(job.results()) for job in runs] == [1, 1], warehouse_id
        assert runs[0].ended_at <= runs[1].started_at, warehouse_id
    # Updates on a host that never cloned the warehouse cloned it there, fresh.
    elsewhere = {i: host_of(job) for i, job in updated.items() if host_of(job) != first_hosts[i]}
    assert elsewhere, 'every update ran on the host that processed its warehouse'
    for warehouse_id, host in elsewhere.items():
        assert warehouse_id not in cloned_before[host]
        clone = tmp_path / 'hosts' / host / 'repos' / warehouse_id
        assert git(clone, 'rev-parse', 'HEAD') == heads[warehouse_id]

    # ---- several hosts on SQLite: every worker's log and `rqjobs status` say it is not shared ----
    status = run_jobs_cli('status', '--json')
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    assert [row['host'] for row in data['hosts']] == list(HOSTS)
    assert [row['workers'] for row in data['hosts']] == [[f'{host}-worker'] for host in HOSTS]
    if sqlite:
        assert len(data['warnings']) == 1 and 'SQLite' in data['warnings'][0]
        warned = [host for host, process in workers.items() if 'is not shared with them' in processes.log(process)]
        assert len(warned) >= 2, processes.logs_text()  # the first one to start warns at its next maintenance
    else:
        assert data['warnings'] == []
        assert 'is not shared with them' not in processes.logs_text(tail=None)

    # ---- orphan clones: removed on every host; a host that does not answer is named ----
    silent = processes.worker('warehouse', '--name', 'delta-worker', name='delta', env=host_env(tmp_path, 'delta'))
    wait_until(lambda: 'delta' in hosts.live_hosts(connection), 30, 'host delta live', details=processes.logs_text)
    # Its first chore (measuring its clones) done, it stops answering.
    wait_until(lambda: hosts.usage(connection, ['delta'])['delta'], 30, 'delta measured', details=processes.logs_text)
    os.killpg(silent.pid, signal.SIGSTOP)  # alive for Redis (its heartbeat lasts 45 s) but answering nothing
    removed = ids[:5]
    Warehouse.update(is_deleted=True).where(Warehouse.id.in_(removed)).execute()
    owners = {host: clones_on(tmp_path, host) & set(removed) for host in HOSTS}
    assert sum(map(len, owners.values())) >= len(removed)

    cleanup = run_jobs_cli('cleanup', '--orphan-clones', '--host-timeout', '5', '--json')
    assert cleanup.returncode == 0, cleanup.stderr
    report = json.loads(cleanup.stdout)
    assert sorted(report['orphan_clones']) == sorted(f'{host}: {i}' for host in HOSTS for i in owners[host])
    assert report['hosts'] == [f'{host}: {len(owners[host])} orphan clones' for host in HOSTS]
    assert report['hosts_not_answering'] == ['delta: no answer within 5 s']
    for host in HOSTS:
        assert not clones_on(tmp_path, host) & set(removed), host
        assert clones_on(tmp_path, host), host  # the live warehouses keep theirs
    assert queues.JsonQueue(queues.host_queue('delta'), connection=connection).count == 0  # its job withdrawn

    # Each host measured its clones after the removal: `rqjobs status` shows them.
    data = json.loads(run_jobs_cli('status', '--json').stdout)
    usage = {row['host']: row for row in data['hosts']}
    for host in HOSTS:
        assert usage[host]['clones'] == len(clones_on(tmp_path, host)), usage[host]
        assert usage[host]['clone_bytes'] > 0
