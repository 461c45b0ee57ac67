"""`rqjobs demo`: a real local repository in several languages, documented end to end by a real worker."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import redis
from rq import Worker
from rq.exceptions import NoSuchJobError
from rq.job import JobStatus

from models import Warehouse
from rqjobs import migration, minimap, monitor, queues
from rqjobs import settings as settings_module
from rqjobs import warehouse as warehouses
from rqjobs import worker as workers
from rqjobs.exceptions import InvalidSubmission
from rqjobs.pages import jobs as page_jobs
from rqjobs.settings import Settings, get_settings

logger = logging.getLogger(__name__)

# What an interrupted demo can leave behind: its job waiting, or started by a worker that has gone.
LEFTOVER_STATUSES = (JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED, JobStatus.STARTED)
# Seconds between burst workers on queue `pages` while page jobs wait for a retry or their turn.
PAGES_POLL_INTERVAL = 0.5

FILES = {
    'README.md': """\
        # Inkwell

        Inkwell turns plain-text notes into a searchable static site. It ships a command line, a small web server
        and a Go indexer.

        ## Installation

        ```sh
        pip install inkwell
        ```

        ## Usage

        ```sh
        inkwell build notes/ --out site/
        inkwell serve site/
        ```

        ## License

        MIT
        """,
    'pyproject.toml': """\
        [project]
        name = "inkwell"
        version = "0.3.0"

        [project.scripts]
        inkwell = "inkwell.cli:main"
        """,
    'inkwell/__init__.py': '"""Inkwell: notes to static sites."""\n',
    'inkwell/cli.py': '''\
        """Command line of Inkwell."""

        import argparse

        from inkwell.site import Site


        def main(argv: list[str] | None = None) -> int:
            """Parse arguments and build or serve a site."""
            parser = argparse.ArgumentParser(prog="inkwell")
            parser.add_argument("command", choices=["build", "serve"])
            parser.add_argument("path")
            args = parser.parse_args(argv)
            site = Site(args.path)
            return site.build() if args.command == "build" else site.serve()
        ''',
    'inkwell/site.py': '''\
        """Building a site from a folder of notes."""

        from dataclasses import dataclass
        from pathlib import Path


        @dataclass
        class Note:
            """One note: its title and markdown body."""

            title: str
            body: str

            def slug(self) -> str:
                """Return the URL slug of the note."""
                return self.title.lower().replace(" ", "-")


        class Site:
            """A static site rendered from notes."""

            def __init__(self, root: str, *, theme: str = "plain") -> None:
                self.root = Path(root)
                self.theme = theme

            def notes(self) -> list[Note]:
                """Load every note below the root."""
                return [Note(p.stem, p.read_text()) for p in sorted(self.root.glob("**/*.md"))]

            def build(self, out: str = "site") -> int:
                """Render every note to HTML under `out`."""
                return len(self.notes())

            async def serve(self, port: int = 8000) -> int:
                """Serve the built site until stopped."""
                return port
        ''',
    'web/app.js': """\
        /** Search box of the generated site. */
        export function search(index, query) {
          return index.filter((entry) => entry.title.includes(query));
        }

        export class SearchBox {
          constructor(element, index) {
            this.element = element;
            this.index = index;
          }

          render(results) {
            this.element.textContent = results.map((r) => r.title).join(", ");
          }
        }
        """,
    'indexer/main.go': """\
        package main

        import "fmt"

        // Index maps words to the notes that contain them.
        type Index struct {
        \tWords map[string][]string
        }

        // Add records the words of one note.
        func (i *Index) Add(note string, words []string) {
        \tfor _, w := range words {
        \t\ti.Words[w] = append(i.Words[w], note)
        \t}
        }

        func main() {
        \tfmt.Println("indexer ready")
        }
        """,
    'native/render.c': """\
        #include <string.h>

        /* Count the headings of a markdown buffer. */
        int count_headings(const char *text) {
            int count = 0;
            for (const char *p = text; *p; p++) {
                if (*p == '#' && (p == text || p[-1] == '\\n')) count++;
            }
            return count;
        }
        """,
    'Dockerfile': 'FROM python:3.12-slim\nCOPY . /app\nRUN pip install /app\nCMD ["inkwell", "serve", "/site"]\n',
}

LATER = {
    'inkwell/feeds.rs': """\
        /// An RSS feed of the newest notes.
        pub struct Feed {
            pub title: String,
        }

        impl Feed {
            /// Render the feed as XML.
            pub fn render(&self) -> String {
                format!("<rss><title>{}</title></rss>", self.title)
            }
        }
        """,
}


def allow_local_repositories() -> Settings:
    """Let this process take local repositories, as the demo's worker (run in it) must, and return its settings."""
    os.environ['ALLOW_LOCAL_REPOSITORIES'] = 'true'
    settings_module.reset()
    return get_settings()


def run(
    connection: redis.Redis, settings: Settings, on_step: Callable[[str, object], None] = lambda step, value: None
) -> dict:
    """Build, submit and document the demo repository with a burst worker in this process; return what it made.

    `on_step` hears of the steps before the long one: 'repository' with its path, 'submitted' with the warehouse.
    """
    migration.create_schema()
    repository = build_repository(settings.data_dir / 'demo' / 'inkwell')
    on_step('repository', repository)
    row = submit(repository, connection, settings)
    on_step('submitted', row)
    workers.run_worker(connection, [queues.WAREHOUSE], burst=True, logging_level='WARNING', settings=settings)
    job = queues.JsonJob.fetch(warehouses.process_job_id(row.id), connection=connection)
    if settings.llm_enabled and job.get_status() == 'finished':
        on_step('pages', (job.return_value() or {}).get('pages_open'))
        _write_pages(row.id, connection, settings, on_step)
    warehouse = warehouses.describe(row.id, connection)
    if warehouse['status'] != 'Completed':
        return {'warehouse': warehouse}
    return {
        'warehouse': warehouse,
        'result': job.return_value() or {},
        'catalog': warehouses.catalog_tree(row.id),
        'overview': warehouses.page_content(row.id, 'overview') or '',
        'minimap': minimap.stored_tree(row.id),
    }


def _write_pages(
    warehouse_id: str, connection: redis.Redis, settings: Settings, on_step: Callable[[str, object], None]
) -> None:
    """Run burst workers on queue `pages` until the warehouse's finishing job has ended."""
    finish_id = page_jobs.finish_job_id(warehouse_id)
    while True:
        workers.run_worker(connection, [queues.PAGES], burst=True, logging_level='WARNING', settings=settings)
        try:
            job = queues.JsonJob.fetch(finish_id, connection=connection)
        except NoSuchJobError:
            return
        on_step('progress', job.meta.get('progress'))
        if job.get_status() in monitor.ENDED:
            return
        # Retries wait out their backoff, and rate-limited pages their turn: a burst worker returns meanwhile.
        time.sleep(PAGES_POLL_INTERVAL)


def build_repository(path: Path) -> Path:
    """Create (or reuse) the demo repository at `path`: three commits in Python, JS, Go, C and Rust."""
    if (path / '.git').is_dir() and _has_commits(path):
        return path
    # Built aside and renamed into place: a demo interrupted while building leaves no half-made repository (one
    # without commits cannot be cloned) for the next run to reuse.
    shutil.rmtree(path, ignore_errors=True)
    final, path = path, path.with_name(f'.{path.name}.building')
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    _git(path, 'init', '-q', '-b', 'main')
    _write(path, {name: text for name, text in FILES.items() if not name.startswith(('web/', 'native/'))})
    _git(path, 'add', '-A')
    _git(path, 'commit', '-q', '-m', 'Start Inkwell: the Python command line and site builder')
    _write(path, {name: text for name, text in FILES.items() if name.startswith(('web/', 'native/'))})
    _git(path, 'add', '-A')
    _git(path, 'commit', '-q', '-m', 'Add the search box and the native renderer')
    _write(path, LATER)
    _git(path, 'add', '-A')
    _git(path, 'commit', '-q', '-m', 'Add RSS feeds')
    path.rename(final)
    return final


def _has_commits(root: Path) -> bool:
    return _git(root, 'rev-parse', '--quiet', '--verify', 'HEAD', check=False) == 0


def submit(repository: Path, connection: redis.Redis, settings: Settings) -> Warehouse:
    """Submit the demo repository as a warehouse, or queue the demo's own warehouse again; return it."""
    address = str(repository)
    own = [row for row in warehouses.list_warehouses(limit=10000) if row['address'] == address]
    if not own:
        return warehouses.submit_warehouse(address, connection=connection, settings=settings)
    warehouse_id = own[0]['id']
    for job_id in (warehouses.process_job_id(warehouse_id), warehouses.update_job_id(warehouse_id)):
        running = _clear_leftover(job_id, connection)
        if running:
            raise InvalidSubmission(
                f"The demo's warehouse {warehouse_id} is being documented right now by worker "
                f'{running}; wait for it to end (`rqjobs warehouse show {warehouse_id}`), then '
                f'run the demo again.'
            )
    return warehouses.reprocess(warehouse_id, connection)


def _clear_leftover(job_id: str, connection: redis.Redis) -> str | None:
    """Remove a job left by an interrupted demo; return the name of the live worker running it, if one is."""
    # A demo stopped with Ctrl-C leaves its job queued (the worker had not started), scheduled for a retry (the
    # clone was cut short) or started by a worker that is gone (a second Ctrl-C kills the work horse). Nothing else
    # will run it, so the demo removes it and starts over; a job that a live worker is running is left alone.
    try:
        job = queues.JsonJob.fetch(job_id, connection=connection)
    except NoSuchJobError:
        return None
    status = job.get_status(refresh=False)
    if status not in LEFTOVER_STATUSES:
        return None
    if status == JobStatus.STARTED and job.worker_name and _worker_alive(job.worker_name, connection):
        return job.worker_name
    logger.info('demo: removing job %s, left %s by an interrupted demo', job_id, status.value)
    job.delete()
    return None


def _worker_alive(name: str, connection: redis.Redis) -> bool:
    key = Worker.redis_worker_namespace_prefix + name
    # A worker that stopped registers its death in its key, which lingers for a minute.
    return bool(connection.exists(key)) and not connection.hexists(key, 'death')


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(textwrap.dedent(text))


def _git(root: Path, *args: str, check: bool = True) -> int:
    env = {
        'PATH': os.environ.get('PATH', '/usr/bin:/bin'),
        'HOME': str(root),
        'GIT_CONFIG_NOSYSTEM': '1',
        'GIT_AUTHOR_NAME': 'Inkwell Demo',
        'GIT_AUTHOR_EMAIL': 'demo@inkwell.invalid',
        'GIT_COMMITTER_NAME': 'Inkwell Demo',
        'GIT_COMMITTER_EMAIL': 'demo@inkwell.invalid',
    }
    return subprocess.run(['git', *args], cwd=root, env=env, check=check, capture_output=True).returncode
