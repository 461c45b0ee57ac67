"""Helpers shared by the tests: the project root, the `jobs` command line, waits, test git repositories, pages."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from models import DocumentCatalog, DocumentFileItem, Warehouse
from rqjobs import queues
from rqjobs import warehouse as warehouses

ROOT = Path(__file__).resolve().parent.parent


def run_jobs_cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the `jobs` command line in a subprocess, as a user would."""
    return subprocess.run(
        [sys.executable, '-c', 'import cli; cli.main()', *args],
        cwd=ROOT,
        env=env or os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_worker(connection, *queue_names: str, max_jobs: int | None = None) -> bool:
    """Run a real burst worker (a work horse per job) on `queue_names`, without rq's scheduler, for `max_jobs` jobs."""
    from rqjobs.worker import build_worker

    worker = build_worker(connection, queue_names)
    return worker.work(burst=True, max_jobs=max_jobs, with_scheduler=False, logging_level='WARNING')


# ---- Waiting ----


def wait_until(
    predicate: Callable[[], Any],
    timeout: float,
    what: str,
    interval: float = 0.05,
    details: Callable[[], str] | None = None,
) -> Any:
    """Return the first true value of `predicate()`, polling until `timeout` seconds have passed; fail saying `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            extra = f'\n{details()}' if details else ''
            raise AssertionError(f'{what}: not within {timeout:g} s{extra}')
        time.sleep(interval)


# ---- Git repositories built by the tests ----

GIT_ENV = {
    'GIT_AUTHOR_NAME': 'Test Author',
    'GIT_AUTHOR_EMAIL': 'author@example.invalid',
    'GIT_COMMITTER_NAME': 'Test Author',
    'GIT_COMMITTER_EMAIL': 'author@example.invalid',
    'GIT_CONFIG_NOSYSTEM': '1',
    'GIT_CONFIG_GLOBAL': '/dev/null',
}


def git(repo: Path, *args: str) -> str:
    """Run git in a test repository and return its output."""
    result = subprocess.run(
        ['git', '-c', 'init.defaultBranch=main', *args],
        cwd=repo,
        capture_output=True,
        env={**os.environ, **GIT_ENV},
        check=True,
    )
    return result.stdout.decode('utf-8', 'replace').strip()


def commit_files(repo: Path, files: dict, message: str) -> str:
    """Write files (str or bytes; None deletes) into a repository, commit them, and return the new HEAD."""
    for name, content in files.items():
        target = repo / os.fsdecode(name)
        if content is None:
            git(repo, 'rm', '-q', '--', os.fsdecode(name))
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content if isinstance(content, bytes) else content.encode())
        # Only the named files: `add -A` would also stage the removal of a gitlink that has no directory.
        git(repo, 'add', '--', os.fsdecode(name))
    git(repo, 'commit', '-q', '-m', message)
    return git(repo, 'rev-parse', 'HEAD')


SAMPLE_FILES = {
    'README.md': '# Sample\n\nSample is a small tool that greets people.\n\n## Installation\n\npip install sample\n',
    'pyproject.toml': '[project]\nname = "sample"\n\n[project.scripts]\nsample = "sample.cli:main"\n',
    'sample/__init__.py': '"""Sample package."""\n',
    'sample/core.py': (
        '"""Greeting logic."""\n\n\nclass Greeter:\n    """Say hello."""\n\n'
        '    def greet(self, name: str = "world") -> str:\n        """Return a greeting."""\n'
        '        return f"hello {name}"\n\n\ndef shout(text: str) -> str:\n    return text.upper()\n'
    ),
    'sample/cli.py': 'import argparse\n\n\ndef main() -> int:\n    """Run the command line."""\n    return 0\n',
    'web/app.js': 'export function render(items) {\n  return items.join(",");\n}\n',
    'cmd/tool/main.go': 'package main\n\n// Run starts the tool.\nfunc Run() error {\n\treturn nil\n}\n',
}


def redis_contents(connection) -> bytes:
    """Everything stored in Redis as bytes, with rq's zlib-compressed fields expanded, to search for secrets."""
    import zlib

    chunks = []
    for key in connection.scan_iter(count=1000):
        kind = connection.type(key)
        if kind == b'string':
            values = [connection.get(key)]
        elif kind == b'hash':
            values = [item for pair in connection.hgetall(key).items() for item in pair]
        elif kind == b'list':
            values = connection.lrange(key, 0, -1)
        elif kind == b'set':
            values = list(connection.smembers(key))
        elif kind == b'zset':
            values = connection.zrange(key, 0, -1)
        elif kind == b'stream':
            values = [item for _, fields in connection.xrange(key) for pair in fields.items() for item in pair]
        else:
            values = []
        chunks.append(key)
        for value in values:
            chunks.append(value)
            try:
                chunks.append(zlib.decompress(value))
            except zlib.error:
                pass
    return b'\n'.join(chunks)


# ---- Pages written by a model ----

# The model server's key in the tests: distinctive, so that finding it anywhere it must not be is certain.
API_KEY = 'sk-test-Zq8RrY2vVx4cW9pLmN3k'


def planned(redis_conn, repo, burst_worker) -> str:
    """Submit `repo` and run its warehouse job: cloned, analysed, its pages planned and their jobs queued."""
    row = warehouses.submit_warehouse(str(repo), connection=redis_conn)
    burst_worker('warehouse')
    job = queues.JsonJob.fetch(warehouses.process_job_id(row.id), connection=redis_conn)
    # Page workers already running may have written every page by now: the job's result says what it did.
    assert job.get_status() == 'finished' and job.return_value()['status'] == 'pages queued', Warehouse.get_by_id(
        row.id
    ).error
    return row.id


def pages_of(warehouse_id: str) -> dict[str, DocumentCatalog]:
    """Return the pages of a warehouse by key."""
    return {row.url: row for row in DocumentCatalog.select().where(DocumentCatalog.warehouse == warehouse_id)}


def prompt_of(row: DocumentCatalog) -> str:
    """Return the prompt of a page's request as the server sees it (its messages joined)."""
    return '\n\n'.join(message['content'] for message in row.request['messages'])


def by_page(warehouse_id: str):
    """Return a function telling which page of the warehouse a request is for (None for other requests)."""
    prompts = {prompt_of(row): key for key, row in pages_of(warehouse_id).items()}
    return lambda request: prompts.get(request.prompt)


def requests_per_page(server, warehouse_id: str) -> Counter:
    """Count the chat requests the server received per page of the warehouse."""
    page = by_page(warehouse_id)
    return Counter(page(request) for request in server.chat_requests)


def content_of(row: DocumentCatalog) -> str | None:
    """Return the stored content of a page, or None when none is stored."""
    item = DocumentFileItem.get_or_none(DocumentFileItem.catalog == row.id)
    return item.content if item else None
