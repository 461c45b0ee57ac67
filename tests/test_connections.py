"""The Redis client: a server that accepts connections and never answers costs REDIS_TIMEOUT, not a multiple of it."""

import socket
import threading
import time

import pytest
from click.testing import CliRunner

import cli
from rqjobs import access_log, settings, warehouse
from rqjobs.exceptions import RedisUnavailable

TIMEOUT = 1.0
# What README promises (1.5x REDIS_TIMEOUT), plus room for imports and the database on a busy machine.
BOUND = 1.5 * TIMEOUT + 0.5


@pytest.fixture
def silent_redis(env):
    """A listener that accepts connections and reads what it is sent, but never answers; REDIS_URL points at it."""
    server = socket.create_server(('127.0.0.1', 0))
    server.listen(64)
    held = []

    def serve():
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            held.append(client)
            threading.Thread(target=lambda c=client: _drain(c), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    env.setenv('REDIS_URL', f'redis://127.0.0.1:{server.getsockname()[1]}/0')
    env.setenv('REDIS_TIMEOUT', str(TIMEOUT))
    settings.reset()
    yield held
    server.close()
    for client in held:
        client.close()


def _drain(client: socket.socket) -> None:
    try:
        while client.recv(65536):
            pass
    except OSError:
        pass


def timed(call):
    started = time.monotonic()
    outcome = call()
    return outcome, time.monotonic() - started


@pytest.mark.parametrize('args', [
    ['enqueue', 'ping'],
    ['warehouse', 'add', 'https://github.com/octocat/Hello-World.git'],
    ['status'],
], ids=lambda args: ' '.join(args[:2]))
def test_a_command_against_a_silent_redis_fails_within_the_timeout(silent_redis, database, args):
    result, elapsed = timed(lambda: CliRunner().invoke(cli.main, args))
    assert result.exit_code == 1, result.output
    assert elapsed <= BOUND, f'{args} took {elapsed:.1f} s with REDIS_TIMEOUT={TIMEOUT}'
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('Error: Cannot reach Redis at redis://127.0.0.1:'), result.stderr


def test_submit_warehouse_against_a_silent_redis_fails_within_the_timeout(silent_redis, database):
    def submit():
        with pytest.raises(RedisUnavailable, match='Cannot reach Redis'):
            warehouse.submit_warehouse('https://github.com/octocat/Hello-World.git')

    _, elapsed = timed(submit)
    assert elapsed <= BOUND, f'submit_warehouse took {elapsed:.1f} s with REDIS_TIMEOUT={TIMEOUT}'


def test_the_access_log_producer_stays_within_its_own_bound_against_a_silent_redis(silent_redis):
    entry = {'resource_type': 'warehouse', 'resource_id': 'w1'}
    accepted, elapsed = timed(lambda: access_log.enqueue_access_log(entry))
    assert accepted is False
    assert elapsed <= access_log.PRODUCER_TIMEOUT + 0.5

