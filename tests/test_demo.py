import errno
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from chat_server import ChatServer

from helpers import ROOT, git, run_jobs_cli
from rqjobs import demo, settings


@pytest.mark.slow
def test_demo_runs_end_to_end_on_the_embedded_defaults(env, tmp_path):
    """README's first command: no REDIS_URL, no DATABASE_URL, no network."""
    env.delenv('REDIS_URL')
    env.delenv('DATABASE_URL')
    environ = os.environ.copy()
    try:
        first = run_jobs_cli('demo', env=environ)
        assert first.returncode == 0, first.stderr + first.stdout
        out = first.stdout
        assert 'Completed demo/inkwell at ' in out and '(CLITools)' in out
        assert '- Getting started (getting-started)' in out
        assert 'Inkwell turns plain-text notes into a searchable static site.' in out
        assert 'class Site  [inkwell/site.py#L' in out
        assert 'Timings: clone' in out
        assert (tmp_path / 'var' / 'rqjobs.db').exists()
        socket = tmp_path / 'var' / 'redis' / 'redis.sock'
        assert out.rstrip().endswith(
            f'The embedded Redis keeps running at unix://{socket} for later commands on '
            f'the data directory {tmp_path / "var"}; `rqjobs redis url` prints its URL, '
            f'`rqjobs redis stop` stops it.'
        )
        # A second run reprocesses the same warehouse instead of refusing a duplicate.
        second = run_jobs_cli('demo', env=environ)
        assert second.returncode == 0, second.stderr + second.stdout
        assert out.split('Completed ')[1].split(' at ')[0] == second.stdout.split('Completed ')[1].split(' at ')[0]
    finally:
        run_jobs_cli('redis', 'stop', env=environ)


@pytest.mark.slow
@pytest.mark.db
def test_demo_has_its_pages_written_by_a_model(env, redis_conn, database):
    with ChatServer() as server:
        env.setenv('LLM_BASE_URL', server.base_url)
        env.setenv('LLM_MODEL', 'test-model')
        env.setenv('LLM_RETRY_BACKOFF', '1')
        result = run_jobs_cli('demo', env=os.environ.copy())
    assert result.returncode == 0, result.stderr + result.stdout
    out = result.stdout
    planned = int(re.search(r'the model \(test-model\) writes (\d+) pages, one job each', out).group(1))
    pages = int(re.search(r'Completed demo/inkwell at \w+ \(\w+\): \d+ files, (\d+) pages', out).group(1))
    assert planned == pages == len(server.chat_requests) == len({r.prompt_hash for r in server.chat_requests})
    assert all(r.model == 'test-model' for r in server.chat_requests)
    overview = out.split('Overview (start):\n')[1].split('\nMind map:')[0]
    # The model's page (the stand-in server's), not the deterministic one built from the README.
    assert overview.startswith('  # Overview\n  \n  This part of the repository is built around `'), overview
    assert 'Inkwell turns plain-text notes' not in overview


def wait_for_reader(fifo, timeout=60.0) -> int:
    """Open `fifo` for writing once a reader has it open; return the descriptor."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO or time.monotonic() > deadline:
                raise
        time.sleep(0.05)


@pytest.mark.slow
def test_demo_runs_again_after_ctrl_c_during_its_job(env, tmp_path):
    env.delenv('REDIS_URL')
    env.delenv('DATABASE_URL')
    environ = os.environ.copy()
    repository = demo.build_repository(tmp_path / 'var' / 'demo' / 'inkwell')
    # One object of the demo repository becomes a FIFO: the clone blocks reading it, and opening the other end tells
    # the test that the demo's job is under way, without guessing a time.
    blob = git(repository, 'rev-parse', 'HEAD:README.md')
    obj = repository / '.git' / 'objects' / blob[:2] / blob[2:]
    content = obj.read_bytes()
    obj.unlink()
    os.mkfifo(obj)
    first = subprocess.Popen(
        [sys.executable, '-c', 'import cli; cli.main()', 'demo'],
        cwd=ROOT,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        writer = wait_for_reader(obj)
        # Ctrl-C in a terminal: SIGINT to the whole foreground process group.
        os.killpg(first.pid, signal.SIGINT)
        output = first.communicate(timeout=60)[0]
        os.close(writer)
        assert first.returncode != 0, output
        obj.unlink()
        obj.write_bytes(content)
        second = run_jobs_cli('demo', env=environ)
        assert second.returncode == 0, second.stderr + second.stdout
        assert 'Completed demo/inkwell at ' in second.stdout
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
        run_jobs_cli('redis', 'stop', env=environ)


@pytest.mark.slow
def test_demo_rebuilds_a_repository_left_half_made(env, tmp_path):
    """Ctrl-C while the demo builds its repository left a .git without commits, which the next runs reused."""
    env.delenv('REDIS_URL')
    env.delenv('DATABASE_URL')
    environ = os.environ.copy()
    half_made = tmp_path / 'var' / 'demo' / 'inkwell'
    half_made.mkdir(parents=True)
    git(half_made, 'init', '-q')
    try:
        result = run_jobs_cli('demo', env=environ)
        assert result.returncode == 0, result.stderr + result.stdout
        assert 'Completed demo/inkwell at ' in result.stdout
        assert git(half_made, 'rev-list', '--count', 'HEAD') == '3'
        assert sorted(path.name for path in half_made.parent.iterdir()) == ['inkwell']
    finally:
        run_jobs_cli('redis', 'stop', env=environ)


def mark_started_by(job, worker):
    """Put a job in the state a worker leaves it in while running it (or after dying in it)."""
    job.set_status('started')
    job.worker_name = worker.name
    job.save()


@pytest.mark.db
def test_demo_leaves_its_job_to_a_live_worker_and_says_so(redis_conn, database, local, tmp_path):
    from rqjobs import queues, warehouse
    from rqjobs.exceptions import InvalidSubmission
    from rqjobs.worker import build_worker

    repository = demo.build_repository(tmp_path / 'inkwell')
    row = demo.submit(repository, redis_conn, settings.get_settings())
    job = queues.JsonJob.fetch(warehouse.process_job_id(row.id), connection=redis_conn)
    worker = build_worker(redis_conn, ['warehouse'])
    worker.register_birth()
    mark_started_by(job, worker)
    with pytest.raises(InvalidSubmission, match=f'being documented right now by worker {worker.name}'):
        demo.submit(repository, redis_conn, settings.get_settings())
    assert job.get_status() == 'started'
    # Once that worker is gone, the job is a leftover: the demo removes it and queues its warehouse again.
    worker.register_death()
    assert demo.submit(repository, redis_conn, settings.get_settings()).id == row.id
    again = queues.JsonJob.fetch(job.id, connection=redis_conn)
    assert again.get_status() == 'queued' and again.worker_name is None
