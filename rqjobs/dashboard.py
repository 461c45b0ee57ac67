"""rq-dashboard on the project's Redis, with the project's JSON jobs and five repairs for rq-dashboard 0.9.

- Its Workers tab loads each busy worker's current job with pickle, ignoring its JSON option, and fails; here it
  loads workers with the project's job class and serializer.
- Its job data decodes a job's dependency ids, which rq 3 already gives as text, and fails for every job with a
  dependency; here it fetches jobs with a class that gives them as the bytes it expects.
- Its job page inserts a job's description, error and metadata into the page as HTML; a job whose error message
  holds markup would run it in the operator's browser, on a page that can delete and requeue jobs. Here the job
  data it serves has those texts HTML-escaped, so the page shows them as text.
- It makes a Redis client per request with no socket timeout; here its URL carries REDIS_TIMEOUT.
- Its Sentinel URLs drop the user name, TLS and the Sentinels' password; here it connects as the project does.
- Its lists load jobs with rq's own queue class, and one job hash that cannot be read (forged or corrupted) fails
  the whole list; here lists leave such a job out, and its own page answers 404 with the reason.
"""

from __future__ import annotations

import html
import ipaddress
import json
import logging
import socket
import urllib.parse

from flask import Flask, Response, request
from rq import Worker

from rqjobs import connections, queues
from rqjobs.exceptions import SettingsError, UnreadableJob
from rqjobs.settings import get_settings

ESCAPED_FIELDS = ('description', 'exc_info', 'metadata', 'origin', 'id', 'status')


class DashboardWorker(Worker):
    """The worker class rq-dashboard lists: loads current jobs as the project's JSON jobs."""

    @classmethod
    def all(cls, connection=None, job_class=None, queue_class=None, queue=None, serializer=None):
        return Worker.all(
            connection=connection,
            job_class=queues.JsonJob,
            queue_class=queues.JsonQueue,
            queue=queue,
            serializer=queues.JSONSerializer,
        )


class DashboardJob(queues.JsonJob):
    """The job class rq-dashboard fetches: a JSON job whose dependency ids are the bytes rq-dashboard decodes."""

    @property
    def dependency_ids(self) -> list[bytes]:  # rq 3 decodes them already; only rq-dashboard reads this property
        return sorted(self.connection.smembers(self.dependencies_key))


class DashboardQueue(queues.JsonQueue):
    """The queue class rq-dashboard lists through: JSON jobs as `DashboardJob`s, unreadable ones left out."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.job_class = DashboardJob


def create_app(redis_url: str, username: str | None = None, password: str | None = None) -> Flask:
    """Return the rq-dashboard Flask app, set up for the project's Redis and JSON jobs."""
    from rq_dashboard import web
    from rq_dashboard.cli import make_flask_app

    app = make_flask_app(None, username, password, '')
    app.config['RQ_DASHBOARD_REDIS_URL'] = bounded_url(redis_url, get_settings().redis_timeout)
    app.config['DEPRECATED_OPTIONS'] = []
    # Lists show each job's call with its (JSON) arguments, not only its name.
    app.config['RQ_DASHBOARD_SHOW_FULL_ARGS'] = True
    web.config.serializer = queues.JSONSerializer
    # rq-dashboard looks the worker class up in its module: the project's one reads JSON jobs.
    web.Worker = DashboardWorker
    web.Job = DashboardJob
    # rq-dashboard lists with rq's own queue class, which stops at the first job it cannot read.
    web.Queue = DashboardQueue
    # rq-dashboard reads Sentinel URLs with redis_sentinel_url, which drops an ACL user name, TLS and the query's
    # sentinel_password: the project's own client takes the same URLs whole.
    web.from_url = connect
    app.after_request(escape_job_text)
    app.register_error_handler(UnreadableJob, unreadable_job)
    web.setup_rq_connection(app)
    return app


def bounded_url(redis_url: str, timeout: float) -> str:
    """Return `redis_url` with socket timeouts of `timeout` seconds, unless it sets its own."""
    # rq-dashboard builds a client from the URL for every request, with no timeout: a Redis that stopped answering
    # would hold each page for good. redis-py reads these options from the URL's query.
    base, _, query = redis_url.partition('?')  # not urlsplit: unsplit, unix:///path would lose its slashes
    options = urllib.parse.parse_qsl(query)
    given = {name for name, _ in options}
    options += [(name, f'{timeout:g}') for name in ('socket_timeout', 'socket_connect_timeout') if name not in given]
    return f'{base}?{urllib.parse.urlencode(options)}'


def connect(url: str, sentinel_options: dict | None = None, client_options: dict | None = None) -> tuple:
    """Return (None, client) for `url`, as redis_sentinel_url's `connect` does, through the project's own client."""
    return None, connections.from_url(url)


def unreadable_job(exc: UnreadableJob) -> tuple[dict, int]:
    """Answer a request for a job that cannot be read with 404 and the reason, instead of a 500 and a traceback."""
    return {'error': str(exc)}, 404


def escape_job_text(response: Response) -> Response:
    """HTML-escape the texts of a job's data, which the job page inserts unescaped."""
    if '/data/job/' not in request.path or response.mimetype != 'application/json' or response.status_code != 200:
        return response
    data = json.loads(response.get_data())
    for field in ESCAPED_FIELDS:
        if isinstance(data.get(field), str):
            data[field] = html.escape(data[field], quote=False)
    if isinstance(data.get('depends_on'), list):  # ids the page shows as text and puts in a link
        data['depends_on'] = [html.escape(str(job_id)) for job_id in data['depends_on']]
    response.set_data(json.dumps(data))
    return response


def check_access(bind: str, username: str | None, password: str | None, password_env: str) -> None:
    """Refuse half of basic auth, and an address off localhost without it: the dashboard shows and deletes jobs."""
    if bool(username) != bool(password):
        raise SettingsError(f'Set both DASHBOARD_USERNAME and {password_env} for basic auth, or neither.')
    if not is_loopback(bind) and not username:
        raise SettingsError(
            f'The dashboard shows and deletes jobs: to listen on {bind}, set DASHBOARD_USERNAME '
            f'and {password_env} (basic auth), or keep --bind 127.0.0.1.'
        )


def is_loopback(address: str) -> bool:
    """Whether `address` (a name or an IP address) is this machine only."""
    if address == 'localhost':
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def base_url(bind: str, port: int) -> str:
    """Return the URL a browser opens for a server on `bind`:`port` (an IPv6 address goes in brackets)."""
    try:
        ipv6 = ipaddress.ip_address(bind).version == 6
    except ValueError:
        ipv6 = False
    return f'http://[{bind}]:{port}/' if ipv6 else f'http://{bind}:{port}/'


def make_server(app: Flask, bind: str, port: int):
    """Return a threaded werkzeug server for `app` listening on `bind`:`port`; an OSError says why it cannot listen."""
    from werkzeug import serving

    logging.getLogger('werkzeug').setLevel(logging.WARNING)
    # Flask's app.run() lets werkzeug print a failed bind in several lines and exit by itself: bind here, so the
    # caller can say why in one line, and hand werkzeug the listening socket.
    family = serving.select_address_family(bind, port)
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as werkzeug does
    try:
        listener.bind(serving.get_sockaddr(bind, port, family))
        listener.listen()
    except OSError:
        listener.close()
        raise
    return serving.make_server(bind, port, app, threaded=True, fd=listener.fileno())
