"""A real local HTTP server speaking the OpenAI chat-completions protocol, scripted per test.

In a test::

    with ChatServer() as server:                      # the default responder: a markdown page citing a path
        settings = replace(settings, llm_base_url=server.base_url, llm_model='test-model')
        ...
        assert server.max_in_flight == 2

    with ChatServer(replies=[Reply.rate_limited(retry_after=1), Reply.text('# Page')]) as server: ...
    with ChatServer(script=lambda request: Reply.error(400, 'bad') if 'x' in request.prompt else None) as server: ...

As a separate process (benches, tests across processes)::

    python tests/chat_server.py --port 0 --delay 0.3     # prints its base URL, serves until SIGTERM

There GET /_stats returns the counters as JSON, POST /_reset clears them, and POST /_replies queues replies given as a
JSON list of `Reply` fields (`[{"status": 429, "headers": {"Retry-After": "1"}}, {"content": "# Page"}]`).
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import itertools
import json
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field, fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# Marks a usage left to the server to compute (len(prompt) // 4 in, len(answer) // 4 out); None leaves it out.
AUTO = 'auto'
DEFAULT_MODEL = 'test-model'
# A backticked token that looks like a file path: it has a dot or a slash and no spaces.
_BACKTICKED_PATH = re.compile(r'`([\w.@+-]*[\w@+-][/.][\w./@+-]*)`')
_BARE_PATH = re.compile(r'(?<![\w/])((?:[\w.@+-]+/)*[\w@+-]+\.[A-Za-z0-9]{1,8})(?![\w/])')


@dataclass
class Request:
    """One request the server received: method, path, headers (lower-case names) and the parsed JSON body."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    received: float = field(default_factory=time.monotonic)

    @property
    def messages(self) -> list[dict]:
        """The chat messages of the body (empty when there are none)."""
        messages = self.body.get('messages') if isinstance(self.body, dict) else None
        return messages if isinstance(messages, list) else []

    @property
    def prompt(self) -> str:
        """Every message's content joined by blank lines."""
        return '\n\n'.join(_text(message.get('content')) for message in self.messages if isinstance(message, dict))

    @property
    def prompt_hash(self) -> str:
        """A short hash of the prompt, to tell requests apart without keeping their text."""
        return hashlib.sha256(self.prompt.encode()).hexdigest()[:16]

    @property
    def model(self) -> str | None:
        """The model the request names."""
        return self.body.get('model') if isinstance(self.body, dict) else None

    @property
    def max_tokens(self) -> int | None:
        """The request's output cap (`max_tokens` or `max_completion_tokens`)."""
        if not isinstance(self.body, dict):
            return None
        return self.body.get('max_tokens', self.body.get('max_completion_tokens'))

    @property
    def authorization(self) -> str | None:
        """The Authorization header as sent."""
        return self.headers.get('authorization')


@dataclass
class Reply:
    """What the server answers to one request; build it with the class methods."""

    content: str | None = None  # None with status 200: the default responder's page
    status: int = 200
    finish_reason: str | None = 'stop'
    usage: dict | str | None = AUTO  # AUTO, None (no usage in the answer) or the exact dict to send
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds to wait before answering
    error_message: str | None = None
    error_type: str | None = None
    error_code: str | int | None = None
    model: str | None = None  # the model the answer names (default: the request's)
    body: Any = None  # a raw JSON body sent as is, for malformed answers

    @classmethod
    def text(cls, content: str, *, finish_reason: str | None = 'stop', usage: dict | str | None = AUTO, **kw) -> Reply:
        """Answer with `content`."""
        return cls(content=content, finish_reason=finish_reason, usage=usage, **kw)

    @classmethod
    def default(cls, *, delay: float = 0.0, **kw) -> Reply:
        """Answer with the default responder's page."""
        return cls(delay=delay, **kw)

    @classmethod
    def empty(cls, **kw) -> Reply:
        """Answer with empty content."""
        return cls(content='', **kw)

    @classmethod
    def length(cls, content: str = '# Overview\n\nThe page stops in the middle of', **kw) -> Reply:
        """Answer with content cut off by the output cap (finish_reason 'length')."""
        return cls(content=content, finish_reason='length', **kw)

    @classmethod
    def error(
        cls,
        status: int,
        message: str = 'The server had an error while processing your request.',
        *,
        type: str | None = None,  # the protocol's field name
        code: str | int | None = None,
        headers: dict[str, str] | None = None,
        delay: float = 0.0,
    ) -> Reply:
        """Answer with HTTP `status` and an OpenAI-style error body."""
        default_type = 'invalid_request_error' if status < 500 else 'server_error'
        return cls(
            status=status,
            error_message=message,
            error_type=type or default_type,
            error_code=code,
            headers=dict(headers or {}),
            delay=delay,
        )

    @classmethod
    def rate_limited(cls, retry_after: float | str | None = 1, *, retry_after_ms: float | None = None, **kw) -> Reply:
        """Answer 429 with `Retry-After` (seconds or an HTTP date; None leaves it out) and/or `retry-after-ms`."""
        headers = {}
        if retry_after is not None:
            headers['Retry-After'] = str(retry_after)
        if retry_after_ms is not None:
            headers['retry-after-ms'] = str(retry_after_ms)
        return cls.error(
            429,
            'Rate limit reached for requests. Please try again later.',
            type='requests',
            code='rate_limit_exceeded',
            headers=headers,
            **kw,
        )

    @classmethod
    def from_dict(cls, data: dict) -> Reply:
        """Build a reply from a JSON object of its field names (POST /_replies)."""
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f'unknown reply fields: {", ".join(sorted(unknown))}')
        return cls(**data)


def default_page(request: Request) -> str:
    """Return a plausible markdown page that cites the first path of the prompt and echoes nothing else of it.

    The path is looked for in the last message first (the user's, where the files are), then in the others.
    """
    contents = [_text(message.get('content')) for message in request.messages if isinstance(message, dict)]
    path = next(filter(None, (cited_path(text) for text in reversed(contents))), None) or 'README.md'
    return (
        '# Overview\n\n'
        f'This part of the repository is built around `{path}`, which holds its entry point and the '
        'configuration the rest of the code reads.\n\n'
        '## How it works\n\n'
        f'The module in `{path}` reads its settings once, validates them, and hands them to the functions that do '
        'the work. Errors are reported with a message that says what to change.\n\n'
        '## Where to look next\n\n'
        f'- `{path}`: the starting point described above.\n'
        '- The tests beside it show each behaviour in use.\n'
    )


def cited_path(prompt: str) -> str | None:
    """Return the first path of `prompt`: a backticked one first, else a bare `dir/name.ext`-looking word."""
    match = _BACKTICKED_PATH.search(prompt) or _BARE_PATH.search(prompt)
    return match.group(1) if match else None


def completion_body(request: Request, reply: Reply, content: str, counter: int) -> dict:
    """Return the JSON body of a chat completion answering `request` with `content`."""
    body = {
        'id': f'chatcmpl-test{counter:06d}',
        'object': 'chat.completion',
        'created': int(time.time()),
        'model': reply.model or request.model or DEFAULT_MODEL,
        'choices': [
            {
                'index': 0,
                'message': {'role': 'assistant', 'content': content},
                'finish_reason': reply.finish_reason,
            }
        ],
    }
    if reply.usage == AUTO:
        prompt_tokens, completion_tokens = len(request.prompt) // 4, len(content) // 4
        body['usage'] = {
            'prompt_tokens': prompt_tokens,
            'completion_tokens': completion_tokens,
            'total_tokens': prompt_tokens + completion_tokens,
        }
    elif reply.usage is not None:
        body['usage'] = reply.usage
    return body


class ChatServer:
    """An OpenAI-compatible chat-completions server on 127.0.0.1, in a thread; a context manager.

    `script(request)` chooses each reply (returning None falls through); else the next of the queued `replies`;
    else the default page after `delay` seconds. Every request is recorded in `requests`.
    """

    def __init__(
        self,
        script: Callable[[Request], Reply | None] | None = None,
        replies: Iterable[Reply] = (),
        *,
        delay: float = 0.0,
        model: str | None = None,
        host: str = '127.0.0.1',
        port: int = 0,
        stats_endpoints: bool = False,
    ):
        self.script = script
        self.delay = delay
        self.model = model
        self.host = host
        self.port = port
        self.stats_endpoints = stats_endpoints
        self.requests: list[Request] = []
        self.max_in_flight = 0
        self.in_flight = 0
        self._replies: collections.deque[Reply] = collections.deque(replies)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._counter = itertools.count(1)
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- Life cycle ----

    def start(self) -> ChatServer:
        """Bind and serve in a background thread; return self."""
        handler = type('Handler', (_Handler,), {'chat': self})
        self._httpd = ThreadingHTTPServer((self.host, self.port), handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._stopping.clear()
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.1,), name='chat-server', daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, wake delayed replies, and close the socket."""
        if self._httpd is None:
            return
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)
        self._httpd = None

    def __enter__(self) -> ChatServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """The URL to give a client: `http://127.0.0.1:PORT/v1`."""
        return f'http://{self.host}:{self.port}/v1'

    # ---- Scripting and counters ----

    def push(self, *replies: Reply) -> None:
        """Queue replies, answered in order before the default responder."""
        with self._lock:
            self._replies.extend(replies)

    def reset(self) -> None:
        """Forget the recorded requests, the counters and the queued replies."""
        with self._lock:
            self.requests.clear()
            self._replies.clear()
            self.max_in_flight = self.in_flight

    @property
    def chat_requests(self) -> list[Request]:
        """The recorded chat-completion requests (not GET /models and the like)."""
        with self._lock:
            return [r for r in self.requests if r.path.rstrip('/').endswith('/chat/completions')]

    def count(self, key: Callable[[Request], Hashable] = lambda r: r.prompt_hash) -> collections.Counter:
        """Count the chat requests per `key(request)` (default: per prompt hash)."""
        return collections.Counter(key(r) for r in self.chat_requests)

    def stats(self) -> dict:
        """Return the counters as JSON-able data (what GET /_stats serves)."""
        requests = self.chat_requests
        with self._lock:
            return {
                'requests': len(requests),
                'max_in_flight': self.max_in_flight,
                'in_flight': self.in_flight,
                'prompt_hashes': [r.prompt_hash for r in requests],
                'models': [r.model for r in requests],
                'queued_replies': len(self._replies),
            }

    def _choose(self, request: Request) -> Reply:
        if self.script is not None:
            reply = self.script(request)
            if reply is not None:
                return reply
        with self._lock:
            if self._replies:
                return self._replies.popleft()
        return Reply.default(delay=self.delay)

    def _enter(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1


class _Handler(BaseHTTPRequestHandler):
    chat: ChatServer
    protocol_version = 'HTTP/1.1'

    def log_message(self, format, *args):  # quiet: tests read `requests`, not stderr
        pass

    def do_GET(self):
        path = self.path.split('?', 1)[0].rstrip('/')
        if path.endswith('/models'):
            model = self.chat.model or DEFAULT_MODEL
            self._json(200, {'object': 'list', 'data': [{'id': model, 'object': 'model', 'owned_by': 'test'}]})
        elif path == '/_stats' and self.chat.stats_endpoints:
            self._json(200, self.chat.stats())
        else:
            self._json(404, _error_body('Not found', 'invalid_request_error', None))

    def do_POST(self):
        path = self.path.split('?', 1)[0].rstrip('/')
        raw = self.rfile.read(int(self.headers.get('Content-Length') or 0))
        if path == '/_reset' and self.chat.stats_endpoints:
            self.chat.reset()
            self._json(200, {'reset': True})
            return
        if path == '/_replies' and self.chat.stats_endpoints:
            try:
                self.chat.push(*(Reply.from_dict(item) for item in json.loads(raw or b'[]')))
            except (ValueError, TypeError) as exc:
                self._json(400, _error_body(str(exc), 'invalid_request_error', None))
                return
            self._json(200, {'queued': self.chat.stats()['queued_replies']})
            return
        if not path.endswith('/chat/completions'):
            self._json(404, _error_body(f'Unknown path {path}', 'invalid_request_error', None))
            return
        try:
            body = json.loads(raw or b'null')
        except ValueError:
            body = None
        request = Request('POST', path, {k.lower(): v for k, v in self.headers.items()}, body)
        self.chat._enter(request)
        try:
            self._answer(request)
        finally:
            self.chat._leave()

    def _answer(self, request: Request) -> None:
        if not isinstance(request.body, dict) or not request.messages:
            self._json(400, _error_body("'messages' is a required property", 'invalid_request_error', None))
            return
        reply = self.chat._choose(request)
        if reply.delay and self.chat._stopping.wait(reply.delay):
            return
        if reply.body is not None:
            self._json(reply.status, reply.body, reply.headers)
        elif reply.status >= 400:
            self._json(
                reply.status, _error_body(reply.error_message, reply.error_type, reply.error_code), reply.headers
            )
        else:
            content = default_page(request) if reply.content is None else reply.content
            if reply.model is None and self.chat.model:
                reply = Reply(**{**reply.__dict__, 'model': self.chat.model})
            self._json(reply.status, completion_body(request, reply, content, next(self.chat._counter)), reply.headers)

    def _json(self, status: int, body: Any, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header('Content-Type', 'application/json')
            self.send_header('Content-Length', str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (its timeout); nothing to answer


def _error_body(message: str | None, type_: str | None, code: str | int | None) -> dict:
    return {'error': {'message': message, 'type': type_, 'param': None, 'code': code}}


def _text(content: Any) -> str:
    # Content is a string, or a list of parts ({"type": "text", "text": ...}) in the newer form.
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return '\n'.join(part.get('text', '') for part in content if isinstance(part, dict))
    return ''


def main(argv: list[str] | None = None) -> None:
    """Serve until SIGTERM or SIGINT, printing the base URL first."""
    parser = argparse.ArgumentParser(description='A local OpenAI-compatible chat-completions server for tests.')
    parser.add_argument('--port', type=int, default=0, help='Port to listen on (0: any free port).')
    parser.add_argument('--delay', type=float, default=0.0, help='Seconds to wait before each default answer.')
    parser.add_argument('--model', default=None, help='Model name the answers give (default: the requested one).')
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server = ChatServer(delay=args.delay, model=args.model, port=args.port, stats_endpoints=True).start()
    print(server.base_url, flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()


if __name__ == '__main__':
    sys.exit(main())
