import os
import subprocess
import sys

import pytest
import redis

from helpers import run_jobs_cli
from rqjobs.embedded import MAX_SOCKET_PATH, EmbeddedRedis


@pytest.mark.slow
def test_starts_once_is_shared_and_persists(tmp_path):
    server = EmbeddedRedis(tmp_path / 'redis')
    assert not server.is_running()
    try:
        # Three processes started at the same moment end up on one server.
        code = (
            'import sys; from rqjobs.embedded import EmbeddedRedis; print(EmbeddedRedis(sys.argv[1]).ensure_running())'
        )
        processes = [
            subprocess.Popen([sys.executable, '-c', code, str(tmp_path / 'redis')], stdout=subprocess.PIPE, text=True)
            for _ in range(3)
        ]
        urls = {process.communicate(timeout=30)[0].strip() for process in processes}
        assert urls == {server.url}
        pid = server.client().info('server')['process_id']
        assert server.ensure_running() == server.url
        assert server.client().info('server')['process_id'] == pid
        assert server.client().config_get('appendonly') == {'appendonly': 'yes'}
        server.client().set('kept', 'yes')
    finally:
        assert server.stop()
    assert not server.is_running()
    assert not server.stop()
    # Data survives a restart through the append-only file.
    server.ensure_running()
    try:
        assert server.client().get('kept') == b'yes'
    finally:
        server.stop()


def test_no_tcp_port_and_a_private_socket(redis_server):
    client = redis_server.client()
    assert client.config_get('port') == {'port': '0'}
    assert oct(redis_server.socket_path.stat().st_mode & 0o777) == oct(0o700)


def test_deep_directories_get_a_short_socket_path(tmp_path):
    deep = tmp_path / ('d' * 60) / ('e' * 60)
    server = EmbeddedRedis(deep)
    assert len(str(server.socket_path)) <= MAX_SOCKET_PATH
    assert server.socket_path != EmbeddedRedis(tmp_path / ('d' * 60) / ('f' * 60)).socket_path


def test_a_running_server_answers(redis_server):
    assert redis_server.is_running()
    assert isinstance(redis_server.client(), redis.Redis)


def test_a_data_directory_that_cannot_be_made_ends_in_one_line(tmp_path):
    (tmp_path / 'a-file').write_text('')
    env = {name: value for name, value in os.environ.items() if name != 'REDIS_URL'}
    env['JOBS_DATA_DIR'] = str(tmp_path / 'a-file' / 'var')
    result = run_jobs_cli('status', env=env, timeout=60)
    assert result.returncode == 1, result.stderr
    assert result.stderr == (
        f'Error: Cannot start the embedded Redis in {tmp_path}/a-file/var/redis '
        f'(Not a directory). Set JOBS_DATA_DIR to a directory you can write, for example '
        f'JOBS_DATA_DIR=$HOME/.local/share/rqjobs, or set REDIS_URL to use another server.\n'
    )


@pytest.mark.slow
@pytest.mark.parametrize('name', [b'my projects #1?', b'caf\xc3\xa9', b'latin-1 caf\xe9'], ids=repr)
def test_a_data_directory_with_spaces_or_any_bytes_in_its_name_works(tmp_path, name):
    data_dir = tmp_path / os.fsdecode(name) / 'var'
    env = {key: value for key, value in os.environ.items() if key != 'REDIS_URL'}
    env['JOBS_DATA_DIR'] = str(data_dir)
    try:
        result = run_jobs_cli('status', env=env, timeout=60)
        assert result.returncode == 0, result.stderr
        assert 'No workers.' in result.stdout
    finally:
        EmbeddedRedis(data_dir / 'redis').stop()
