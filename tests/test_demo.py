import os

import pytest

from conftest import run_jobs_cli


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
        assert out.rstrip().endswith(f'The embedded Redis keeps running at unix://{socket} (files in '
                                     f'{socket.parent}) for the next commands run from this directory; '
                                     f'`rqjobs redis url` prints its URL, `rqjobs redis stop` stops it.')
        # A second run reprocesses the same warehouse instead of refusing a duplicate.
        second = run_jobs_cli('demo', env=environ)
        assert second.returncode == 0, second.stderr + second.stdout
        assert out.split('Completed ')[1].split(' at ')[0] == second.stdout.split('Completed ')[1].split(' at ')[0]
    finally:
        run_jobs_cli('redis', 'stop', env=environ)
