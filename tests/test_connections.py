"""The Redis client: a server that accepts connections and never answers costs REDIS_TIMEOUT, not a multiple of it."""

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner
from rq.cli.helpers import get_redis_from_config

import cli
from helpers import wait_until
from rqjobs import connections, dashboard, embedded, queues, settings, warehouse
from rqjobs.contrib import access_log as producer
from rqjobs.exceptions import NotReplicated, RedisUnavailable

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


# ---- Sentinel and WAIT ----


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        return probe.getsockname()[1]


@pytest.fixture
def sentinel(env, tmp_path):
    """A master on a loopback port watched by one Sentinel; REDIS_URL names it through the Sentinel. Both killed."""
    master_port, sentinel_port = free_port(), free_port()
    binary = embedded.server_binary()
    options = ['--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', str(tmp_path)]
    config = tmp_path / 'sentinel.conf'
    config.write_text(f'port {sentinel_port}\nbind 127.0.0.1\nsentinel monitor jobs 127.0.0.1 {master_port} 1\n')
    started = [
        subprocess.Popen([binary, '--port', str(master_port), *options], stdout=subprocess.DEVNULL),
        subprocess.Popen([binary, str(config), '--sentinel'], stdout=subprocess.DEVNULL),
    ]
    try:
        for port in (master_port, sentinel_port):
            client = redis.Redis(port=port)
            wait_until(lambda c=client: ping_quietly(c), 10, f'the server on {port} answers')
            client.close()
        env.setenv('REDIS_URL', f'redis+sentinel://127.0.0.1:{sentinel_port}/jobs/1')
        settings.reset()
        yield sentinel_port
    finally:
        for process in started:
            process.kill()
            process.wait(10)


def ping_quietly(client: redis.Redis) -> bool:
    try:
        return client.ping()
    except redis.RedisError:
        return False


@pytest.mark.slow
def test_every_client_reaches_the_master_through_a_sentinel(sentinel, env, database):
    connection = connections.get_redis()
    connection.set('probe', 'master')
    assert connection.connection_pool.connection_kwargs['db'] == 1
    assert connection.connection_pool.connection_kwargs['socket_timeout'] == settings.get_settings().redis_timeout
    queues.enqueue('ping', connection=connection)
    assert queues.get_queue('default', connection).count == 1
    assert producer.enqueue_access_log({'resource_type': 'Page', 'resource_id': '/about'})
    assert connection.llen(producer.BUFFER_KEY) == 1
    # rq's command line with the config module, and rq-dashboard's client.
    rq_client = get_redis_from_config(connections.rq_settings())
    assert rq_client.get('probe') == b'master'
    assert dashboard.connect(connections.redis_url())[1].get('probe') == b'master'
    response = dashboard.create_app(connections.redis_url()).test_client().get('/0/data/queues.json')
    assert response.status_code == 200
    assert {'name': 'default', 'count': 1} in [
        {key: queue[key] for key in ('name', 'count')} for queue in response.get_json()['queues']
    ]
    result = CliRunner().invoke(cli.main, ['status'])
    assert result.exit_code == 0, result.output
    assert f'redis+sentinel://127.0.0.1:{sentinel}/jobs/1' in result.output
    # rq's own command line, as docs/operations.md shows it.
    rq = subprocess.run(
        [str(Path(sys.executable).parent / 'rq'), 'info', '-c', 'rqjobs.rqconfig', 'default'],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ.copy(),
    )
    assert rq.returncode == 0, rq.stderr
    assert 'default' in rq.stdout and '1 queue' in rq.stdout, rq.stdout


@pytest.mark.slow
def test_an_unknown_master_name_is_one_line(sentinel, env):
    env.setenv('REDIS_URL', f'redis+sentinel://:t0p@127.0.0.1:{sentinel}/nope/0')
    settings.reset()
    result = CliRunner().invoke(cli.main, ['status'])
    assert result.exit_code == 1
    assert f"The Sentinels at 127.0.0.1:{sentinel} know no usable master named 'nope'" in result.output
    assert 't0p' not in result.output and 'Traceback' not in result.output


def test_no_sentinel_answering_is_one_line(env):
    port = free_port()  # closed again: nothing listens there
    env.setenv('REDIS_URL', f'redis+sentinel://jobs:t0p@127.0.0.1:{port},127.0.0.1:{port}/jobs/0?sentinel_password=s3c')
    settings.reset()
    result, elapsed = timed(lambda: CliRunner().invoke(cli.main, ['status']))
    assert result.exit_code == 1
    assert f'No Sentinel answers at 127.0.0.1:{port}, 127.0.0.1:{port}' in result.output
    assert 't0p' not in result.output and 's3c' not in result.output and 'Traceback' not in result.output
    assert elapsed < 10


def test_rq_config_for_a_plain_url_is_the_url(env, redis_server):
    assert connections.rq_settings() == {'REDIS_URL': redis_server.url}


def test_rq_config_for_a_sentinel_url_carries_credentials_and_tls(env):
    env.setenv('REDIS_URL', 'rediss+sentinel://jobs:t0p@h1:26380,h2/main/3?sentinel_password=s3c&ssl_cert_reqs=none')
    settings.reset()
    config = connections.rq_settings()['SENTINEL']
    assert config['INSTANCES'] == [('h1', 26380), ('h2', 26379)]
    assert (config['MASTER_NAME'], config['DB'], config['USERNAME'], config['PASSWORD']) == ('main', 3, 'jobs', 't0p')
    assert config['SSL'] is True and config['CONNECTION_KWARGS']['ssl_cert_reqs'] == 'none'
    assert config['SENTINEL_KWARGS']['password'] == 's3c' and config['SENTINEL_KWARGS']['ssl'] is True


def test_with_wait_on_a_write_no_replica_confirms_is_not_acknowledged(env, redis_conn):
    env.setenv('REDIS_WAIT_REPLICAS', '1')
    env.setenv('REDIS_WAIT_TIMEOUT', '50')
    settings.reset()
    with pytest.raises(NotReplicated, match='Not confirmed by the 1 replicas that REDIS_WAIT_REPLICAS asks for'):
        queues.enqueue('ping', connection=redis_conn)
    # Written to the master all the same: it may or may not survive a failover.
    assert queues.get_queue('default', redis_conn).count == 1
    result = CliRunner().invoke(cli.main, ['enqueue', 'ping'])
    assert result.exit_code == 1 and 'Not confirmed by the 1 replicas' in result.output, result.output
    assert 'Traceback' not in result.output
    before = producer.local_drop_count('unreplicated')
    assert producer.enqueue_access_log({'resource_type': 'Page', 'resource_id': '/about'}) is False
    assert producer.enqueue_access_logs([{'resource_type': 'Page', 'resource_id': '/a'}] * 3) == 0
    assert producer.local_drop_count('unreplicated') - before == 4
    # Off, the same writes are acknowledged at once.
    env.setenv('REDIS_WAIT_REPLICAS', '0')
    settings.reset()
    queues.enqueue('ping', connection=redis_conn)
    assert producer.enqueue_access_log({'resource_type': 'Page', 'resource_id': '/about'}) is True
