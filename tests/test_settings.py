import ast
import os
import subprocess
import sys
from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest

from helpers import run_jobs_cli
from rqjobs.exceptions import SettingsError
from rqjobs.settings import VARIABLES, Settings, get_settings, parse_sentinel_url, redact_url

ROOT = Path(__file__).resolve().parent.parent


def test_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = Settings.from_env({})
    assert settings.redis_url is None
    assert settings.data_dir == tmp_path / 'var'
    assert settings.database_url == f'sqlite:///{tmp_path / "var" / "rqjobs.db"}'
    assert settings.repo_root == tmp_path / 'var' / 'repos'
    assert (settings.update_interval_days, settings.enable_warehouse_commit, settings.task_max_size_per_user) == (
        7,
        True,
        5,
    )
    assert (settings.job_timeout, settings.soft_time_limit, settings.result_ttl) == (1800, 1500, 3600)
    assert settings.extra_job_modules == ()
    assert settings.access_log_continue is True


def test_values_are_read(tmp_path):
    settings = Settings.from_env(
        {
            'REDIS_URL': 'redis://127.0.0.1:6390/2',
            'JOBS_DATA_DIR': str(tmp_path),
            'REPO_ROOT': str(tmp_path / 'r'),
            'UPDATE_INTERVAL': '3',
            'ENABLE_WAREHOUSE_COMMIT': 'no',
            'TASK_MAX_SIZE_PER_USER': '2',
            'JOB_TIMEOUT': '60',
            'SOFT_TIME_LIMIT': '50',
            'RESULT_TTL': '0',
            'JOBS_EXTRA_MODULES': 'myapp.reports=reports, myapp.mail',
            'ACCESS_LOG_CONTINUE': 'off',
        }
    )
    assert settings.access_log_continue is False
    assert settings.redis_url == 'redis://127.0.0.1:6390/2'
    assert settings.repo_root == tmp_path / 'r'
    assert settings.enable_warehouse_commit is False
    assert (settings.update_interval_days, settings.task_max_size_per_user) == (3, 2)
    assert (settings.job_timeout, settings.soft_time_limit, settings.result_ttl) == (60, 50, 0)
    assert settings.extra_job_modules == (('myapp.reports', 'reports'), ('myapp.mail', 'default'))
    assert settings.extra_queues == ('reports', 'default')


@pytest.mark.parametrize(
    'name, value, expected',
    [
        ('JOB_TIMEOUT', 'soon', 'JOB_TIMEOUT=1800'),
        ('JOB_TIMEOUT', '5', 'minimum of 10'),
        ('UPDATE_INTERVAL', '0', 'UPDATE_INTERVAL=7'),
        ('TASK_MAX_SIZE_PER_USER', '1.5', 'TASK_MAX_SIZE_PER_USER=5'),
        ('RESULT_TTL', '-1', 'RESULT_TTL=3600'),
        ('ENABLE_WAREHOUSE_COMMIT', 'maybe', 'ENABLE_WAREHOUSE_COMMIT=false'),
        ('ACCESS_LOG_CONTINUE', 'later', 'ACCESS_LOG_CONTINUE=false'),
        ('REDIS_TIMEOUT', 'nan', 'REDIS_TIMEOUT=5'),
        ('REDIS_URL', 'localhost:6379', 'REDIS_URL=redis://127.0.0.1:6379/0'),
        ('DATABASE_URL', 'oracle://scott:tiger@db/x', 'DATABASE_URL=sqlite:///'),
        ('JOBS_EXTRA_MODULES', 'my-app.tasks', 'JOBS_EXTRA_MODULES=myapp.reports=reports'),
        ('JOBS_EXTRA_MODULES', 'myapp.tasks=Bad Queue', 'JOBS_EXTRA_MODULES=myapp.reports=reports'),
    ],
)
def test_bad_values_name_the_variable_and_a_good_example(name, value, expected):
    with pytest.raises(SettingsError) as info:
        Settings.from_env({name: value})
    assert name in str(info.value)
    assert expected in str(info.value)


def test_soft_limit_must_be_below_hard_limit():
    with pytest.raises(SettingsError, match='SOFT_TIME_LIMIT .* must be below JOB_TIMEOUT'):
        Settings.from_env({'JOB_TIMEOUT': '100', 'SOFT_TIME_LIMIT': '100'})
    # A short hard limit alone pulls the default soft limit below it.
    assert Settings.from_env({'JOB_TIMEOUT': '60'}).soft_time_limit == 55


def test_a_password_in_a_bad_url_is_not_shown():
    with pytest.raises(SettingsError) as info:
        Settings.from_env({'DATABASE_URL': 'oracle://scott:tiger@db/x'})
    assert 'tiger' not in str(info.value)
    assert redact_url('redis://:s3cret@host:6379/0') == 'redis://:***@host:6379/0'
    assert redact_url('postgresql://u:p%40ss@h/db') == 'postgresql://u:***@h/db'


def test_settings_are_frozen_and_read_once(env):
    settings = get_settings()
    with pytest.raises(FrozenInstanceError):
        settings.job_timeout = 1
    env.setenv('JOB_TIMEOUT', '99')
    assert get_settings() is settings


def test_every_variable_is_documented_in_the_settings_page():
    page = (Path(__file__).parent.parent / 'docs' / 'settings.md').read_text()
    missing = [name for name in VARIABLES if f'`{name}`' not in page]
    assert not missing


@pytest.mark.parametrize(
    'name, value, expected',
    [
        # A password with an unescaped "/" ends the host part early: urllib takes its start for a port.
        ('REDIS_URL', 'redis://jobs:s3/cret@127.0.0.1:6379/0', 'REDIS_URL has an invalid port (a number up to 65535)'),
        ('REDIS_URL', 'redis://127.0.0.1:99999/0', 'REDIS_URL has an invalid port (a number up to 65535)'),
        (
            'DATABASE_URL',
            'postgresql://jobs:s3/cret@127.0.0.1/jobs',
            'DATABASE_URL has an invalid port (a number up to 65535)',
        ),
        ('DATABASE_URL', 'sqlite://', "DATABASE_URL='sqlite://' names no database"),
        (
            'DATABASE_URL',
            'postgresql://127.0.0.1:5432/',
            "DATABASE_URL='postgresql://127.0.0.1:5432/' names no database",
        ),
    ],
)
def test_a_url_that_cannot_be_used_is_a_setting_error_in_one_line(env, name, value, expected):
    env.setenv(name, value)
    result = run_jobs_cli('status', env=dict(os.environ))
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f'Error: {expected}; for example {name}=') and result.stderr.count('\n') == 1
    assert 's3' not in result.stderr


# Arrows point down: settings and the schema sit at the bottom and import nothing of the project above them.
BOTTOM_MODULES = {'rqjobs.clock', 'rqjobs.exceptions'}


def project_imports(path: Path) -> set[str]:
    """Return the project modules (rqjobs.*, models, cli, scheduler) that the module at `path` imports anywhere."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            if node.module == 'rqjobs':
                names.update(f'rqjobs.{alias.name}' for alias in node.names)
    return {name for name in names if name.split('.')[0] in {'rqjobs', 'models', 'cli', 'scheduler'}} - {'rqjobs'}


@pytest.mark.parametrize('module', ['rqjobs/settings.py', 'models.py'])
def test_settings_and_models_import_nothing_of_the_project_but_clock_and_exceptions(module):
    assert project_imports(ROOT / module) <= BOTTOM_MODULES


def test_the_import_check_sees_every_form_of_import(tmp_path):
    source = tmp_path / 'module.py'
    source.write_text('import models\nfrom rqjobs import clock, queues\ndef f():\n    from rqjobs.database import db\n')
    assert project_imports(source) == {'models', 'rqjobs.clock', 'rqjobs.queues', 'rqjobs.database'}


def test_the_command_line_and_its_help_load_no_orm():
    code = (
        'import sys, cli\n'
        'from click.testing import CliRunner\n'
        'result = CliRunner().invoke(cli.main, ["--help"])\n'
        'assert result.exit_code == 0, result.output\n'
        'print(sorted(name for name in sys.modules if name.split(".")[0] in {"peewee", "playhouse", "models"}))\n'
    )
    result = subprocess.run(
        [sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, '[]\n', '')


def test_a_sentinel_url_is_read_whole():
    url = (
        'redis+sentinel://jobs:p%40ss@10.0.0.1:26380,10.0.0.2,[::1]:26381/mymaster/2'
        '?sentinel_password=s3ntinel&sentinel_username=watch&socket_timeout=2&ssl=true&ssl_cert_reqs=none'
    )
    assert Settings.from_env({'REDIS_URL': url}).redis_url == url
    address = parse_sentinel_url(url)
    assert address.hosts == (('10.0.0.1', 26380), ('10.0.0.2', 26379), ('::1', 26381))
    assert (address.master, address.db, address.username, address.password) == ('mymaster', 2, 'jobs', 'p@ss')
    assert (address.sentinel_username, address.sentinel_password) == ('watch', 's3ntinel')
    assert (address.ssl, address.ssl_cert_reqs, dict(address.timeouts)) == (True, 'none', {'socket_timeout': 2.0})
    assert 'p@ss' not in repr(address) and 's3ntinel' not in repr(address)
    # rq-dashboard's query form of the master name and database, and TLS by scheme.
    address = parse_sentinel_url('rediss+sentinel://h1:26379?service=jobs&db=3')
    assert (address.master, address.db, address.ssl, address.password) == ('jobs', 3, True, None)


@pytest.mark.parametrize(
    'url, expected',
    [
        ('redis+sentinel://h1:26379,h2:26379', 'names no master'),
        ('redis+sentinel://h1:26379,h2:26379/', 'names no master'),
        ('redis+sentinel://h1:26379,,h2:26379/jobs', 'lists an empty Sentinel host'),
        ('redis+sentinel://h1:2637x/jobs', 'invalid Sentinel port'),
        ('redis+sentinel://h1:99999/jobs', 'invalid Sentinel port'),
        ('redis+sentinel://h1/jobs/zero', "database 'zero' that is not a whole number"),
        ('redis+sentinel://h1/jobs/0?client_type=slave', 'asks for a replica'),
        ('redis+sentinel://h1/jobs/0?sentinel_pasword=x', "unknown option 'sentinel_pasword'"),
        ('redis+sentinel://h1/jobs/0?ssl=maybe', "ssl='maybe', not true or false"),
        ('redis+sentinel://h1/jobs/0?socket_timeout=0', 'not a number of seconds above 0'),
        ('redis+sentinel://h1/jobs/0?db=1&db=2', 'gives db twice'),
    ],
)
def test_a_bad_sentinel_url_says_why_with_an_example(url, expected):
    with pytest.raises(SettingsError) as info:
        Settings.from_env({'REDIS_URL': url})
    message = str(info.value)
    assert expected in message
    assert 'for example REDIS_URL=redis+sentinel://jobs:secret@10.0.0.1:26379,10.0.0.2:26379' in message


def test_a_bad_sentinel_url_keeps_its_passwords_out_of_the_message():
    with pytest.raises(SettingsError) as info:
        Settings.from_env({'REDIS_URL': 'redis+sentinel://jobs:t0p@h1:26379,h2:26379/jobs/x?sentinel_password=s3c'})
    assert 't0p' not in str(info.value) and 's3c' not in str(info.value)


def test_redaction_covers_sentinel_urls():
    assert (
        redact_url('redis+sentinel://jobs:t0p@h1:26379,h2:26379/jobs/0?sentinel_password=s3c&ssl=true')
        == 'redis+sentinel://jobs:***@h1:26379,h2:26379/jobs/0?sentinel_password=***&ssl=true'
    )
    assert redact_url('redis+sentinel://:a:b@c@h1,h2/jobs') == 'redis+sentinel://:***@h1,h2/jobs'
    assert redact_url('redis+sentinel://h1:26379,h2:26379/jobs/0') == 'redis+sentinel://h1:26379,h2:26379/jobs/0'
    assert redact_url('redis://h:6379/0?password=x') == 'redis://h:6379/0?password=***'


def test_wait_settings():
    assert (Settings.from_env({}).redis_wait_replicas, Settings.from_env({}).redis_wait_timeout) == (0, 1000)
    settings = Settings.from_env({'REDIS_WAIT_REPLICAS': '2', 'REDIS_WAIT_TIMEOUT': '250'})
    assert (settings.redis_wait_replicas, settings.redis_wait_timeout) == (2, 250)
    with pytest.raises(SettingsError, match='REDIS_WAIT_TIMEOUT .* must be below REDIS_TIMEOUT'):
        Settings.from_env({'REDIS_WAIT_REPLICAS': '1', 'REDIS_WAIT_TIMEOUT': '5000'})
    with pytest.raises(SettingsError, match='REDIS_WAIT_REPLICAS=1'):
        Settings.from_env({'REDIS_WAIT_REPLICAS': '-1'})
