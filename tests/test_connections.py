"""The Redis client: a server that accepts connections and never answers costs REDIS_TIMEOUT, not a multiple of it."""

import socket
import threading
import time

import pytest
import redis
from click.testing import CliRunner

import cli
from rqjobs import dashboard, settings, warehouse
from rqjobs.contrib import access_log as producer
from rqjobs.exceptions import RedisUnavailable

TIMEOUT = 1.0
# What docs/reliability.md promises (1.5x REDIS_TIMEOUT), plus room for imports and the database on a busy machine.
BOUND = 1.5 * TIMEOUT + 0.5


# Replies of a server that gets as far as the handshake and PING: RESP3's HELLO, CLIENT SETINFO, SELECT, PING.
HANDSHAKE = {
    b'HELLO': b'%2\r\n$6\r\nserver\r\n$5\r\nredis\r\n$5\r\nproto\r\n:3\r\n',
    b'CLIENT': b'+OK\r\n',
    b'SELECT': b'+OK\r\n',
    b'PING': b'+PONG\r\n',
}


def listen(env, replies: dict[bytes, bytes]):
    """Start a listener that accepts connections and reads commands, answering only those in `replies`."""
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
            threading.Thread(target=answer, args=(client, replies), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    env.setenv('REDIS_URL', f'redis://127.0.0.1:{server.getsockname()[1]}/0')
    env.setenv('REDIS_TIMEOUT', str(TIMEOUT))
    settings.reset()
    return server, held


def answer(client: socket.socket, replies: dict[bytes, bytes]) -> None:
    pending = b''
    try:
        while data := client.recv(65536):
            pending += data
            commands, pending = parse(pending)
            for name in commands:
                if name in replies:
                    client.sendall(replies[name])
    except OSError:
        pass


def parse(data: bytes) -> tuple[list[bytes], bytes]:
    """Split RESP arrays off the front of `data`: the upper-cased names of the whole commands, and the rest."""
    names = []
    while data.startswith(b'*'):
        head, _, rest = data.partition(b'\r\n')
        args = []
        for _ in range(int(head[1:])):
            length, found, rest = rest.partition(b'\r\n')
            if not found or len(rest) < int(length[1:]) + 2:
                return names, data
            args.append(rest[: int(length[1:])])
            rest = rest[int(length[1:]) + 2 :]
        names.append(args[0].upper())
        data = rest
    return names, data


@pytest.fixture(params=['silent', 'answers PING only'])
def silent_redis(env, request):
    """A Redis that accepts connections and never answers, or stops answering after the handshake and PING."""
    server, held = listen(env, {} if request.param == 'silent' else HANDSHAKE)
    yield request.param
    server.close()
    for client in held:
        client.close()


def timed(call):
    started = time.monotonic()
    outcome = call()
    return outcome, time.monotonic() - started


@pytest.mark.parametrize(
    'args',
    [
        ['enqueue', 'ping'],
        ['warehouse', 'add', 'https://github.com/octocat/Hello-World.git'],
        ['status'],
    ],
    ids=lambda args: ' '.join(args[:2]),
)
def test_a_command_against_a_silent_redis_fails_within_the_timeout(silent_redis, database, args):
    result, elapsed = timed(lambda: CliRunner().invoke(cli.main, args))
    assert result.exit_code == 1, result.output
    assert elapsed <= BOUND, f'{args} took {elapsed:.1f} s with REDIS_TIMEOUT={TIMEOUT}'
    # The line saying which Redis is used comes once the server answered PING.
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith('Redis: ')]
    message = 'Cannot reach Redis at' if silent_redis == 'silent' else 'stopped answering (Timeout reading'
    assert len(lines) == 1 and lines[0].startswith('Error: ') and message in lines[0], result.stderr


def test_submit_warehouse_against_a_silent_redis_fails_within_the_timeout(silent_redis, database):
    def submit():
        with pytest.raises((RedisUnavailable, redis.TimeoutError)):
            warehouse.submit_warehouse('https://github.com/octocat/Hello-World.git')

    _, elapsed = timed(submit)
    assert elapsed <= BOUND, f'submit_warehouse took {elapsed:.1f} s with REDIS_TIMEOUT={TIMEOUT}'


def test_the_access_log_producer_stays_within_its_own_bound_against_a_silent_redis(silent_redis):
    entry = {'resource_type': 'warehouse', 'resource_id': 'w1'}
    accepted, elapsed = timed(lambda: producer.enqueue_access_log(entry))
    assert accepted is False
    assert elapsed <= producer.PRODUCER_TIMEOUT + 0.5


def test_a_dashboard_page_against_a_silent_redis_fails_within_the_timeout(silent_redis):
    from rqjobs import connections

    app = dashboard.create_app(connections.redis_url())
    response, elapsed = timed(lambda: app.test_client().get('/0/data/queues.json'))
    assert response.status_code == 500
    assert elapsed <= BOUND, f'the page took {elapsed:.1f} s with REDIS_TIMEOUT={TIMEOUT}'


@pytest.mark.parametrize(
    'url, expected',
    [
        ('redis://127.0.0.1:6379/0', 'redis://127.0.0.1:6379/0?socket_timeout=2.5&socket_connect_timeout=2.5'),
        (
            'unix:///run/redis.sock?db=1&socket_timeout=9',
            'unix:///run/redis.sock?db=1&socket_timeout=9&socket_connect_timeout=2.5',
        ),
    ],
)
def test_the_dashboard_url_carries_the_timeout_unless_it_sets_one(url, expected):
    assert dashboard.bounded_url(url, 2.5) == expected
