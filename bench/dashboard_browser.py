"""What rq-dashboard shows of the project's jobs in a real browser: headless Chromium screenshots and rendered DOM.

Starts a private embedded Redis and SQLite database in a temporary directory, runs jobs of several states (finished,
failed, scheduled, deferred, with progress meta) through a real `jobs worker`, starts `jobs dashboard` on a free
loopback port, then has headless Chromium render the queues page, a jobs list and job pages. It saves a PNG of each
and checks in the rendered DOM (after the pages' JavaScript ran) that the project's job names, ids and progress
appear. Everything listens on 127.0.0.1 only. Needs /usr/bin/chromium (bench/install-chromium.sh). Exit 1 if a check
fails.

Usage: python bench/dashboard_browser.py [--out DIR] [--show-full-args] [--chromium PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The project root replaces this script's directory on the path, which holds scripts named like modules.
sys.path[0] = str(ROOT)

from bench.harness import jobs_command
from rqjobs.embedded import EmbeddedRedis

# A user's job module, added through JOBS_EXTRA_MODULES as docs/jobs.md describes; the project's own jobs never fail
# on purpose.
REPORT_JOBS = '''
    from rqjobs.exceptions import PermanentJobError
    from rqjobs.queues import report_progress

    JOBS = ('render_report', 'broken_report')


    def render_report(report_id, title=''):
        """Render a report, recording its progress."""
        report_progress('render', 40, report_id=report_id)
        return {'report_id': report_id, 'title': title}


    def broken_report(report_id):
        """Fail as a report without a template does."""
        raise PermanentJobError(f'report {report_id} has no template')
'''
# An argument with markup, to see whether the job page escapes text taken from a job.
PROBE = '<i id="markup-probe">probe</i>'
CHROMIUM_TIMEOUT = 90


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, process: subprocess.Popen, log_path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            sys.exit(f'jobs dashboard exited with {process.returncode}:\n{log_path.read_text()}')
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            if time.monotonic() > deadline:
                sys.exit(f'jobs dashboard did not answer at {url}:\n{log_path.read_text()}')
            time.sleep(0.1)


def stop(process: subprocess.Popen) -> None:
    """End a process started in its own session, with its whole group."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=15)


def chromium(binary: str, work: Path, url: str, action: str) -> str:
    """Run headless Chromium on `url` with a fresh profile and one action (--screenshot=PATH or --dump-dom)."""
    profile = tempfile.mkdtemp(prefix='profile-', dir=work)
    command = [
        binary,
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
        # Loopback only: no proxy from the environment, and no name but 127.0.0.1 resolves.
        '--no-proxy-server',
        '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1',
        f'--user-data-dir={profile}',
        '--window-size=1400,1000',
        '--virtual-time-budget=5000',
        action,
        url,
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = process.communicate(timeout=CHROMIUM_TIMEOUT)
    finally:
        # Chromium's helper processes (zygote, crashpad) may outlive the browser process.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        if process.returncode is None:
            process.wait(timeout=15)
    if process.returncode != 0:
        sys.exit(f'chromium failed ({process.returncode}) on {url}:\n{err.decode(errors="replace")[-2000:]}')
    return out.decode('utf-8', errors='replace')


def run_jobs(env: dict) -> dict[str, str]:
    """Enqueue jobs of every state through the project's API, run the due ones with a real worker; return their ids."""
    os.environ.update(env)
    from rqjobs import queues
    from rqjobs.connections import get_redis
    from rqjobs.settings import Settings

    settings = Settings.from_env()
    connection = get_redis(settings)

    def enqueue(job: str, *args, **options):
        return queues.enqueue(job, args, connection=connection, settings=settings, **options).id

    ids = {
        'finished': enqueue('ping'),
        'progress': enqueue('render_report', 7, kwargs={'title': 'Getting started'}),
        'failed': enqueue('broken_report', 8),
        'probe': enqueue('broken_report', PROBE),
        'scheduled': enqueue('ping', delay=timedelta(hours=1)),
    }
    ids['deferred'] = enqueue('render_report', 9, depends_on=ids['scheduled'])
    subprocess.run(
        jobs_command('-q', 'worker', '--burst', 'default', 'reports'),
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    ids['queued'] = enqueue('render_report', 10, meta={'progress': {'step': 'waiting', 'percent': 0}})
    statuses = {name: queues.JsonJob.fetch(job_id, connection=connection).get_status() for name, job_id in ids.items()}
    expected = {
        'finished': 'finished',
        'progress': 'finished',
        'failed': 'failed',
        'probe': 'failed',
        'scheduled': 'scheduled',
        'deferred': 'deferred',
        'queued': 'queued',
    }
    if statuses != expected:
        sys.exit(f'jobs did not end as expected: {statuses}')
    connection.close()
    return ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', type=Path, help='directory for the screenshots [default: a new temporary one]')
    parser.add_argument(
        '--show-full-args',
        action='store_true',
        help='start the dashboard with RQ_DASHBOARD_SHOW_FULL_ARGS (calls with their arguments)',
    )
    parser.add_argument('--chromium', default='/usr/bin/chromium', help='Chromium binary [default: %(default)s]')
    options = parser.parse_args()
    if not os.access(options.chromium, os.X_OK):
        sys.exit(f'{options.chromium} not found; install it with bench/install-chromium.sh')
    out = options.out or Path(tempfile.mkdtemp(prefix='dashboard-screenshots-'))
    out.mkdir(parents=True, exist_ok=True)

    checks: list[tuple[bool, str]] = []
    findings: list[str] = []

    def check(ok: bool, what: str) -> None:
        checks.append((ok, what))
        print(f'  {"ok  " if ok else "FAIL"} {what}')

    with tempfile.TemporaryDirectory(prefix='dashboard-browser-') as directory:
        work = Path(directory)
        (work / 'report_jobs.py').write_text(textwrap.dedent(REPORT_JOBS))
        server = EmbeddedRedis(work / 'redis')
        env = dict(
            os.environ,
            REDIS_URL=server.ensure_running(),
            JOBS_DATA_DIR=str(work / 'var'),
            DATABASE_URL=f'sqlite:///{work}/bench.db',
            JOBS_EXTRA_MODULES='report_jobs=reports',
            PYTHONPATH=os.pathsep.join(filter(None, [str(work), os.environ.get('PYTHONPATH')])),
            PYTHONUNBUFFERED='1',
        )
        env.pop('TEST_DATABASE_URL', None)
        for name in ('DASHBOARD_USERNAME', 'DASHBOARD_PASSWORD', 'DASHBOARD_BIND'):
            env.pop(name, None)
        if options.show_full_args:
            env['RQ_DASHBOARD_SHOW_FULL_ARGS'] = 'true'
        sys.path.insert(0, str(work))
        try:
            subprocess.run(jobs_command('-q', 'db', 'init'), cwd=ROOT, env=env, check=True, capture_output=True)
            ids = run_jobs(env)
            print('jobs: ' + ', '.join(f'{name} {job_id}' for name, job_id in ids.items()))
            port = free_port()
            base = f'http://127.0.0.1:{port}/0'
            log_path = work / 'dashboard.log'
            with open(log_path, 'w') as log:
                dashboard = subprocess.Popen(
                    jobs_command('dashboard', '--bind', '127.0.0.1', '--port', str(port)),
                    cwd=ROOT,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            try:
                wait_for_http(f'{base}/data/queues.json', dashboard, log_path)
                print(f'dashboard: {base}/view/queues (rq-dashboard, full arguments: {options.show_full_args})')

                def page(name: str, path: str) -> str:
                    url = base + path
                    chromium(options.chromium, work, url, f'--screenshot={out / name}')
                    dom = chromium(options.chromium, work, url, '--dump-dom')
                    (out / name).with_suffix('.html').write_text(dom)
                    print(f'{name}: {url}')
                    # The pages carry their row templates in <script> tags: check only what was rendered.
                    return re.sub(r'<script\b.*?</script>', '', dom, flags=re.DOTALL)

                dom = page('queues.png', '/view/queues')
                queue_rows = re.findall(r'<tr data-role="queue">\s*<td>(\w+)</td>(.*?)</tr>', dom, re.DOTALL)
                rows = {name: [int(count) for count in re.findall(r'>(\d+)</a>', cells)] for name, cells in queue_rows}
                print(f'  queues page rows (queued, deferred, scheduled, started, finished, failed, canceled): {rows}')
                check(rows.get('default') == [0, 0, 1, 0, 1, 0, 0], 'queue default: 1 scheduled, 1 finished')
                check(
                    rows.get('reports') == [1, 1, 0, 0, 1, 2, 0],
                    'queue reports: 1 queued, 1 deferred, 1 finished, 2 failed',
                )

                dom = page('jobs-failed.png', '/view/jobs/reports/failed/8/asc/1')
                check(ids['failed'] in dom, f'failed list shows job {ids["failed"]}')
                check('broken_report' in dom, 'failed list shows the job name broken_report')
                check('PermanentJobError: report 8 has no template' in dom, 'failed list shows the error text')

                dom = page('job-progress.png', f'/view/job/{ids["progress"]}')
                check(ids['progress'] in dom, f'job page names job {ids["progress"]}')
                check('render_report' in dom, 'job page shows the job name render_report (rendered by JavaScript)')
                check('"step": "render"' in dom and '"percent": 40' in dom, 'job page shows the progress meta')
                check('Getting started' in dom, 'job page shows the JSON result')

                dom = page('job-failed.png', f'/view/job/{ids["failed"]}')
                check('PermanentJobError: report 8 has no template' in dom, 'failed job page shows the error text')

                dom = page('job-deferred.png', f'/view/job/{ids["deferred"]}')
                check(ids['deferred'] in dom, f'deferred job page names job {ids["deferred"]} (in its title)')
                check(
                    'Origin queue' in dom and 'render_report' in dom,
                    'a job with a dependency: its job page shows its data',
                )
                check(
                    ids['scheduled'] in dom.replace(f'/view/job/{ids["scheduled"]}', ''),
                    'a job with a dependency: its job page names the job it depends on',
                )

                dom = page('job-markup.png', f'/view/job/{ids["probe"]}')
                check(
                    '<i id="markup-probe">' not in dom and '&lt;i id="markup-probe"&gt;' in dom,
                    "job page shows markup in a job's error as text, not as HTML",
                )
            finally:
                stop(dashboard)
        finally:
            server.stop()

    failed = [what for ok, what in checks if not ok]
    print(f'{len(checks) - len(failed)} of {len(checks)} checks passed')
    for finding in findings:
        print(f'limit: {finding}')
    print(f'screenshots and rendered DOM: {out}')
    if failed:
        sys.exit(1)


if __name__ == '__main__':
    main()
