"""The model server's client (rqjobs.pages.model) against a real local chat-completions server and the real Redis."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from email.utils import format_datetime

import pytest
from chat_server import ChatServer, Reply

from helpers import ROOT, run_jobs_cli
from rqjobs import clock
from rqjobs.exceptions import ModelNotConfigured, ModelRejected, ModelUnavailable
from rqjobs.pages import model
from rqjobs.settings import Settings

# Looks like no known token format, so only the literal match on LLM_API_KEY can hide it.
API_KEY = 'zebra-5150-distinctive-key'
PROMPT = [
    {'role': 'system', 'content': 'You write one page of documentation in English.'},
    {'role': 'user', 'content': 'Describe `src/app/main.py`, which starts the service.'},
]


def llm_settings(server_or_url, **values) -> Settings:
    """Settings read from an environment naming the model server, as a worker reads them."""
    base_url = server_or_url if isinstance(server_or_url, str) else server_or_url.base_url
    environ = {**os.environ, 'LLM_BASE_URL': base_url, 'LLM_MODEL': 'test-model'}
    environ.update({name: str(value) for name, value in values.items()})
    return Settings.from_env(environ)


@pytest.fixture
def closed_port():
    """A loopback port bound by no listener: connecting to it is refused."""
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        yield sock.getsockname()[1]


def test_an_answer_carries_the_content_and_the_usage_the_server_counted(redis_conn):
    with ChatServer() as server:
        answer = model.chat(PROMPT, settings=llm_settings(server), connection=redis_conn)
        (request,) = server.requests
    assert '`src/app/main.py`' in answer.content and answer.finish_reason == 'stop'
    assert answer.prompt_tokens == len(request.prompt) // 4 > 0
    assert answer.completion_tokens == len(answer.content) // 4
    assert (answer.model, answer.waited) == ('test-model', 0.0) and 0 < answer.latency < 5
    assert request.body['model'] == 'test-model' and request.body['messages'] == PROMPT
    assert request.max_tokens == 2048  # LLM_MAX_OUTPUT_TOKENS
    # The official client insists on a key; a local server is sent a placeholder.
    assert request.authorization == 'Bearer unused'


def test_an_answer_without_usage_cut_off_or_empty_is_returned_as_it_came(redis_conn):
    replies = [Reply.text('# Page', usage=None), Reply.length(), Reply.empty()]
    with ChatServer(replies=replies) as server:
        settings = llm_settings(server)
        bare, cut, empty = (model.chat(PROMPT, settings=settings, max_tokens=100, connection=redis_conn) for _ in '123')
        assert [request.max_tokens for request in server.requests] == [100, 100, 100]
    assert (bare.content, bare.prompt_tokens, bare.completion_tokens) == ('# Page', None, None)
    assert cut.finish_reason == 'length'
    assert (empty.content, empty.finish_reason) == ('', 'stop')


def test_a_429_is_waited_out_as_retry_after_says_without_failing(redis_conn, caplog):
    with ChatServer(replies=[Reply.rate_limited(retry_after=1)]) as server:
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger='rqjobs.pages.model'):
            answer = model.chat(PROMPT, settings=llm_settings(server), connection=redis_conn)
        elapsed = time.monotonic() - started
        assert len(server.requests) == 2
    assert 1.0 <= answer.waited < 1.2 and 1.0 <= elapsed < 2.5
    assert '`src/app/main.py`' in answer.content
    assert [record.levelno for record in caplog.records] == [logging.WARNING]
    assert 'HTTP 429' in caplog.records[0].getMessage()


def test_429_waits_past_llm_retry_after_max_make_the_server_unavailable(redis_conn):
    # 0.4 s each (retry-after-ms): two waits fit in LLM_RETRY_AFTER_MAX=1, the third would pass it.
    with ChatServer(script=lambda request: Reply.rate_limited(retry_after=None, retry_after_ms=400)) as server:
        started = time.monotonic()
        with pytest.raises(ModelUnavailable) as raised:
            model.chat(PROMPT, settings=llm_settings(server, LLM_RETRY_AFTER_MAX=1), connection=redis_conn)
        elapsed = time.monotonic() - started
        assert len(server.requests) == 3
    assert 0.8 <= elapsed < 1.5
    assert raised.value.status == 429 and 'LLM_RETRY_AFTER_MAX=1' in str(raised.value)
    assert server.base_url in str(raised.value)


def test_a_429_wait_past_the_deadline_fails_at_once(redis_conn):
    with ChatServer(script=lambda request: Reply.rate_limited(retry_after=1)) as server:
        started = time.monotonic()
        with pytest.raises(ModelUnavailable, match='past the deadline'):
            model.chat(PROMPT, settings=llm_settings(server), deadline=started + 0.5, connection=redis_conn)
        assert time.monotonic() - started < 0.5 and len(server.requests) == 1


def test_retry_after_reads_milliseconds_seconds_and_http_dates():
    in_ten_seconds = format_datetime(clock.utcnow().replace(microsecond=0) + timedelta(seconds=10), usegmt=False)
    assert model.retry_after({'retry-after-ms': '1500', 'retry-after': '9'}) == 1.5
    assert model.retry_after({'retry-after': '2'}) == 2.0
    assert 8 <= model.retry_after({'retry-after': in_ten_seconds}) <= 10
    assert model.retry_after({'retry-after': 'Wed, 21 Oct 2015 07:28:00 GMT'}) == 0.0
    assert model.retry_after({}) == model.retry_after({'retry-after': 'soon'}) == 5.0


def test_a_server_error_makes_the_server_unavailable_after_one_request(redis_conn):
    with ChatServer(replies=[Reply.error(500, 'The engine is overloaded.')]) as server:
        with pytest.raises(ModelUnavailable) as raised:
            model.chat(PROMPT, settings=llm_settings(server), connection=redis_conn)
        assert len(server.requests) == 1  # the job's retry policy retries, not the client
    assert raised.value.status == 500
    assert str(raised.value).startswith('The model server failed (HTTP 500): The engine is overloaded.')


def test_an_answer_slower_than_llm_timeout_makes_the_server_unavailable(redis_conn):
    with ChatServer(delay=3) as server:
        started = time.monotonic()
        with pytest.raises(ModelUnavailable, match=r'did not answer within 1 s \(LLM_TIMEOUT=1\)'):
            model.chat(PROMPT, settings=llm_settings(server, LLM_TIMEOUT=1), connection=redis_conn)
        assert time.monotonic() - started < 1.5


def test_a_refused_request_carries_the_providers_message(redis_conn):
    refusal = Reply.error(400, "This model's maximum context length is 8192 tokens.", code='context_length_exceeded')
    with ChatServer(replies=[refusal]) as server:
        with pytest.raises(ModelRejected) as raised:
            model.chat(PROMPT, settings=llm_settings(server), connection=redis_conn)
        assert len(server.requests) == 1
    message = str(raised.value)
    assert message.startswith(
        "The model server refused the request (HTTP 400): This model's maximum context length is 8192 tokens."
    )
    assert '\n' not in message and server.base_url in message and raised.value.status == 400


def test_a_server_that_wants_max_completion_tokens_gets_it(redis_conn):
    unsupported = Reply.error(
        400, "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens'."
    )
    with ChatServer(replies=[unsupported]) as server:
        answer = model.chat(PROMPT, settings=llm_settings(server), max_tokens=300, connection=redis_conn)
        first, second = server.requests
    assert answer.content and first.body['max_tokens'] == 300
    assert 'max_tokens' not in second.body and second.body['max_completion_tokens'] == 300


@pytest.mark.parametrize('status', [401, 500])
def test_the_api_key_reaches_the_server_but_no_error_or_log(redis_conn, caplog, status):
    def echo_the_key(request):
        return Reply.error(status, f'Incorrect API key {API_KEY} in {request.authorization}; see sk-proj-abcdef123')

    with ChatServer(script=echo_the_key) as server:
        with caplog.at_level(logging.DEBUG), pytest.raises((ModelRejected, ModelUnavailable)) as raised:
            model.chat(PROMPT, settings=llm_settings(server, LLM_API_KEY=API_KEY), connection=redis_conn)
        assert server.requests[0].authorization == f'Bearer {API_KEY}'
    shown = f'{raised.value} {raised.value!r} {caplog.text}'
    assert API_KEY not in shown and 'abcdef123' not in shown
    assert type(raised.value) is (ModelRejected if status == 401 else ModelUnavailable)
    assert str(raised.value).startswith(f'The model server {"refused the request" if status == 401 else "failed"}')


def test_a_closed_port_makes_the_server_unavailable(redis_conn, closed_port):
    settings = llm_settings(f'http://127.0.0.1:{closed_port}/v1')
    with pytest.raises(ModelUnavailable, match=f'Cannot reach the model server at http://127.0.0.1:{closed_port}/v1'):
        model.chat(PROMPT, settings=settings, connection=redis_conn)


def test_no_more_requests_are_in_flight_than_llm_concurrency(redis_conn):
    answers, errors = [], []

    def ask():
        try:
            answers.append(model.chat(PROMPT, settings=settings, connection=redis_conn))
        except Exception as exc:  # reported below
            errors.append(exc)

    with ChatServer(delay=0.3) as server:
        settings = llm_settings(server, LLM_CONCURRENCY=2)
        threads = [threading.Thread(target=ask) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert (errors, len(answers), len(server.requests)) == ([], 6, 6)
        assert server.max_in_flight == 2
    # Every slot was given back.
    assert redis_conn.zcard(model.SLOTS_KEY.format(endpoint=model.endpoint_key(settings))) == 0


def test_a_dead_holders_slot_frees_itself_when_its_lease_expires(redis_conn):
    with ChatServer() as server:
        settings = llm_settings(server, LLM_CONCURRENCY=1)
        key = model.SLOTS_KEY.format(endpoint=model.endpoint_key(settings))
        seconds, micros = redis_conn.time()
        redis_conn.zadd(key, {'killed-worker': seconds + micros / 1e6 + 0.5})
        started = time.monotonic()
        model.chat(PROMPT, settings=settings, connection=redis_conn)
    assert 0.4 <= time.monotonic() - started < 2


def test_a_slot_that_stays_busy_past_the_deadline_makes_the_server_unavailable(redis_conn):
    with ChatServer() as server:
        settings = llm_settings(server, LLM_CONCURRENCY=1)
        key = model.SLOTS_KEY.format(endpoint=model.endpoint_key(settings))
        redis_conn.zadd(key, {'busy-worker': time.time() + 60})
        with pytest.raises(ModelUnavailable, match='request slots .* stayed busy'):
            model.chat(PROMPT, settings=settings, deadline=time.monotonic() + 0.5, connection=redis_conn)
        assert server.requests == []


def test_the_endpoint_key_names_the_server_not_the_model():
    one = llm_settings('http://127.0.0.1:11434/v1')
    assert model.endpoint_key(one) == model.endpoint_key(llm_settings('http://127.0.0.1:11434/v1/', LLM_MODEL='x'))
    assert model.endpoint_key(one) == model.endpoint_key(llm_settings('http://user:pw@127.0.0.1:11434/v1'))
    assert model.endpoint_key(one) != model.endpoint_key(llm_settings('http://127.0.0.1:11435/v1'))
    assert len(model.endpoint_key(one)) == 12 and model.endpoint_key(one).isalnum()


def test_redact_hides_the_key_and_tokens_on_one_short_line():
    settings = llm_settings('http://127.0.0.1:1/v1', LLM_API_KEY=API_KEY)
    text = model.redact(f'key {API_KEY}\nheader Authorization: Bearer abc.def sk-live-12345 ' + 'x' * 400, settings)
    assert API_KEY not in text and 'abc.def' not in text and '12345' not in text
    assert '\n' not in text and len(text) <= 300


def test_the_prompt_size_correction_learns_from_usage_and_leans_large(redis_conn):
    settings = llm_settings('http://127.0.0.1:1/v1')
    other_model = llm_settings('http://127.0.0.1:1/v1', LLM_MODEL='other')
    assert model.correction(redis_conn, settings) == 1.0
    model.record_usage(redis_conn, settings, 1000, 1500)
    assert model.correction(redis_conn, settings) == pytest.approx(1.5)
    for _ in range(3):
        model.record_usage(redis_conn, settings, 1000, 900)
    # The moving average moved down, but a recent larger ratio still counts.
    assert model.correction(redis_conn, settings) == pytest.approx(1.5)
    for _ in range(5):
        model.record_usage(redis_conn, settings, 1000, 900)
    assert 0.9 <= model.correction(redis_conn, settings) < 1.0
    model.record_usage(redis_conn, settings, 100, 100_000)
    assert model.correction(redis_conn, settings) == 4.0
    model.record_usage(redis_conn, other_model, 1000, 0)  # no usage teaches nothing
    assert model.correction(redis_conn, other_model) == 1.0


def test_no_model_configured_says_which_settings_to_set(redis_conn):
    with pytest.raises(ModelNotConfigured, match='set LLM_BASE_URL and LLM_MODEL, for example LLM_BASE_URL=https'):
        model.chat(PROMPT, settings=Settings.from_env({}), connection=redis_conn)


def test_importing_the_module_leaves_the_openai_client_unloaded():
    code = 'import sys, rqjobs.pages.model, cli; assert "openai" not in sys.modules, "openai imported"'
    subprocess.run([sys.executable, '-c', code], cwd=ROOT, check=True, timeout=60)


@pytest.mark.parametrize(('queues', 'loaded'), [('pages', 'True True'), ('default', 'False False')])
def test_a_worker_on_pages_loads_the_client_before_forking_its_work_horses(env, queues, loaded):
    # What the worker has loaded, its work horses (forks) need not load for every page.
    env.setenv('LLM_BASE_URL', 'http://127.0.0.1:9/v1')
    env.setenv('LLM_MODEL', 'test-model')
    code = (
        'import sys; from rqjobs.connections import get_redis; from rqjobs.worker import build_worker; '
        f'build_worker(get_redis(), ["{queues}"]); from rqjobs.pages import model; '
        'print("openai.resources.chat" in sys.modules, model._tls is not None)'
    )
    result = subprocess.run(
        [sys.executable, '-c', code], cwd=ROOT, env=os.environ.copy(), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == loaded


def test_clients_share_one_tls_context(redis_conn):
    settings = llm_settings('http://127.0.0.1:9/v1')
    first, second = model.client(settings), model.client(settings)
    assert first._client._transport._pool._ssl_context is second._client._transport._pool._ssl_context


def test_check_returns_the_model_latency_and_tokens(redis_conn):
    with ChatServer(model='served-model') as server:
        result = model.check(llm_settings(server), redis_conn)
        assert server.requests[0].prompt == model.CHECK_PROMPT
    assert result['model'] == 'served-model' and result['base_url'] == server.base_url
    assert result['prompt_tokens'] == len(model.CHECK_PROMPT) // 4 and result['completion_tokens'] > 0
    assert 0 < result['latency'] < 5


@pytest.mark.slow
def test_llm_check_on_the_command_line(redis_conn):
    with ChatServer(model='served-model') as server:
        env = {**os.environ, 'LLM_BASE_URL': server.base_url, 'LLM_MODEL': 'test-model', 'LLM_API_KEY': API_KEY}
        result = run_jobs_cli('llm', 'check', env=env)
        as_json = run_jobs_cli('llm', 'check', '--json', env=env)
    assert result.returncode == 0, result.stderr
    assert 'Model: served-model' in result.stdout and f'Tokens: {len(model.CHECK_PROMPT) // 4} in, ' in result.stdout
    assert as_json.returncode == 0 and '"model": "served-model"' in as_json.stdout
    assert API_KEY not in result.stdout + result.stderr


@pytest.mark.slow
def test_llm_check_against_a_closed_port_fails_in_one_line(redis_conn, closed_port):
    env = {**os.environ, 'LLM_BASE_URL': f'http://127.0.0.1:{closed_port}/v1', 'LLM_MODEL': 'test-model'}
    result = run_jobs_cli('llm', 'check', env=env)
    errors = [line for line in result.stderr.splitlines() if not line.startswith('Redis: ')]
    assert result.returncode == 1, result.stderr
    assert len(errors) == 1 and errors[0].startswith('Error: Cannot reach the model server at http://127.0.0.1:')


@pytest.mark.slow
def test_the_chat_server_runs_as_a_process_with_its_counters_over_http(redis_conn):
    server = subprocess.Popen(
        [sys.executable, str(ROOT / 'tests' / 'chat_server.py'), '--port', '0', '--delay', '0.3'],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        base_url = server.stdout.readline().strip()
        assert re.fullmatch(r'http://127\.0\.0\.1:\d+/v1', base_url), base_url
        settings = llm_settings(base_url, LLM_CONCURRENCY=2)
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: model.chat(PROMPT, settings=settings, connection=redis_conn), range(4)))
        stats = json.loads(urllib.request.urlopen(f'{base_url[:-3]}/_stats', timeout=5).read())
        assert all('`src/app/main.py`' in answer.content for answer in answers)
        assert (stats['requests'], stats['max_in_flight']) == (4, 2) and len(set(stats['prompt_hashes'])) == 1
        urllib.request.urlopen(urllib.request.Request(f'{base_url[:-3]}/_reset', method='POST'), timeout=5)
        stats = json.loads(urllib.request.urlopen(f'{base_url[:-3]}/_stats', timeout=5).read())
        assert (stats['requests'], stats['max_in_flight'], stats['prompt_hashes']) == (0, 0, [])
        server.terminate()
        assert server.wait(5) == 0
    finally:
        server.kill()
        server.wait()
        server.stdout.close()
