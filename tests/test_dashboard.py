"""rq-dashboard 0.9, run by `jobs dashboard`, shows the project's JSON jobs: registries, arguments, errors, progress.

Each test starts the dashboard as a user does and reads its JSON endpoints (the pages render from them with
JavaScript). The limits of rq-dashboard 0.9 on rq 3 are pinned here, so a fixed version shows up as a failure that
says which paragraph of docs/operations.md to drop.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
import rq_dashboard

from helpers import ROOT, run_jobs_cli, wait_until
from rqjobs import queues
from rqjobs import settings as settings_module
from rqjobs.dashboard import base_url

pytestmark = pytest.mark.slow

START_TIMEOUT = 20.0


@pytest.fixture
def report_jobs(env, tmp_path, monkeypatch):
    """A user's job module on queue `reports`, added through JOBS_EXTRA_MODULES, importable by subprocesses too."""
    (tmp_path / 'report_jobs.py').write_text(
        textwrap.dedent('''
        import time
        from pathlib import Path

        from rqjobs.exceptions import PermanentJobError
        from rqjobs.queues import report_progress

        JOBS = ('render_report', 'broken_report', 'hold_report')


        def render_report(report_id, title=''):
            """Render a report, recording its progress."""
            report_progress('render', 40, report_id=report_id)
            return {'report_id': report_id, 'title': title}


        def broken_report(report_id):
            """Fail as a report without a template does."""
            raise PermanentJobError(f'report {report_id} has no template ✓')


        def hold_report(flag_path, seconds=30):
            """Report progress, then wait until the test creates flag_path (or give up after some seconds)."""
            report_progress('waiting', 10, flag=flag_path)
            deadline = time.monotonic() + seconds
            while not Path(flag_path).exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            return {'released': Path(flag_path).exists()}
    ''')
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    env.setenv('JOBS_EXTRA_MODULES', 'report_jobs=reports')
    # The dashboard and worker subprocesses import the module too.
    env.setenv('PYTHONPATH', os.pathsep.join(filter(None, [str(tmp_path), os.environ.get('PYTHONPATH')])))
    settings_module.reset()
    yield
    sys.modules.pop('report_jobs', None)


# ---- The dashboard process ----


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


@dataclass
class Dashboard:
    """A running `jobs dashboard` process: its base URL and its log."""

    base: str
    log_path: Path

    def get(self, path: str, auth: tuple[str, str] | None = None) -> tuple[int, bytes]:
        """Return the HTTP status and body of a GET, errors included."""
        request = urllib.request.Request(self.base + path)
        if auth:
            request.add_header('Authorization', 'Basic ' + base64.b64encode(':'.join(auth).encode()).decode())
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.read()

    def json(self, path: str, auth: tuple[str, str] | None = None):
        status, body = self.get(path, auth)
        assert status == 200, f'GET {path}: {status}\n{self.log()}'
        return json.loads(body)

    def log(self) -> str:
        return self.log_path.read_text(errors='replace')


def stop(process: subprocess.Popen) -> None:
    """End a process started in its own session, with its whole group."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


@contextlib.contextmanager
def running_dashboard(tmp_path: Path, *, extra_env: dict | None = None):
    """Run `jobs dashboard --port <free port>` on the test Redis until the block ends."""
    port = free_port()
    log_path = tmp_path / f'dashboard-{port}.log'
    environ = dict(os.environ, PYTHONUNBUFFERED='1', **(extra_env or {}))
    with open(log_path, 'w') as log:
        process = subprocess.Popen(
            [sys.executable, '-c', 'import cli; cli.main()', 'dashboard', '--port', str(port)],
            cwd=ROOT,
            env=environ,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    dashboard = Dashboard(base=f'http://127.0.0.1:{port}', log_path=log_path)
    try:

        def listens() -> bool:
            assert process.poll() is None, f'jobs dashboard exited with {process.returncode}:\n{dashboard.log()}'
            try:
                dashboard.get('/0/data/queues.json')  # any answer, 401 included, means it listens
            except OSError:
                return False
            return True

        wait_until(listens, START_TIMEOUT, 'jobs dashboard answered', interval=0.1, details=dashboard.log)
        yield dashboard
    finally:
        stop(process)


def listed(dashboard: Dashboard, queue: str, registry: str) -> dict[str, dict]:
    """Return the jobs of one queue's registry as the dashboard lists them, by id."""
    data = dashboard.json(f'/0/data/jobs/{queue}/{registry}/50/asc/1.json')
    assert data['registry_name'] == registry
    return {job['id']: job for job in data['jobs']}


def counts(dashboard: Dashboard) -> dict[str, dict]:
    """Return each queue's counts from queues.json, by queue name, with the `_job_registry_count` suffix dropped."""
    return {
        queue['name']: {
            key.removesuffix('_job_registry_count'): value
            for key, value in queue.items()
            if key == 'count' or key.endswith('_job_registry_count')
        }
        for queue in dashboard.json('/0/data/queues.json')['queues']
    }


# rq's stand-ins for a payload it could not read: none of them may reach the dashboard.
UNREADABLE = ('Unserializable', 'DeserializationError', 'UnpicklingError', 'pickle')


# ---- Jobs in every registry ----


@pytest.mark.db
def test_every_job_shows_in_its_registry_with_json_arguments(redis_conn, database, report_jobs, burst_worker, tmp_path):
    ping = queues.enqueue('ping', connection=redis_conn)
    rendered = queues.enqueue('render_report', [7], {'title': 'Guide ✓'}, connection=redis_conn)
    broken = queues.enqueue('broken_report', [8], connection=redis_conn)
    later = queues.enqueue('ping', connection=redis_conn, delay=timedelta(hours=1))
    burst_worker('default', 'reports')
    waiting = queues.enqueue('render_report', [9], connection=redis_conn, meta={'requested_by': 'editor 9'})
    assert [job.get_status() for job in (ping, rendered, broken, later, waiting)] == [
        'finished',
        'finished',
        'failed',
        'scheduled',
        'queued',
    ]

    with running_dashboard(tmp_path) as dashboard:
        assert counts(dashboard)['default'] == {
            'count': 0,
            'finished': 1,
            'failed': 0,
            'started': 0,
            'deferred': 0,
            'scheduled': 1,
            'canceled': 0,
        }
        assert counts(dashboard)['reports'] == {
            'count': 1,
            'finished': 1,
            'failed': 1,
            'started': 0,
            'deferred': 0,
            'scheduled': 0,
            'canceled': 0,
        }
        registries = {
            (queue, registry): listed(dashboard, queue, registry)
            for queue in ('default', 'reports')
            for registry in ('queued', 'started', 'finished', 'failed', 'deferred', 'scheduled', 'canceled')
        }
        details = {
            job.id: dashboard.json(f'/0/data/job/{job.id}.json') for job in (ping, rendered, broken, later, waiting)
        }

    where = {job_id: place for place, jobs in registries.items() for job_id in jobs}
    assert where == {
        ping.id: ('default', 'finished'),
        later.id: ('default', 'scheduled'),
        rendered.id: ('reports', 'finished'),
        broken.id: ('reports', 'failed'),
        waiting.id: ('reports', 'queued'),
    }
    descriptions = {job_id: registries[place][job_id]['description'] for job_id, place in where.items()}
    # The payload is read as JSON: the call is shown with its arguments, unicode intact.
    assert descriptions == {
        ping.id: 'rqjobs.system.ping()',
        later.id: 'rqjobs.system.ping()',
        rendered.id: "report_jobs.render_report(7, title='Guide ✓')",
        broken.id: 'report_jobs.broken_report(8)',
        waiting.id: 'report_jobs.render_report(9)',
    }

    for job in (ping, rendered, broken, later, waiting):
        shown = details[job.id]
        assert shown['id'] == job.id and shown['description'] == descriptions[job.id]
        assert shown['status'] == job.get_status()
        assert shown['origin'] == ('default' if job in (ping, later) else 'reports')
        assert not any(marker in json.dumps(shown) for marker in UNREADABLE), shown
    assert details[ping.id]['result']['pong'] is True
    assert details[rendered.id]['result'] == {'report_id': 7, 'title': 'Guide ✓'}
    assert details[later.id]['enqueued_at'] is None and details[later.id]['result'] is None

    # The error text is the worker's traceback, ending with the project's exception and its message.
    for error in (details[broken.id]['exc_info'], registries['reports', 'failed'][broken.id]['exc_info']):
        assert error.rstrip().endswith('rqjobs.exceptions.PermanentJobError: report 8 has no template ✓'), error
    assert details[broken.id]['result'] is None and details[ping.id]['exc_info'] is None

    # Meta is exposed only on the job's own data, as a JSON-encoded string (the job page prints it verbatim).
    progress = json.loads(details[rendered.id]['metadata'])['progress']
    assert {key: progress[key] for key in ('step', 'percent', 'report_id')} == {
        'step': 'render',
        'percent': 40,
        'report_id': 7,
    }
    assert json.loads(details[waiting.id]['metadata']) == {'requested_by': 'editor 9'}
    assert all('metadata' not in job for jobs in registries.values() for job in jobs.values())


def test_unreadable_jobs_are_left_out_of_the_lists_and_left_in_place(redis_conn, report_jobs, burst_worker, tmp_path):
    import zlib

    failed = queues.enqueue('broken_report', [8], retry=None, connection=redis_conn)
    burst_worker('reports')
    waiting = queues.enqueue('render_report', [9], connection=redis_conn)
    forged = {}
    for place in ('queued', 'failed'):
        job = queues.enqueue('render_report', [1], connection=redis_conn)
        redis_conn.hset(f'rq:job:{job.id}', 'exc_info', zlib.compress(b'\xff not text'))
        forged[place] = job.id
    queue = queues.get_queue('reports', redis_conn)
    redis_conn.lrem(queue.key, 0, forged['failed'])
    redis_conn.zadd(queue.failed_job_registry.key, {forged['failed']: time.time() + 3600})

    with running_dashboard(tmp_path) as dashboard:
        assert set(listed(dashboard, 'reports', 'queued')) == {waiting.id}
        assert set(listed(dashboard, 'reports', 'failed')) == {failed.id}
        status, body = dashboard.get(f'/0/data/job/{forged["queued"]}.json')
        assert status == 404 and b'cannot be read from Redis' in body
        assert 'Traceback' not in dashboard.log()
    # Listing is no reason to drop a job: the unreadable one is still queued, for a worker to set aside.
    assert forged['queued'] in queue.get_job_ids()


def test_job_text_is_escaped_for_the_job_page(redis_conn, report_jobs, burst_worker, tmp_path):
    broken = queues.enqueue('broken_report', ['<i>probe</i>'], connection=redis_conn)
    burst_worker('reports')
    with running_dashboard(tmp_path) as dashboard:
        shown = dashboard.json(f'/0/data/job/{broken.id}.json')
    # The job page inserts these texts as HTML: served escaped, markup in a job's error shows as text.
    assert 'report &lt;i&gt;probe&lt;/i&gt; has no template' in shown['exc_info']
    assert '<i>' not in shown['exc_info'] + shown['description']


# ---- A running job and the workers ----


def test_running_job_shows_its_progress_and_its_busy_worker(redis_conn, report_jobs, tmp_path):
    flag = tmp_path / 'release'
    job = queues.enqueue('hold_report', [str(flag)], connection=redis_conn)
    with open(tmp_path / 'worker.log', 'w') as log:
        worker = subprocess.Popen(
            [sys.executable, '-c', 'import cli; cli.main()', 'worker', 'reports'],
            cwd=ROOT,
            env=dict(os.environ),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        with running_dashboard(tmp_path) as dashboard:
            wait_until(lambda: 'progress' in job.get_meta(refresh=True), 20, 'the job reported progress')
            shown = dashboard.json(f'/0/data/job/{job.id}.json')
            assert shown['status'] == 'started'
            assert json.loads(shown['metadata'])['progress']['step'] == 'waiting'
            assert job.id in listed(dashboard, 'reports', 'started')
            assert counts(dashboard)['reports']['started'] == 1

            # rq-dashboard 0.9 alone loads a busy worker's current job with pickle and fails; `jobs dashboard`
            # gives it the project's worker class, which reads the job as JSON.
            busy = dashboard.json('/0/data/workers.json')['workers']
            assert len(busy) == 1 and job.id in json.dumps(busy[0]['current_job'])

            flag.touch()
            wait_until(lambda: job.get_status(refresh=True) == 'finished', 20, 'the job finished')
            # The worker drops its current job a moment before it records its state and count.
            workers = wait_until(
                lambda: [
                    w
                    for w in dashboard.json('/0/data/workers.json')['workers']
                    if w['current_job'] == 'idle'
                    and w['state'].lower().endswith('idle')
                    # Its host's first chore (measuring its clones, on its host's queue) and the job.
                    and w['successful_job_count'] == 2
                ],
                20,
                'the worker is idle',
            )
            host_queue = queues.host_queue(settings_module.get_settings().host_name)
            assert len(workers) == 1 and workers[0]['queues'] == [host_queue, 'reports']
    finally:
        stop(worker)
    assert worker.returncode == 0, (tmp_path / 'worker.log').read_text()


def test_job_page_inserts_job_text_as_html():
    """The job page's template interpolates description, meta and error unescaped (the jobs list escapes them)."""
    template = (Path(rq_dashboard.__file__).parent / 'templates' / 'rq_dashboard' / 'job.html').read_text()
    # `<%= %>` is underscore's raw interpolation; `<%- %>` would escape. docs/operations.md: "rq-dashboard".
    assert all(f'<%= d.{field} %>' in template for field in ('description', 'metadata', 'exc_info'))


# ---- Dependencies ----


def test_job_with_a_dependency_shows_its_dependencies(redis_conn, report_jobs, tmp_path):
    parent = queues.enqueue('render_report', [1], connection=redis_conn)
    child = queues.enqueue('render_report', [2], connection=redis_conn, depends_on=parent)
    orphan = queues.enqueue('render_report', [3], connection=redis_conn, depends_on=[parent, 'expired-job'])
    assert child.get_status() == 'deferred'
    with running_dashboard(tmp_path) as dashboard:
        assert child.id in listed(dashboard, 'reports', 'deferred')
        assert parent.id in listed(dashboard, 'reports', 'queued')
        assert dashboard.json(f'/0/data/job/{parent.id}.json')['status'] == 'queued'
        data = dashboard.json(f'/0/data/job/{child.id}.json')
        assert data['status'] == 'deferred'
        assert data['depends_on'] == [parent.id] and data['depends_on_status'] == ['active']
        data = dashboard.json(f'/0/data/job/{orphan.id}.json')
        statuses = dict(zip(data['depends_on'], data['depends_on_status'], strict=True))
        assert statuses == {parent.id: 'active', 'expired-job': 'expired'}
        assert dashboard.get(f'/0/view/job/{child.id}')[0] == 200
        assert "has no attribute 'decode'" not in dashboard.log()


# ---- Access ----


def test_basic_auth_is_required_when_credentials_are_set(redis_conn, tmp_path):
    job = queues.enqueue('ping', connection=redis_conn)
    secret = base64.urlsafe_b64encode(os.urandom(18)).decode()
    credentials = {'DASHBOARD_USERNAME': 'operator', 'DASHBOARD_PASSWORD': secret}
    with running_dashboard(tmp_path, extra_env=credentials) as dashboard:
        for path in (
            '/',
            '/0/view/queues',
            '/0/data/queues.json',
            f'/0/data/job/{job.id}.json',
            '/0/data/jobs/default/queued/8/asc/1.json',
            '/0/data/workers.json',
        ):
            assert dashboard.get(path)[0] == 401, path
            assert dashboard.get(path, auth=('operator', 'wrong'))[0] == 401, path
            assert dashboard.get(path, auth=('someone', secret))[0] == 401, path
            assert dashboard.get(path, auth=('operator', secret))[0] == 200, path
        assert dashboard.json(f'/0/data/job/{job.id}.json', auth=('operator', secret))['status'] == 'queued'
        assert secret not in dashboard.log()


def test_public_bind_without_credentials_is_refused(redis_conn):
    port = str(free_port())
    result = run_jobs_cli('dashboard', '--bind', '0.0.0.0', '--port', port, timeout=30)
    assert result.returncode == 2, result.stderr
    assert 'DASHBOARD_USERNAME' in result.stderr and 'DASHBOARD_PASSWORD' in result.stderr

    half = dict(os.environ, DASHBOARD_USERNAME='operator')
    result = run_jobs_cli('dashboard', '--bind', '127.0.0.1', '--port', port, env=half, timeout=30)
    assert result.returncode == 2, result.stderr
    assert 'Set both DASHBOARD_USERNAME and DASHBOARD_PASSWORD' in result.stderr


def test_a_busy_port_or_an_unknown_address_ends_in_one_line(redis_conn):
    with socket.socket() as other_program:
        other_program.bind(('127.0.0.1', 0))
        other_program.listen()
        port = str(other_program.getsockname()[1])
        result = run_jobs_cli('dashboard', '--port', port, timeout=30)
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines()[-1] == (
        f'Error: Port {port} on 127.0.0.1 is in use by another program; stop '
        f'that program or pick another port, for example --port {int(port) + 1}.'
    )
    assert 'rq-dashboard on' not in result.stderr and 'Traceback' not in result.stderr

    credentials = dict(os.environ, DASHBOARD_USERNAME='operator', DASHBOARD_PASSWORD='secret')
    result = run_jobs_cli('dashboard', '--bind', 'no-such-host.invalid', '--port', port, env=credentials, timeout=30)
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines()[-1].startswith('Error: Cannot listen on no-such-host.invalid:')
    assert 'Traceback' not in result.stderr


@pytest.mark.parametrize(
    'bind, expected',
    [
        ('127.0.0.1', 'http://127.0.0.1:9399/'),
        ('localhost', 'http://localhost:9399/'),
        ('::1', 'http://[::1]:9399/'),
        ('::', 'http://[::]:9399/'),
        ('fe80::1', 'http://[fe80::1]:9399/'),
    ],
)
def test_the_address_it_announces_opens_in_a_browser(bind, expected):
    assert base_url(bind, 9399) == expected
