"""The Procfile's processes run under honcho against one Redis: a worker runs jobs, the dashboard shows them."""

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from helpers import ROOT, wait_until
from rqjobs import queues


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def answer(url: str) -> dict | None:
    """Return the JSON at `url`, or None while nothing listens there yet."""
    try:
        return json.load(urllib.request.urlopen(url, timeout=2))
    except OSError:
        return None


def test_procfile_names_the_three_processes():
    entries = dict(line.split(':', 1) for line in (ROOT / 'Procfile').read_text().splitlines() if line.strip())
    assert set(entries) == {'worker', 'scheduler', 'dashboard'}
    # `jobs` is also a shell builtin; `exec` runs the installed command instead, the project's .venv first.
    assert all(command.strip().startswith('PATH="$PWD/.venv/bin:$PATH" exec jobs ') for command in entries.values())


@pytest.mark.db
@pytest.mark.slow
def test_honcho_runs_worker_scheduler_and_dashboard_on_one_redis(redis_conn, database, tmp_path):
    """A plain `.venv/bin/honcho start`: the virtual environment is not on PATH, as when it is not activated."""
    port = free_port()
    project = tmp_path / 'project'
    project.mkdir()
    (project / 'Procfile').write_text((ROOT / 'Procfile').read_text())
    (project / '.venv').symlink_to(sys.prefix)
    path = os.pathsep.join(
        entry
        for entry in os.environ.get('PATH', '').split(os.pathsep)
        if entry and Path(entry).resolve() != Path(sys.prefix, 'bin').resolve()
    )
    environ = dict(os.environ, DASHBOARD_PORT=str(port), PYTHONUNBUFFERED='1', PATH=path or '/usr/bin:/bin')
    environ.pop('VIRTUAL_ENV', None)
    job = queues.enqueue('ping', connection=redis_conn)
    with open(tmp_path / 'honcho.log', 'w') as log:
        honcho = subprocess.Popen(
            [str(project / '.venv' / 'bin' / 'honcho'), 'start'],
            cwd=project,
            env=environ,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until(
            lambda: job.get_status() == 'finished',
            30,
            'the worker ran the job',
            interval=0.2,
            details=(tmp_path / 'honcho.log').read_text,
        )
        base = f'http://127.0.0.1:{port}/0/data'
        data = wait_until(
            lambda: answer(f'{base}/queues.json'),
            30,
            'the dashboard answered',
            interval=0.2,
            details=(tmp_path / 'honcho.log').read_text,
        )
        assert {'name': 'default'}.items() <= next(q for q in data['queues'] if q['name'] == 'default').items()
        shown = json.load(urllib.request.urlopen(f'{base}/job/{job.id}.json', timeout=2))
        assert shown['status'] == 'finished'
        assert 'rqjobs.system.ping' in shown['description'] or shown['description'] == 'ping'
        # The Procfile's worker is a pool of 4, each worker under a name of its own.
        workers = wait_until(
            lambda: [
                listed for listed in [(answer(f'{base}/workers.json') or {}).get('workers', [])] if len(listed) == 4
            ],
            30,
            'the pool registered 4 workers',
            interval=0.2,
        )
        assert len({worker['name'] for worker in workers[0]}) == 4
    finally:
        os.killpg(honcho.pid, signal.SIGTERM)
        honcho.wait(timeout=30)
    output = (tmp_path / 'honcho.log').read_text()
    assert 'scheduler.1' in output and 'worker.1' in output and 'dashboard.1' in output
