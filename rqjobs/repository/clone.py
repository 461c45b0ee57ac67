"""Clone and fetch a checked address in the hardened git, under caps on time, disk and files.

A clone or fetch runs in its own process group and is killed whole when it passes a cap; what it wrote is removed in
the background. Credentials never reach argv, the URL given to git, `.git/config`, logs or exception messages.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import re
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from rqjobs import limits
from rqjobs.exceptions import (
    CloneTimeout,
    GitError,
    InvalidRepositoryAddress,
    RepositoryNotFound,
    RepositoryTooLarge,
    RepositoryUnauthorized,
)
from rqjobs.repository.addresses import (
    LONE_TOKEN_USERNAME,
    Endpoint,
    RepoAddress,
    check_host,
    first_unsafe_character,
    parse_address,
    protocol_of,
    shown_text,
)
from rqjobs.repository.history import current_branch, head_commit
from rqjobs.repository.runner import (
    HOST_VARIABLE,
    PASSWORD_VARIABLE,
    USERNAME_VARIABLE,
    git_environment,
    last_line,
    private_home,
    redact,
)
from rqjobs.repository.storage import discard, disk_usage, inside_root, partial_path
from rqjobs.settings import Settings, get_settings

logger = logging.getLogger(__name__)

# How often a running clone or fetch has its disk usage measured against GIT_MAX_REPO_SIZE and GIT_MAX_REPO_FILES,
# in seconds at least; a measure that takes long (many files) is spaced out to keep the measuring under a fifth.
SIZE_POLL_INTERVAL = 0.5
SIZE_POLL_SHARE = 5
MEGABYTE = 1024 * 1024
STDERR_LINES_KEPT = 50
_BRANCH = re.compile(r'[A-Za-z0-9_][A-Za-z0-9._/-]{0,254}')
_PROGRESS = re.compile(r'(?:remote: *)?(?P<stage>[A-Za-z][A-Za-z ]*?): +(?P<percent>\d{1,3})%')
_REDIRECT = re.compile(r'returned error: (30[1278])\b')
_NOT_FOUND_MARKERS = (
    'not found',
    'does not appear to be a git repository',
    'does not exist',
    "couldn't find remote ref",
    'could not find remote branch',
    'no such repository',
    'returned error: 404',
    'returned error: 410',
)
_UNAUTHORIZED_MARKERS = (
    'authentication failed',
    'could not read username',
    'could not read password',
    'terminal prompts disabled',
    'returned error: 401',
    'returned error: 403',
    'permission denied (',
    'permission to ',
    'invalid username or password',
    'host key verification failed',
    'unable to read askpass response',
)


def sync(
    address: RepoAddress | str,
    dest: Path,
    branch: str | None = None,
    *,
    username: str | None = None,
    password: str | None = None,
    settings: Settings | None = None,
    progress: Callable[[str, int], None] | None = None,
) -> str:
    """Clone the repository into `dest`, or fetch and hard-reset an existing clone to the branch; return HEAD's sha.

    `branch` None means the remote's default branch for a new clone and the clone's current branch for an
    existing one. `username`/`password` override those of the address. A force-push upstream is followed.
    """
    settings = settings or get_settings()
    target = _checked_address(address, settings)
    username = username if username is not None else target.username
    password = password if password is not None else target.password
    if password is not None and username is None:
        username = LONE_TOKEN_USERNAME
    _check_credentials(username, password)
    if branch is not None:
        check_branch(branch)
    dest = inside_root(dest, settings)
    endpoint = None if target.is_local else check_host(target, settings)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fresh = not (dest / '.git').is_dir()
    if not fresh and branch is None:
        branch = current_branch(dest)
    # A new clone is written beside `dest` and renamed into place once complete: `dest` exists only as a whole
    # clone, whenever the worker is killed. What a killed clone leaves is removed by the next try.
    partial = inside_root(partial_path(dest), settings)
    run = _Run(target, partial if fresh else dest, settings, username, password, progress, endpoint)
    try:
        if fresh:
            for leftover in (dest, partial):
                if os.path.lexists(leftover):
                    discard(leftover, settings)  # a directory without .git, or an interrupted clone
            logger.info('%s: cloning %s (branch %s)', dest.name, target.url, branch or 'default')
            run.git(_clone_args(target, partial, branch), cwd=None, what=f'Cloning {run.label(branch)}')
            os.rename(partial, dest)
        else:
            logger.info('%s: fetching %s (branch %s)', dest.name, target.url, branch)
            run.git(_fetch_args(target, branch), cwd=dest, what=f'Fetching {run.label(branch)}')
            run.git(
                [
                    'checkout',
                    '--force',
                    '--progress',
                    '--no-track',
                    '-B',
                    branch,
                    f'refs/remotes/origin/{branch}',
                    '--',
                ],
                cwd=dest,
                what=f'Checking out {run.label(branch)}',
            )
            run.git(['clean', '-ffdxq'], cwd=dest, what=f'Cleaning the clone of {target.url}')
    except (CloneTimeout, RepositoryTooLarge):
        # A killed git can leave lock files and half-written packs: start over from scratch next time.
        discard(partial if fresh else dest, settings)
        raise
    except BaseException:
        if fresh and os.path.lexists(partial):
            discard(partial, settings)
        raise
    sha = head_commit(dest)
    logger.info('%s: %s at %s (branch %s)', dest.name, target.url, sha, branch or current_branch(dest))
    return sha


def _checked_address(address: RepoAddress | str, settings: Settings) -> RepoAddress:
    if isinstance(address, str):
        return parse_address(address, settings)
    if not isinstance(address, RepoAddress):
        raise TypeError(f'sync takes a RepoAddress or a string, not {type(address).__name__}')
    # A RepoAddress built by hand is checked again; only here may it be http:// (a trusted caller, or a test).
    checked = parse_address(address.url, settings, allow_http=True)
    if checked.username or checked.password:
        raise InvalidRepositoryAddress(
            f'RepoAddress.url {shown_text(address.url)} carries credentials; '
            f'pass them as username and password instead.'
        )
    return RepoAddress(
        url=checked.url,
        organization=checked.organization,
        name=checked.name,
        username=address.username,
        password=address.password,
        is_local=checked.is_local,
    )


def _check_credentials(username: str | None, password: str | None) -> None:
    for value in (username, password):
        # A space is fine in a password; a newline would end the askpass answer early.
        if value is not None and (not isinstance(value, str) or first_unsafe_character(value.replace(' ', ''))):
            raise InvalidRepositoryAddress(
                'Git credentials must be strings without control characters or line '
                'breaks; check the stored username and token.'
            )


def check_branch(branch: str) -> None:
    """Raise `InvalidRepositoryAddress` unless `branch` is a plain, safe branch name."""
    if (
        not isinstance(branch, str)
        or not _BRANCH.fullmatch(branch)
        or branch == 'HEAD'
        or '..' in branch
        or '//' in branch
        or branch.endswith(('.', '/', '.lock'))
        or any(part.startswith('.') for part in branch.split('/'))
    ):
        raise InvalidRepositoryAddress(
            f'Branch name {str(branch)[:100]!r} is refused: use letters, digits, "/", '
            f'".", "_" and "-", for example main or release/2.0.'
        )


def _clone_args(address: RepoAddress, dest: Path, branch: str | None) -> list[str]:
    args = ['clone', '--no-recurse-submodules', '--single-branch', '--no-tags', '--progress', '--template=']
    if address.is_local:
        args.append('--no-local')  # go through upload-pack: never hard-link or copy the source's files directly
    if branch is not None:
        args += ['--branch', branch]
    return [*args, '--', address.url, str(dest)]


def _fetch_args(address: RepoAddress, branch: str) -> list[str]:
    # The checked URL, not the clone's configured remote: the address is the truth, whatever .git/config says.
    return [
        'fetch',
        '--no-recurse-submodules',
        '--no-tags',
        '--prune',
        '--progress',
        '--no-write-fetch-head',
        '--',
        address.url,
        f'+refs/heads/{branch}:refs/remotes/origin/{branch}',
    ]


class _Run:
    """The git processes of one sync: one deadline, one size cap, one private HOME with the askpass helper."""

    def __init__(
        self,
        address: RepoAddress,
        dest: Path,
        settings: Settings,
        username: str | None,
        password: str | None,
        progress: Callable[[str, int], None] | None,
        endpoint: Endpoint | None,
    ):
        self.address = address
        self.endpoint = endpoint
        self.guarded = not settings.git_allow_private_hosts
        self.dest = dest
        self.deadline = time.monotonic() + settings.git_clone_timeout
        self.timeout = settings.git_clone_timeout
        self.max_bytes = settings.git_max_repo_size_mb * MEGABYTE
        self.max_mb = settings.git_max_repo_size_mb
        self.max_files = settings.git_max_repo_files
        self.username = username
        self.password = password
        self.progress = progress
        self.secrets = tuple(filter(None, (password,)))
        self.last_progress: tuple[str, int] | None = None

    def label(self, branch: str | None) -> str:
        return f'{self.address.url} (branch {branch})' if branch else self.address.url

    def git(self, args: list[str], *, cwd: Path | None, what: str) -> None:
        with private_home() as (home, askpass):
            protocol = protocol_of(self.address)
            env = git_environment(
                home=home,
                ceiling=home.parent if cwd is None else self.dest.parent,
                repo=None if cwd is None else self.dest,
                protocols=(protocol,),
                askpass=askpass,
                ssh=protocol == 'ssh',
                endpoint=self.endpoint,
                guarded=self.guarded,
            )
            if protocol in ('http', 'https') and (self.username or self.password):
                # A redirect to another host gets no answer: the token is only for the host the user named.
                env[HOST_VARIABLE] = urlsplit(self.address.url).netloc
                env.update({USERNAME_VARIABLE: self.username or '', PASSWORD_VARIABLE: self.password or ''})
            status, lines = self._run(args, cwd=cwd or home, env=env, what=what)
        if status != 0:
            raise _classify(what, status, lines, self.secrets)

    def _run(self, args: list[str], *, cwd: Path, env: dict[str, str], what: str) -> tuple[int, list[str]]:
        lines: deque[str] = deque(maxlen=STDERR_LINES_KEPT)
        received: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        try:
            # Its own session, hence its own process group: the caps kill git and every helper it started. SIGTERM
            # when this process dies (a killed worker's horse): git stops and removes its lock files; what a clone
            # wrote stays in <id>.partial, which the next try removes.
            # The preexec_fn takes no lock (two system calls), so threads of this process cannot deadlock it.
            process = subprocess.Popen(
                ['git', *args],
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,
                preexec_fn=limits.parent_death_signal(),
            )
        except OSError as exc:
            raise GitError(f'{what} failed: git cannot be started ({exc.strerror}); is git installed?') from None
        # Known to the work horse's hard time limit, which kills this group along with itself.
        limits.child_groups.add(process.pid)
        reader = threading.Thread(
            target=_drain, args=(process.stderr, received), daemon=True, name=f'git-stderr-{process.pid}'
        )
        reader.start()
        finished = False
        try:
            next_size_check = time.monotonic() + SIZE_POLL_INTERVAL
            ended = False
            while True:
                wait = max(0.0, min(self.deadline, next_size_check) - time.monotonic())
                ended = self._take_lines(received, lines, wait) or ended
                if ended:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        process.wait(timeout=max(0.0, min(self.deadline - time.monotonic(), SIZE_POLL_INTERVAL)))
                    if process.returncode is not None:
                        break
                now = time.monotonic()
                if now >= self.deadline:
                    _kill_group(process)
                    raise CloneTimeout(
                        f'{what} took longer than GIT_CLONE_TIMEOUT ({self.timeout} s) and was '
                        f'stopped; the clone was removed.'
                    )
                if now >= next_size_check:
                    self._check_size(process, what)
                    took = time.monotonic() - now
                    next_size_check = now + max(SIZE_POLL_INTERVAL, took * SIZE_POLL_SHARE)
            finished = True
        finally:
            if not finished and process.returncode is None:
                _kill_group(process)
            limits.child_groups.discard(process.pid)
            reader.join(timeout=5)
            if not reader.is_alive():
                process.stderr.close()
        self._check_size(None, what)
        return process.returncode, list(lines)

    def _take_lines(self, received: queue.SimpleQueue, lines: deque[str], wait: float) -> bool:
        """Collect what git wrote to stderr; report progress; return True once stderr is closed."""
        try:
            line = received.get(timeout=wait) if wait > 0 else received.get_nowait()
        except queue.Empty:
            return False
        while True:
            if line is None:
                return True
            match = _PROGRESS.match(line)
            if match:
                report = (match['stage'], min(100, int(match['percent'])))
                if self.progress is not None and report != self.last_progress:
                    self.last_progress = report
                    self.progress(*report)
            elif line.strip():
                lines.append(redact(line.strip(), self.secrets))
            try:
                line = received.get_nowait()
            except queue.Empty:
                return False

    def _check_size(self, process: subprocess.Popen | None, what: str) -> None:
        allocated, files = disk_usage(self.dest, self.max_bytes, self.max_files)
        if allocated > self.max_bytes:
            reason = f'grew past GIT_MAX_REPO_SIZE ({self.max_mb} MB on disk)'
        elif files > self.max_files:
            reason = f'grew past GIT_MAX_REPO_FILES ({self.max_files} files)'
        else:
            return
        if process is not None:
            _kill_group(process)
        raise RepositoryTooLarge(f'{what} {reason} and was stopped; the clone was removed.')


def _drain(stream: Any, received: queue.SimpleQueue) -> None:
    """Read git's stderr to the end, so git never blocks on a full pipe; split it at \\r (progress) and \\n."""
    pending = b''
    fd = stream.fileno()
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            chunk = b''
        if not chunk:
            break
        parts = re.split(rb'[\r\n]', pending + chunk)
        pending = parts.pop()[-4096:]
        for part in parts:
            received.put(part[:1000].decode('utf-8', 'replace'))
    if pending:
        received.put(pending[:1000].decode('utf-8', 'replace'))
    received.put(None)


def _kill_group(process: subprocess.Popen) -> None:
    # Until the leader is reaped (returncode set), its pid names this group and no other process's.
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _classify(what: str, status: int, lines: Sequence[str], secrets: Sequence[str]) -> Exception:
    last = last_line(lines, secrets)
    text = '\n'.join(lines).lower()
    if any(marker in text for marker in _UNAUTHORIZED_MARKERS):
        return RepositoryUnauthorized(
            f'{what} failed: the remote refused the credentials, or asked for some and '
            f'none were given (a private or missing repository): {last}'
        )
    if any(marker in text for marker in _NOT_FOUND_MARKERS):
        return RepositoryNotFound(f'{what} failed: the repository or branch was not found: {last}')
    redirect = _REDIRECT.search(text)
    if redirect:
        return InvalidRepositoryAddress(
            f'{what} failed: the server redirects (HTTP {redirect[1]}) to another address, and redirects are not '
            f'followed, since nothing checked where they lead. Submit the address the repository has now (was it '
            f'renamed or moved?), or set GIT_ALLOW_PRIVATE_HOSTS=true on a private network.'
        )
    return GitError(f'{what} failed (git exit status {status}): {last}')
