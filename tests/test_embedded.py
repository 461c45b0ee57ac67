import subprocess
import sys

import pytest
import redis

from rqjobs.embedded import MAX_SOCKET_PATH, EmbeddedRedis


@pytest.mark.slow
def test_starts_once_is_shared_and_persists(tmp_path):
    server = EmbeddedRedis(tmp_path / 'redis')
    assert not server.is_running()
    try:
        # Three processes started at the same moment end up on one server.
        code = 'import sys; from rqjobs.embedded import EmbeddedRedis; print(EmbeddedRedis(sys.argv[1]).ensure_running())'
        processes = [subprocess.Popen([sys.executable, '-c', code, str(tmp_path / 'redis')], stdout=subprocess.PIPE,
                                      text=True) for _ in range(3)]
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
