"""Safe git: address checks, stored credentials, and real clones and fetches of hostile local and HTTP repositories."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import http.server
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

from rqjobs import settings as settings_module
from rqjobs.credentials import decrypt_secret, encrypt_secret
from rqjobs.exceptions import (
    CloneTimeout,
    GitError,
    InvalidRepositoryAddress,
    PermanentJobError,
    RepositoryNotFound,
    RepositoryTooLarge,
    RepositoryUnauthorized,
    SecretKeyMissing,
)
from rqjobs.repository import addresses, clone, runner, storage
from rqjobs.repository.addresses import RepoAddress, parse_address
from rqjobs.repository.clone import sync
from rqjobs.repository.history import (
    changed_paths,
    current_branch,
    has_commit,
    head_commit,
    is_ancestor,
    recent_commits,
)
from rqjobs.repository.storage import clone_path, partial_path, remove_clone

SECRET = 'S3cr3t-t0ken-Zq9'
EXAMPLE = 'https://github.com/org/repo.git'


# ---------------------------------------------------------------------------------------------------------------------
# Helpers to build upstream repositories (reusable by other test modules)
# ---------------------------------------------------------------------------------------------------------------------


def run_git(cwd: Path, *args: str, date: str | None = None) -> str:
    """Run the test's own git (not the code under test) with a clean, fixed identity; return its stdout."""
    env = {
        'PATH': os.environ['PATH'],
        'HOME': os.devnull,
        'LC_ALL': 'C',
        'GIT_CONFIG_NOSYSTEM': '1',
        'GIT_CONFIG_GLOBAL': os.devnull,
        'GIT_AUTHOR_NAME': 'Ada Lovelace',
        'GIT_AUTHOR_EMAIL': 'ada@example.com',
        'GIT_COMMITTER_NAME': 'Ada Lovelace',
        'GIT_COMMITTER_EMAIL': 'ada@example.com',
    }
    if date:
        env['GIT_AUTHOR_DATE'] = env['GIT_COMMITTER_DATE'] = date
    result = subprocess.run(
        ['git', '-c', 'init.defaultBranch=main', '-c', 'protocol.file.allow=always', *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


def commit_files(repo: Path, files: dict[str, str | bytes | None], message: str, date: str | None = None) -> str:
    """Write (or, for None, delete) files in `repo`, commit them all and return the new commit's sha."""
    for name, content in files.items():
        path = repo / name
        if content is None:
            path.unlink()
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    run_git(repo, 'add', '-A')
    run_git(repo, 'commit', '-q', '-m', message, date=date)
    return run_git(repo, 'rev-parse', 'HEAD')


def make_repository(path: Path, *, big_file_mb: int = 0) -> dict[str, str]:
    """Build a hostile upstream repository at `path` and return the shas of its commits by name.

    main: `initial` (README, a guide, a symlink to /etc/passwd, a .gitattributes asking for an `evil` filter and
    LFS), `submodule` (a .gitmodules and a gitlink), `second` (with a description and a fixed date). dev: `dev`.
    """
    path.mkdir(parents=True)
    run_git(path, 'init', '-q')
    (path / 'passwd').symlink_to('/etc/passwd')
    shas = {
        'initial': commit_files(
            path,
            {
                'README.md': 'hello\n',
                'docs/guide.md': 'guide\n',
                '.gitattributes': '*.md filter=evil\n*.bin filter=lfs diff=lfs merge=lfs -text\n',
            },
            'Initial commit',
        )
    }
    library = path.parent / f'{path.name}-library'
    library.mkdir()
    run_git(library, 'init', '-q')
    commit_files(library, {'lib.txt': 'library\n'}, 'Library')
    run_git(path, 'submodule', 'add', '-q', str(library), 'vendor/library')
    shas['submodule'] = commit_files(path, {}, 'Add the library as a submodule')
    run_git(path, 'checkout', '-q', '-b', 'dev')
    shas['dev'] = commit_files(path, {'dev.txt': 'dev\n'}, 'Dev work')
    run_git(path, 'checkout', '-q', 'main')
    shas['second'] = commit_files(
        path,
        {'README.md': 'hello again\n'},
        'Second commit\n\nLonger description.\n\nWith two paragraphs.',
        date='2024-03-01T12:00:00+02:00',
    )
    if big_file_mb:
        shas['big'] = commit_files(path, {'data.bin': os.urandom(big_file_mb * 1024 * 1024)}, 'Big data')
    shas['head'] = run_git(path, 'rev-parse', 'HEAD')
    return shas


def make_bare_for_http(source: Path, root: Path, org: str = 'org', name: str = 'repo') -> Path:
    """Publish `source` as a packed bare repository under `root/org/name.git` for a dumb-HTTP server."""
    bare = root / org / f'{name}.git'
    bare.parent.mkdir(parents=True, exist_ok=True)
    run_git(root, 'clone', '-q', '--bare', '--no-local', str(source), str(bare))
    run_git(bare, 'repack', '-q', '-a', '-d')
    run_git(bare, 'update-server-info')
    return bare


@contextlib.contextmanager
def serve_dumb_http(
    root: Path,
    *,
    credentials: tuple[str, str] | None = None,
    delay: float = 0.0,
    throttle: float = 0.0,
    redirect_to_localhost: bool = False,
    seen: list[str] | None = None,
    hosts: list[str] | None = None,
) -> Iterator[str]:
    """Serve `root` over plain HTTP on 127.0.0.1; optional Basic auth, a delay per request, a slow body.

    `redirect_to_localhost` sends requests for 127.0.0.1 on to localhost; `seen` collects Authorization headers,
    `hosts` the Host header of each request.
    """
    expected = 'Basic ' + base64.b64encode(':'.join(credentials).encode()).decode() if credentials else None

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def do_GET(self):
            time.sleep(delay)
            if hosts is not None:
                hosts.append(self.headers.get('Host', ''))
            if seen is not None and self.headers.get('Authorization'):
                seen.append(self.headers['Authorization'])
            if redirect_to_localhost and self.headers.get('Host', '').startswith('127.0.0.1:'):
                self.send_response(301)
                self.send_header('Location', f'http://localhost:{self.server.server_address[1]}{self.path}')
                self.send_header('Content-Length', '0')
                self.end_headers()
                return
            if expected and self.headers.get('Authorization') != expected:
                self.send_response(401)
                self.send_header('WWW-Authenticate', 'Basic realm="git"')
                self.send_header('Content-Length', '0')
                self.end_headers()
                return
            super().do_GET()

        def copyfile(self, source, outputfile):
            while chunk := source.read(64 * 1024):
                outputfile.write(chunk)
                time.sleep(throttle)

        def log_message(self, *args):
            pass

    class Server(http.server.ThreadingHTTPServer):
        def handle_error(self, request, client_address):
            pass  # a git killed by a cap hangs up mid-transfer

    server = Server(('127.0.0.1', 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={'poll_interval': 0.05}, daemon=True)
    thread.start()
    try:
        yield f'http://127.0.0.1:{server.server_address[1]}'
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def network(env):
    """Allow hosts on this machine's network: the HTTP servers of these tests listen on 127.0.0.1."""
    env.setenv('GIT_ALLOW_PRIVATE_HOSTS', 'true')
    settings_module.reset()
    return env


def http_address(base: str, username: str | None = None, password: str | None = None) -> RepoAddress:
    # parse_address refuses http://; a RepoAddress built by hand is how a trusted caller (this test) reaches it.
    return RepoAddress(
        url=f'{base}/org/repo.git',
        organization='org',
        name='repo',
        username=username,
        password=password,
        is_local=False,
    )


def live_group_members(pgid: int) -> list[int]:
    """Return the pids of processes in process group `pgid` that are not zombies (from /proc)."""
    members = []
    for stat in Path('/proc').glob('[0-9]*/stat'):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rpartition(')')[2].split()
            if int(fields[2]) == pgid and fields[0] not in 'ZX':
                members.append(int(stat.parent.name))
    return members


def assert_groups_dead(records: list[SimpleNamespace]) -> None:
    assert records, 'no git process was started'
    deadline = time.monotonic() + 3
    while any(live_group_members(record.pid) for record in records) and time.monotonic() < deadline:
        time.sleep(0.05)
    for record in records:
        assert live_group_members(record.pid) == []
        with contextlib.suppress(ProcessLookupError):  # only zombies may remain, waiting for init to reap them
            os.killpg(record.pid, 0)


def tree(root: Path, skip: Path | None = None) -> set[str]:
    return {str(path) for path in root.rglob('*') if skip is None or not path.is_relative_to(skip)}


# ---------------------------------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def local(env):
    """Settings that accept local repositories, as tests and `jobs demo` use them."""
    env.setenv('ALLOW_LOCAL_REPOSITORIES', 'true')
    settings_module.reset()
    return settings_module.get_settings()


@pytest.fixture
def upstream(tmp_path) -> SimpleNamespace:
    path = tmp_path / 'upstream' / 'org' / 'project'
    shas = make_repository(path)
    return SimpleNamespace(path=path, shas=shas, address=str(path))


@pytest.fixture
def started(monkeypatch) -> list[SimpleNamespace]:
    """Record every process started in its own session (the clones and fetches): argv, environment, pid."""
    records: list[SimpleNamespace] = []

    class RecordingPopen(subprocess.Popen):
        def __init__(self, args, *rest, **kwargs):
            super().__init__(args, *rest, **kwargs)
            if kwargs.get('start_new_session'):
                records.append(SimpleNamespace(args=list(args), env=dict(kwargs.get('env') or {}), pid=self.pid))

    monkeypatch.setattr(subprocess, 'Popen', RecordingPopen)
    return records


@pytest.fixture
def hostile_environment(tmp_path, monkeypatch) -> SimpleNamespace:
    """Worker environment variables that would make a plain git run a hook and a filter, leaving marker files."""
    markers = SimpleNamespace(hook=tmp_path / 'HOOK-RAN', filter=tmp_path / 'FILTER-RAN', template=tmp_path / 'TPL-RAN')
    hooks = tmp_path / 'hostile' / 'hooks'
    template_hooks = tmp_path / 'hostile' / 'template' / 'hooks'
    for directory, marker in ((hooks, markers.hook), (template_hooks, markers.template)):
        directory.mkdir(parents=True)
        hook = directory / 'post-checkout'
        hook.write_text(f'#!/bin/sh\ntouch {marker}\n')
        hook.chmod(0o755)
    config = tmp_path / 'hostile' / 'gitconfig'
    config.write_text(
        f'[filter "evil"]\n\tsmudge = "touch {markers.filter}; cat"\n\trequired = true\n'
        f'[filter "lfs"]\n\tsmudge = "touch {markers.filter}; cat"\n'
        f'[core]\n\thooksPath = {hooks}\n[init]\n\ttemplateDir = {template_hooks.parent}\n'
    )
    home = tmp_path / 'hostile' / 'home'
    home.mkdir()
    shutil.copy(config, home / '.gitconfig')
    monkeypatch.setenv('HOME', str(home))
    monkeypatch.setenv('GIT_CONFIG_GLOBAL', str(config))
    monkeypatch.setenv('GIT_TEMPLATE_DIR', str(template_hooks.parent))
    monkeypatch.setenv('GIT_CONFIG_PARAMETERS', f"'core.hooksPath'='{hooks}'")
    return markers


# ---------------------------------------------------------------------------------------------------------------------
# parse_address
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    'address, url, organization, name',
    [
        ('https://github.com/Org/Repo', 'https://github.com/Org/Repo.git', 'org', 'repo'),
        ('https://github.com/org/repo.git/', 'https://github.com/org/repo.git', 'org', 'repo'),
        ('  https://GitHub.COM/org/My-Repo.v2/  ', 'https://github.com/org/My-Repo.v2.git', 'org', 'my-repo.v2'),
        (
            'https://gitlab.example.com:8443/group/sub/Project',
            'https://gitlab.example.com:8443/group/sub/Project.git',
            'sub',
            'project',
        ),
        ('https://[2606:4700::1111]/org/repo', 'https://[2606:4700::1111]/org/repo.git', 'org', 'repo'),
        ('https://140.82.121.4:3000/org/repo.git', 'https://140.82.121.4:3000/org/repo.git', 'org', 'repo'),
    ],
)
def test_accepted_addresses_are_normalised(address, url, organization, name):
    parsed = parse_address(address)
    assert (parsed.url, parsed.organization, parsed.name) == (url, organization, name)
    assert (parsed.username, parsed.password, parsed.is_local) == (None, None, False)


@pytest.mark.parametrize(
    'address, username, password',
    [
        (f'https://alice:{SECRET}@github.com/org/repo', 'alice', SECRET),
        ('https://alice:tok%40en%3A1@github.com/org/repo', 'alice', 'tok@en:1'),
        (f'https://{SECRET}@github.com/org/repo', 'oauth2', SECRET),
        (f'https://:{SECRET}@github.com/org/repo', 'oauth2', SECRET),
    ],
)
def test_credentials_are_split_out_of_the_url(address, username, password):
    parsed = parse_address(address)
    assert parsed.url == 'https://github.com/org/repo.git'
    assert (parsed.username, parsed.password) == (username, password)
    assert SECRET not in repr(parsed) and 'tok@en' not in repr(parsed)


@pytest.mark.parametrize(
    'address, reason',
    [
        ('', 'empty'),
        ('ext::sh -c touch% /tmp/x', 'remote helper'),
        ('fd::17', 'remote helper'),
        ('file:///etc', 'ALLOW_LOCAL_REPOSITORIES=false'),
        ('/tmp/repo', 'ALLOW_LOCAL_REPOSITORIES=false'),
        ('-uhttps://x/y/z', 'starts with "-"'),
        ('--upload-pack=touch /tmp/x', 'starts with "-"'),
        ('https://host/a/../b', "'..' segment"),
        ('https://host/a/%2e%2e/b', "'..' segment"),
        ('https://host/a/%2E%2e/b', "'..' segment"),
        ('http://host/a/b', 'clear text'),
        ('git://host/a/b', 'git://'),
        ('ssh://git@host/a/b', 'GIT_ALLOW_SSH=false'),
        ('git@host:a/b.git', 'GIT_ALLOW_SSH=false'),
        ('https://host/a', 'at least two segments'),
        ('https://host', 'no path'),
        ('https://ho st/a/b', 'whitespace'),
        ('https://host/a/b\n', 'newline'),
        ('https://host/a/b\r', 'carriage return'),
        ('https://host/a/b\x00', 'NUL'),
        ('https://host/a/b\x7f', 'DEL'),
        ('https://host/a/b\u202e', 'control'),
        ('https://host/\ta/b', 'tab'),
        ('https://host/ a/b', 'whitespace'),
        ('https://host/a/b%00', 'percent-encodes a whitespace or control'),
        ('https://host/a/b%0d%0a', 'percent-encodes a whitespace or control'),
        ('https://host/a%2fb/c', 'percent-encodes a slash'),
        ('https://host/a/b%zz', 'two hex digits'),
        ('https://host/' + 'a/' * 1500 + 'b', 'over the limit of 2048'),
        ('https://github.com@evil.com/a/b', 'looks like a host name'),
        ('https://host_name/a/b', 'not a valid host name'),
        ('https://-host/a/b', 'not a valid host name'),
        ('https://host:0/a/b', 'port'),
        ('https://host:99999/a/b', 'port'),
        ('https://host:x/a/b', 'port'),
        ('https://host/a/b?ref=main', 'query'),
        ('https://host/a/b#main', 'fragment'),
        ('https://host/.org/repo', 'organization'),
        ('https://host/org/-repo', 'repository name'),
        ('https://host/org//repo', 'empty segment'),
        ('https:/host/org/repo', 'missing after the scheme'),
        ('ftp://host/a/b', 'not supported'),
        ('github.com/org/repo', 'not an https:// address'),
        ('https://host\\@evil/a/b', 'backslash'),
    ],
)
def test_refused_addresses_say_why_and_show_a_good_one(address, reason):
    with pytest.raises(InvalidRepositoryAddress) as info:
        parse_address(address)
    message = str(info.value)
    assert reason in message
    assert EXAMPLE in message
    assert len(message) < 400
    assert isinstance(info.value, PermanentJobError)


@pytest.mark.parametrize(
    'address',
    [
        f'https://alice:{SECRET}@ho st/a/b',
        f'https://alice:{SECRET}@host/a/../b',
        f'http://alice:{SECRET}@host/a/b',
        f'https://alice:{SECRET}@host/a',
        f'https://alice:{SECRET}/x@host/a/b\n',
        f'{SECRET}@host:a/b',
        f'https://{SECRET}@github.com@evil.com/a/b',
    ],
)
def test_a_refused_address_never_shows_its_password(address):
    with pytest.raises(InvalidRepositoryAddress) as info:
        parse_address(address)
    assert SECRET not in str(info.value)
    assert SECRET[:6] not in str(info.value)


def test_ssh_addresses_only_when_allowed(env):
    env.setenv('GIT_ALLOW_SSH', 'true')
    settings_module.reset()
    scp = parse_address('git@Host.example:Org/Repo')
    assert (scp.url, scp.organization, scp.name, scp.username, scp.password) == (
        'git@host.example:Org/Repo.git',
        'org',
        'repo',
        None,
        None,
    )
    assert parse_address('ssh://git@host:2222/org/repo').url == 'ssh://git@host:2222/org/repo.git'
    with pytest.raises(InvalidRepositoryAddress, match='may not carry a password'):
        parse_address(f'ssh://git:{SECRET}@host/org/repo')
    with pytest.raises(InvalidRepositoryAddress, match="organization '22:org'"):
        parse_address('git@host:22:org/repo')


def test_local_paths_only_when_allowed_and_absolute(local, tmp_path):
    repo = tmp_path / 'Some-Org' / 'Project.git'
    for address in (f'{repo}/', f'file://{repo}'):
        parsed = parse_address(address)
        assert (parsed.url, parsed.organization, parsed.name, parsed.is_local) == (
            str(repo.resolve()),
            'some-org',
            'project',
            True,
        )
    for address, reason in (
        ('org/repo', 'absolute'),
        (f'{tmp_path}/../x/y', "'..' segment"),
        ('file://otherhost/a/b', 'no host'),
        ('/repo', 'parent directory'),
    ):
        with pytest.raises(InvalidRepositoryAddress, match=reason):
            parse_address(address)


# ---------------------------------------------------------------------------------------------------------------------
# Stored credentials
# ---------------------------------------------------------------------------------------------------------------------


def test_secrets_round_trip_and_fail_clearly(env):
    env.setenv('JOBS_SECRET_KEY', 'k' * 32)
    settings_module.reset()
    token = encrypt_secret(SECRET)
    assert token.startswith('fernet:') and SECRET not in token
    assert token != encrypt_secret(SECRET)  # a fresh IV each time
    assert decrypt_secret(token) == SECRET
    other_key = dataclasses.replace(settings_module.get_settings(), secret_key='z' * 32)
    tampered = token[:-6] + ('A' if token[-6] != 'A' else 'B') + token[-5:]
    for bad, settings in ((token, other_key), (tampered, None), (SECRET, None)):
        with pytest.raises(RepositoryUnauthorized) as info:
            decrypt_secret(bad, settings)
        assert SECRET not in str(info.value)
    with pytest.raises(RepositoryUnauthorized, match=r'cannot be decrypted with JOBS_SECRET_KEY \(was the key changed'):
        decrypt_secret(token, other_key)


def test_secrets_need_the_key(env):
    with pytest.raises(SecretKeyMissing, match='JOBS_SECRET_KEY'):
        encrypt_secret(SECRET)
    with pytest.raises(SecretKeyMissing, match='JOBS_SECRET_KEY'):
        decrypt_secret('fernet:whatever')


# ---------------------------------------------------------------------------------------------------------------------
# Paths under REPO_ROOT
# ---------------------------------------------------------------------------------------------------------------------


def test_clone_path_is_inside_repo_root(env, tmp_path):
    root = settings_module.get_settings().repo_root
    assert clone_path('3f6c2a9e-0d4b-4c1e') == root / '3f6c2a9e-0d4b-4c1e'
    for bad in ('', '../etc', 'a/b', '.git', 'x' * 65, 'a\nb', 'w 1'):
        with pytest.raises(ValueError, match='Warehouse id'):
            clone_path(bad)
    root.mkdir(parents=True)
    (root / 'linked').symlink_to(tmp_path)
    with pytest.raises(ValueError, match='not a directory inside REPO_ROOT'):
        clone_path('linked')


def test_remove_clone_only_inside_repo_root(env, tmp_path):
    root = settings_module.get_settings().repo_root
    outside = tmp_path / 'precious'
    outside.mkdir()
    (outside / 'keep.txt').write_text('keep')
    root.mkdir(parents=True)
    (root / 'sneaky').symlink_to(outside)
    for target in (outside, root, root / 'sneaky', root / '..' / '..' / 'precious', Path('relative')):
        with pytest.raises(ValueError):
            remove_clone(target)
    assert (outside / 'keep.txt').read_text() == 'keep'
    (root / 'w1' / 'sub').mkdir(parents=True)
    (root / 'w1' / 'sub' / 'link').symlink_to(outside)
    assert remove_clone(root / 'w1') is True
    assert not (root / 'w1').exists() and (outside / 'keep.txt').exists()
    assert remove_clone(root / 'w1') is False


# ---------------------------------------------------------------------------------------------------------------------
# Cloning a hostile repository
# ---------------------------------------------------------------------------------------------------------------------


def test_clone_runs_nothing_from_the_repository_or_the_environment(local, upstream, hostile_environment, tmp_path):
    # First prove the hostile environment works: a plain git clone runs the hook, the filter and the template hook.
    plain = tmp_path / 'plain'
    subprocess.run(['git', 'clone', '-q', '--no-local', upstream.address, str(plain)], check=True, capture_output=True)
    assert hostile_environment.hook.exists() and hostile_environment.filter.exists()
    for marker in vars(hostile_environment).values():
        marker.unlink(missing_ok=True)
    shutil.rmtree(plain)
    temporary = set(Path(tempfile.gettempdir()).glob('rqjobs-git-*'))
    dest = clone_path('w-hostile')
    dest.parent.mkdir(parents=True)
    before = tree(tmp_path)

    sha = sync(parse_address(upstream.address), dest)

    assert sha == upstream.shas['head'] == head_commit(dest)
    assert current_branch(dest) == 'main'
    assert not any(marker.exists() for marker in vars(hostile_environment).values())
    link = dest / 'passwd'
    assert link.is_file() and not link.is_symlink() and link.read_text() == '/etc/passwd'
    assert (dest / 'vendor' / 'library').is_dir() and not any((dest / 'vendor' / 'library').iterdir())
    assert not (dest / '.git' / 'modules').exists()
    hooks = dest / '.git' / 'hooks'
    assert not hooks.exists() or not any(hooks.iterdir())  # no template was copied
    assert (dest / 'README.md').read_text() == 'hello again\n'
    config = (dest / '.git' / 'config').read_text()
    assert f'url = {upstream.path}' in config and 'filter' not in config
    assert tree(tmp_path, skip=dest) == before  # nothing written outside the clone ...
    assert set(Path(tempfile.gettempdir()).glob('rqjobs-git-*')) == temporary  # ... and the askpass home is gone


def test_clone_of_a_branch(local, upstream):
    dest = clone_path('w-dev')
    assert sync(upstream.address, dest, 'dev') == upstream.shas['dev']
    assert current_branch(dest) == 'dev'
    assert (dest / 'dev.txt').read_text() == 'dev\n'


def test_clone_reports_progress(local, upstream):
    reports = []
    sync(upstream.address, clone_path('w-progress'), progress=lambda stage, percent: reports.append((stage, percent)))
    assert ('Receiving objects', 100) in reports
    assert all(isinstance(stage, str) and 0 <= percent <= 100 for stage, percent in reports)


def test_bad_branch_names_and_credentials_never_reach_git(local, upstream, started):
    for branch in ('--upload-pack=touch /tmp/x', '-b', 'a..b', 'HEAD', 'x\ny', 'feature/.hidden', 'x.lock', ''):
        with pytest.raises(InvalidRepositoryAddress, match='Branch name'):
            sync(upstream.address, clone_path('w-branch'), branch)
    with pytest.raises(InvalidRepositoryAddress, match='line breaks') as info:
        sync(upstream.address, clone_path('w-branch'), username='alice', password=f'{SECRET}\nUsername=x')
    assert SECRET not in str(info.value)
    assert started == []


def test_a_clone_is_written_beside_its_place_and_moved_in_whole(local, upstream):
    dest = clone_path('w-partial')
    seen = []
    sync(
        upstream.address,
        dest,
        progress=lambda stage, percent: seen.append((dest.exists(), partial_path(dest).exists())),
    )
    assert seen and all(state == (False, True) for state in seen)  # while git works, only <id>.partial exists
    assert head_commit(dest) == upstream.shas['head'] and not partial_path(dest).exists()


def test_a_clone_left_by_a_killed_worker_is_started_afresh(local, upstream):
    dest = clone_path('w-left')
    partial = partial_path(dest)
    run_git(upstream.path.parent, 'clone', '-q', '--no-checkout', str(upstream.path), str(partial))
    (partial / 'stale.txt').write_text('from the killed try\n')
    dest.mkdir()  # and a directory without .git where the clone belongs
    assert sync(upstream.address, dest) == upstream.shas['head']
    assert not (dest / 'stale.txt').exists() and not partial.exists()


def test_remove_clone_takes_the_unfinished_clone_too(local, upstream):
    dest = clone_path('w-both')
    sync(upstream.address, dest)
    partial_path(dest).mkdir()
    assert remove_clone(dest) is True
    assert not dest.exists() and not partial_path(dest).exists()
    assert remove_clone(dest) is False


def test_sync_refuses_a_destination_outside_repo_root(local, upstream, tmp_path):
    with pytest.raises(ValueError, match='REPO_ROOT'):
        sync(upstream.address, tmp_path / 'elsewhere')
    assert not (tmp_path / 'elsewhere').exists()


# ---------------------------------------------------------------------------------------------------------------------
# Fetching: new commits, force-pushes, history
# ---------------------------------------------------------------------------------------------------------------------


def test_fetch_follows_new_commits_and_force_pushes(local, upstream):
    dest = clone_path('w-fetch')
    first = sync(upstream.address, dest)
    new = commit_files(
        upstream.path, {'README.md': 'changed\n', 'docs/new.md': 'new\n', 'docs/guide.md': None}, 'Third commit'
    )
    assert sync(upstream.address, dest) == new == head_commit(dest)
    assert is_ancestor(dest, first, new) and has_commit(dest, first)
    assert changed_paths(dest, first, new) == {'README.md': 'M', 'docs/new.md': 'A', 'docs/guide.md': 'D'}
    assert changed_paths(dest, new, new) == {}

    # Upstream rewrites history; meanwhile someone dirtied the clone.
    run_git(upstream.path, 'reset', '-q', '--hard', upstream.shas['initial'])
    forced = commit_files(upstream.path, {'forced.txt': 'forced\n'}, 'Rewritten history')
    (dest / 'README.md').write_text('dirty\n')
    (dest / 'untracked.txt').write_text('junk\n')
    assert sync(upstream.address, dest) == forced == head_commit(dest)
    assert is_ancestor(dest, new, forced) is False
    assert changed_paths(dest, new, forced) is None
    assert changed_paths(dest, '0' * 40, forced) is None
    assert (dest / 'forced.txt').exists() and not (dest / 'docs' / 'new.md').exists()
    assert not (dest / 'untracked.txt').exists() and (dest / 'README.md').read_text() == 'hello\n'
    assert current_branch(dest) == 'main'


def test_fetch_runs_no_hook_even_one_inside_the_clone(local, upstream, tmp_path, started):
    dest = clone_path('w-hooks')
    sync(upstream.address, dest)
    marker = tmp_path / 'CLONE-HOOK-RAN'
    (dest / '.git' / 'hooks').mkdir(exist_ok=True)
    for name in ('post-checkout', 'reference-transaction', 'post-index-change', 'fsmonitor-watchman'):
        hook = dest / '.git' / 'hooks' / name
        hook.write_text(f'#!/bin/sh\ntouch {marker}\n')
        hook.chmod(0o755)
    new = commit_files(upstream.path, {'more.md': 'more\n'}, 'More')
    assert sync(upstream.address, dest) == new
    assert not marker.exists()
    config = [
        {
            record.env[f'GIT_CONFIG_KEY_{i}']: record.env[f'GIT_CONFIG_VALUE_{i}']
            for i in range(int(record.env['GIT_CONFIG_COUNT']))
        }
        for record in started
    ]
    expected = {
        'core.hooksPath': os.devnull,
        'core.symlinks': 'false',
        'core.fsmonitor': 'false',
        'credential.helper': '',
        'submodule.recurse': 'false',
        'protocol.allow': 'never',
        'protocol.file.allow': 'always',
        'protocol.ext.allow': 'never',
        'filter.lfs.smudge': '',
        'filter.lfs.process': '',
        'filter.lfs.required': 'false',
        'transfer.fsckObjects': 'true',
        'fetch.fsckObjects': 'true',
        'init.templateDir': '',
        'http.lowSpeedLimit': '1000',
    }
    for entries, record in zip(config, started, strict=True):
        assert entries.items() >= expected.items()
        assert record.env['GIT_ALLOW_PROTOCOL'] == 'file' and record.env['GIT_LFS_SKIP_SMUDGE'] == '1'
    assert config[1]['safe.directory'] == str(dest)


def test_fetch_switches_branch(local, upstream):
    dest = clone_path('w-switch')
    sync(upstream.address, dest)
    assert sync(upstream.address, dest, 'dev') == upstream.shas['dev']
    assert current_branch(dest) == 'dev' and (dest / 'dev.txt').exists()
    assert sync(upstream.address, dest) == upstream.shas['dev']  # None keeps the clone's branch


def test_recent_commits(local, upstream):
    dest = clone_path('w-history')
    sync(upstream.address, dest)
    newest, older = recent_commits(dest, limit=2)
    assert newest == {
        'sha': upstream.shas['second'],
        'title': 'Second commit',
        'description': 'Longer description.\n\nWith two paragraphs.',
        'author': 'Ada Lovelace',
        'committed_at': datetime(2024, 3, 1, 10, 0),
    }
    assert (older['sha'], older['title'], older['description']) == (
        upstream.shas['submodule'],
        'Add the library as a submodule',
        '',
    )
    assert [c['sha'] for c in recent_commits(dest)] == [upstream.shas[k] for k in ('second', 'submodule', 'initial')]
    assert [c['sha'] for c in recent_commits(dest, since=upstream.shas['initial'])] == [
        upstream.shas['second'],
        upstream.shas['submodule'],
    ]
    assert recent_commits(dest, since=upstream.shas['second']) == []
    assert [c['sha'] for c in recent_commits(dest, limit=1, since='f' * 40)] == [upstream.shas['second']]
    assert recent_commits(dest, limit=0) == []


def test_reading_ignores_inherited_git_variables(local, upstream, tmp_path, monkeypatch):
    dest = clone_path('w-leak')
    sync(upstream.address, dest)
    other = tmp_path / 'other'
    other.mkdir()
    run_git(other, 'init', '-q')
    other_sha = commit_files(other, {'x': 'x'}, 'Other')
    monkeypatch.setenv('GIT_DIR', str(other / '.git'))
    monkeypatch.setenv('GIT_INDEX_FILE', str(other / '.git' / 'index'))
    monkeypatch.setenv('GIT_OBJECT_DIRECTORY', str(other / '.git' / 'objects'))
    assert head_commit(dest) == upstream.shas['head'] != other_sha
    assert has_commit(dest, other_sha) is False
    new = commit_files(upstream.path, {'more.txt': 'more\n'}, 'More')
    assert sync(upstream.address, dest) == new
    assert changed_paths(dest, upstream.shas['head'], new) == {'more.txt': 'A'}
    assert recent_commits(dest, limit=1)[0]['sha'] == new
    assert run_git(other, 'rev-parse', 'HEAD') == other_sha
    monkeypatch.setenv('GIT_WORK_TREE', str(other))
    assert head_commit(dest) == new and recent_commits(dest, limit=1)[0]['sha'] == new
    # GitPython's Repo would read another repository's refs: refused loudly rather than answered wrongly.
    monkeypatch.setenv('GIT_COMMON_DIR', str(other / '.git'))
    with pytest.raises(GitError, match='GIT_COMMON_DIR'):
        recent_commits(dest)


def test_reading_needs_a_clone_and_takes_only_shas(local, upstream, tmp_path):
    for read in (head_commit, current_branch, recent_commits, lambda path: has_commit(path, 'f' * 40)):
        with pytest.raises(RepositoryNotFound, match='no git clone'):
            read(tmp_path / 'nothing')
    dest = clone_path('w-shas')
    sync(upstream.address, dest)
    initial, head = upstream.shas['initial'], upstream.shas['head']
    assert has_commit(dest, initial.upper()) and has_commit(dest, initial[:12])
    for bad in ('--all', 'HEAD', 'main', f'{initial}^', '', None):
        assert has_commit(dest, bad) is False
        assert is_ancestor(dest, bad, head) is False and is_ancestor(dest, initial, bad) is False
        assert changed_paths(dest, bad, head) is None
    assert [c['sha'] for c in recent_commits(dest, limit=1, since='--all')] == [head]


# ---------------------------------------------------------------------------------------------------------------------
# Missing repositories and branches
# ---------------------------------------------------------------------------------------------------------------------


def test_missing_repository_or_branch_is_not_found(local, upstream):
    gone = clone_path('w-gone')
    with pytest.raises(RepositoryNotFound, match='branch'):
        sync(upstream.address, gone, 'no-such-branch')
    assert not gone.exists()

    dest = clone_path('w-kept')
    sync(upstream.address, dest)
    with pytest.raises(RepositoryNotFound, match='no-such-branch'):
        sync(upstream.address, dest, 'no-such-branch')
    assert head_commit(dest) == upstream.shas['head']  # a failed fetch keeps the clone

    shutil.rmtree(upstream.path)
    with pytest.raises(RepositoryNotFound) as info:
        sync(upstream.address, dest)
    assert str(upstream.path) in str(info.value) and 'not found' in str(info.value)
    assert head_commit(dest) == upstream.shas['head']
    with pytest.raises(RepositoryNotFound, match='does not exist'):
        sync(upstream.address, gone)
    assert not gone.exists()


# ---------------------------------------------------------------------------------------------------------------------
# Caps: size and time
# ---------------------------------------------------------------------------------------------------------------------


def test_a_clone_over_the_size_cap_is_removed(local, tmp_path):
    big = tmp_path / 'upstream' / 'org' / 'big'
    make_repository(big, big_file_mb=3)
    dest = clone_path('w-big')
    with pytest.raises(RepositoryTooLarge, match=r'GIT_MAX_REPO_SIZE \(1 MB on disk\)'):
        sync(str(big), dest, settings=dataclasses.replace(local, git_max_repo_size_mb=1))
    assert not dest.exists() and not partial_path(dest).exists()


def make_many_files(path: Path, count: int) -> Path:
    """Build a repository at `path` of `count` files of a few bytes each, 100 to a directory."""
    path.mkdir(parents=True)
    run_git(path, 'init', '-q')
    for index in range(count):
        directory = path / f'd{index // 100}'
        directory.mkdir(exist_ok=True)
        (directory / f'f{index}.txt').write_text(f'{index}\n')
    run_git(path, 'add', '-A')
    run_git(path, 'commit', '-q', '-m', 'Many small files')
    return path


@pytest.fixture(scope='module')
def many_files(tmp_path_factory) -> Path:
    """A repository of 3,000 files of a few bytes: 20 KB of content, but some 12 MB of disk blocks."""
    return make_many_files(tmp_path_factory.mktemp('upstream') / 'org' / 'many', 3000)


def wait_for_removals() -> None:
    for remover in list(storage._removers):
        remover.wait(timeout=60)


def trash_of(settings) -> list[str]:
    trash = Path(settings.repo_root) / storage.TRASH_DIR
    return sorted(str(path) for path in trash.rglob('*')) if trash.exists() else []


@pytest.mark.parametrize(
    'caps, reason',
    [
        ({'git_max_repo_size_mb': 5}, r'GIT_MAX_REPO_SIZE \(5 MB on disk\)'),
        ({'git_max_repo_files': 1000}, r'GIT_MAX_REPO_FILES \(1000 files\)'),
    ],
)
def test_a_clone_of_many_small_files_is_capped_by_what_it_takes(local, many_files, caps, reason):
    dest = clone_path('w-many')
    settings = dataclasses.replace(local, **caps)
    with pytest.raises(RepositoryTooLarge, match=reason + ' and was stopped; the clone was removed'):
        sync(str(many_files), dest, settings=settings)
    assert not dest.exists() and not partial_path(dest).exists()
    wait_for_removals()
    assert trash_of(settings) == []
    assert [path.name for path in Path(settings.repo_root).iterdir()] == [storage.TRASH_DIR]


def test_the_file_cap_stops_a_clone_while_it_runs(network, many_files, tmp_path, started, monkeypatch):
    monkeypatch.setattr(clone, 'SIZE_POLL_INTERVAL', 0.05)
    bare = tmp_path / 'srv' / 'org' / 'repo.git'
    run_git(tmp_path, 'clone', '-q', '--bare', '--no-local', str(many_files), str(bare))
    # Loose objects, which dumb HTTP fetches one request and one file each: the clone's files grow as it runs.
    packs = tmp_path / 'packs'
    (bare / 'objects' / 'pack').rename(packs)
    (bare / 'objects' / 'pack').mkdir()
    for pack in packs.glob('*.pack'):
        with pack.open('rb') as stream:
            subprocess.run(['git', 'unpack-objects', '-q'], cwd=bare, stdin=stream, check=True)
    run_git(bare, 'update-server-info')
    objects = sum(1 for path in (bare / 'objects').glob('??/*'))
    assert objects > 3000
    dest = clone_path('w-many-http')
    settings = dataclasses.replace(settings_module.get_settings(), git_max_repo_files=300)
    requests: list[str] = []
    with (
        serve_dumb_http(tmp_path / 'srv', hosts=requests) as base,
        pytest.raises(RepositoryTooLarge, match=r'GIT_MAX_REPO_FILES \(300 files\) and was stopped'),
    ):
        sync(http_address(base), dest, settings=settings)
    assert len(requests) < objects / 2  # stopped early, not once git had it all
    assert not dest.exists() and not partial_path(dest).exists()
    assert_groups_dead(started)  # git, and the background removal
    assert trash_of(settings) == []


def test_removing_a_clone_moves_it_away_at_once_and_deletes_it_in_the_background(local, many_files):
    settings = settings_module.get_settings()
    dest = clone_path('w-removed')
    sync(str(many_files), dest)  # under the default caps
    assert len(list((dest / 'd29').iterdir())) == 100
    partial_path(dest).mkdir()
    assert remove_clone(dest) is True
    # Gone from its place when remove_clone returns; the files go in a process of their own, in its own session.
    assert not dest.exists() and not partial_path(dest).exists()
    remover = storage._removers[-1]
    assert remover.args[:3] == [sys.executable, '-c', storage._REMOVER] and remover.pid != os.getpid()
    wait_for_removals()
    assert trash_of(settings) == []
    assert remove_clone(dest) is False


def test_what_a_killed_removal_left_is_removed_later(local, tmp_path):
    settings = settings_module.get_settings()
    root = Path(settings.repo_root)
    # A removal killed half-way: its tree is still in the trash, and no process works on it.
    leftover = root / storage.TRASH_DIR / 'w-old.0123456789ab'
    for index in range(50):
        (leftover / f'd{index % 5}').mkdir(parents=True, exist_ok=True)
        (leftover / f'd{index % 5}' / f'f{index}').write_text('x')
    (root / 'w-next').mkdir()
    (root / 'w-next' / 'file').write_text('x')
    remove_clone(root / 'w-next')
    wait_for_removals()
    assert trash_of(settings) == [] and not (root / 'w-next').exists()
    # Emptied, too, by itself (`jobs cleanup --orphan-clones` does it); an empty trash starts nothing.
    (leftover / 'd0').mkdir(parents=True)
    storage.empty_trash(settings).wait(timeout=60)
    assert trash_of(settings) == []
    assert storage.empty_trash(settings) is None


def test_the_size_cap_kills_a_running_clone(network, tmp_path, started, monkeypatch):
    monkeypatch.setattr(clone, 'SIZE_POLL_INTERVAL', 0.05)
    source = tmp_path / 'source'
    make_repository(source, big_file_mb=4)
    make_bare_for_http(source, tmp_path / 'srv')
    dest = clone_path('w-bigger')
    settings = dataclasses.replace(settings_module.get_settings(), git_max_repo_size_mb=1)
    began = time.monotonic()
    # 4 MB at 64 KB per 50 ms takes over 3 s: the cap must stop it well before.
    with (
        serve_dumb_http(tmp_path / 'srv', throttle=0.05) as base,
        pytest.raises(RepositoryTooLarge, match='was stopped'),
    ):
        sync(http_address(base), dest, settings=settings)
    assert time.monotonic() - began < 2.5
    assert not dest.exists() and not partial_path(dest).exists()
    assert_groups_dead(started)


def test_the_time_cap_kills_a_slow_clone(network, tmp_path, started):
    source = tmp_path / 'source'
    make_repository(source)
    make_bare_for_http(source, tmp_path / 'srv')
    dest = clone_path('w-slow')
    settings = dataclasses.replace(settings_module.get_settings(), git_clone_timeout=1)
    began = time.monotonic()
    with (
        serve_dumb_http(tmp_path / 'srv', delay=0.6) as base,
        pytest.raises(CloneTimeout, match=r'GIT_CLONE_TIMEOUT \(1 s\)'),
    ):
        sync(http_address(base), dest, settings=settings)
    assert time.monotonic() - began < 3
    assert not dest.exists() and not partial_path(dest).exists()
    assert_groups_dead(started)


# ---------------------------------------------------------------------------------------------------------------------
# Credentials over HTTP
# ---------------------------------------------------------------------------------------------------------------------


def test_credentials_reach_git_only_through_the_askpass_environment(network, tmp_path, started, caplog):
    caplog.set_level('DEBUG')
    network.setenv('GIT_SSL_NO_VERIFY', '1')
    source = tmp_path / 'source'
    shas = make_repository(source)
    make_bare_for_http(source, tmp_path / 'srv')
    with serve_dumb_http(tmp_path / 'srv', credentials=('alice', SECRET)) as base:
        dest = clone_path('w-private')
        assert sync(http_address(base, 'alice', SECRET), dest) == shas['head']
        assert sync(http_address(base), dest, username='alice', password=SECRET) == shas['head']  # a fetch

        failures = []
        for username, password in (('alice', 'wrong-password'), (None, None)):
            began = time.monotonic()
            with pytest.raises(RepositoryUnauthorized) as info:
                sync(http_address(base, username, password), clone_path('w-denied'))
            assert time.monotonic() - began < 10  # no prompt waits for a terminal
            assert not clone_path('w-denied').exists()
            failures.append(str(info.value))

    assert f'{base}/org/repo.git' in failures[0] and 'Authentication failed' in failures[0]
    assert 'could not read Username' in failures[1]
    config = (dest / '.git' / 'config').read_text()
    assert f'url = {base}/org/repo.git' in config
    assert len(started) == 6  # clone; fetch, checkout, clean; the two refused clones
    for record in started:
        assert record.args[:2] == ['git', record.args[1]]
        assert not any(SECRET in arg for arg in record.args)
        assert [key for key, value in record.env.items() if SECRET in value] in ([], ['RQJOBS_GIT_PASSWORD'])
        assert not Path(record.env['GIT_ASKPASS']).exists()  # the helper's private directory is gone
        assert 'GIT_SSL_NO_VERIFY' not in record.env  # nothing inherited
    clone = started[0].args
    assert clone[-3:] == ['--', f'{base}/org/repo.git', str(partial_path(dest))]
    assert started[0].env['RQJOBS_GIT_PASSWORD'] == SECRET and started[0].env['GIT_TERMINAL_PROMPT'] == '0'
    for text in (*failures, caplog.text, config):
        assert SECRET not in text


def test_credentials_are_not_given_to_another_host_after_a_redirect(network, tmp_path):
    source = tmp_path / 'source'
    make_repository(source)
    make_bare_for_http(source, tmp_path / 'srv')
    seen: list[str] = []
    with (
        serve_dumb_http(tmp_path / 'srv', credentials=('alice', SECRET), redirect_to_localhost=True, seen=seen) as base,
        pytest.raises(RepositoryUnauthorized, match="could not read Username for 'http://localhost"),
    ):
        sync(http_address(base, 'alice', SECRET), clone_path('w-redirected'))
    secret_header = base64.b64encode(f'alice:{SECRET}'.encode()).decode()
    assert not any(secret_header in header for header in seen)


def test_a_missing_repository_over_http_is_not_found(network, tmp_path):
    (tmp_path / 'srv').mkdir()
    with serve_dumb_http(tmp_path / 'srv') as base, pytest.raises(RepositoryNotFound, match='not found'):
        sync(http_address(base), clone_path('w-404'))


# ---------------------------------------------------------------------------------------------------------------------
# Hosts: public only, and git held to the addresses checked
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    'url',
    [
        'http://127.0.0.1:9/org/repo.git',
        'http://localhost:9/org/repo.git',
        'https://10.1.2.3/org/repo.git',
        'https://192.168.0.10/org/repo.git',
        'https://169.254.169.254/org/repo.git',  # cloud metadata services
        'https://100.64.0.1/org/repo.git',  # shared address space
        'https://0.0.0.0/org/repo.git',
        'https://224.0.0.1/org/repo.git',
        'https://[::1]/org/repo.git',
        'https://[fd00::1]/org/repo.git',
        'https://[::ffff:127.0.0.1]/org/repo.git',
    ],
)
def test_hosts_that_are_not_public_are_refused_before_git_runs(env, started, url):
    address = RepoAddress(url=url, organization='org', name='repo')
    with pytest.raises(InvalidRepositoryAddress, match='not a public address') as info:
        sync(address, clone_path('w-private-host'))
    assert 'GIT_ALLOW_PRIVATE_HOSTS=true' in str(info.value)
    assert started == [] and not clone_path('w-private-host').exists()


def test_a_host_that_cannot_be_resolved_is_a_retryable_error(env, started):
    address = parse_address('https://no-such-host.rqjobs.invalid/org/repo.git')
    with pytest.raises(GitError, match='cannot be resolved') as info:
        sync(address, clone_path('w-unresolved'))
    assert not isinstance(info.value, InvalidRepositoryAddress)  # DNS may come back: a retry may work
    assert started == []


def test_public_hosts_pass_and_proxied_ones_are_left_to_the_proxy(env, monkeypatch):
    monkeypatch.setattr(
        addresses,
        '_getaddrinfo',
        lambda host, port, **_: [
            (socket.AF_INET, socket.SOCK_STREAM, 6, '', ('140.82.121.4', port)),
            (socket.AF_INET6, socket.SOCK_STREAM, 6, '', ('2606:50c0:8000::154', port, 0, 0)),
        ],
    )
    endpoint = addresses.check_host(parse_address('https://github.com/org/repo'))
    assert endpoint == addresses.Endpoint('https', 'github.com', 443, ('140.82.121.4', '2606:50c0:8000::154'))
    assert runner._pin_config(endpoint, guarded=True) == [
        ('http.curloptResolve', 'github.com:443:140.82.121.4,[2606:50c0:8000::154]'),
        ('http.followRedirects', 'false'),
    ]
    assert addresses.check_host(parse_address('https://[2606:50c0:8000::154]:8443/org/repo')).addresses == ()

    monkeypatch.setenv('https_proxy', 'http://proxy.internal:3128')
    monkeypatch.setattr(addresses, '_getaddrinfo', _no_dns)
    assert addresses.check_host(parse_address('https://github.com/org/repo')).addresses == ()
    monkeypatch.setenv('no_proxy', 'github.com')
    with pytest.raises(GitError, match='cannot be resolved'):
        addresses.check_host(parse_address('https://github.com/org/repo'))


def _no_dns(host, port, **_):
    raise socket.gaierror(socket.EAI_NONAME, 'Name or service not known')


def test_git_connects_to_the_address_checked_not_to_a_second_lookup(env, tmp_path, monkeypatch):
    source = tmp_path / 'source'
    shas = make_repository(source)
    make_bare_for_http(source, tmp_path / 'srv')
    # The name has no DNS entry (.test is reserved): git can only reach the server through the checked address.
    monkeypatch.setattr(
        addresses,
        '_getaddrinfo',
        lambda host, port, **_: (
            [(socket.AF_INET, socket.SOCK_STREAM, 6, '', ('127.0.0.1', port))]
            if host == 'git.rqjobs.test'
            else _no_dns(host, port)
        ),
    )
    monkeypatch.setattr(addresses, '_is_public', lambda ip: True)  # the test server is on loopback
    hosts: list[str] = []
    with serve_dumb_http(tmp_path / 'srv', redirect_to_localhost=True, hosts=hosts) as base:
        port = base.rsplit(':', 1)[1]
        named = RepoAddress(url=f'http://git.rqjobs.test:{port}/org/repo.git', organization='org', name='repo')
        dest = clone_path('w-pinned')
        assert sync(named, dest) == shas['head']
        assert hosts and set(hosts) == {f'git.rqjobs.test:{port}'}
        # With the guard on, a redirect (to a host nothing checked) is not followed.
        hosts.clear()
        with pytest.raises(InvalidRepositoryAddress, match=r'redirects \(HTTP 301\).*not followed'):
            sync(http_address(base), clone_path('w-redirect-refused'))
        assert hosts == [f'127.0.0.1:{port}']
    assert not clone_path('w-redirect-refused').exists()


def test_ssh_hosts_are_checked_and_ssh_is_held_to_the_address(env, started, monkeypatch):
    env.setenv('GIT_ALLOW_SSH', 'true')
    settings_module.reset()
    for url in (
        'git@127.0.0.1:org/repo.git',
        'ssh://git@[::1]:2222/org/repo.git',
        'git@localhost:org/repo.git',
        'git@[::1]:org/repo.git',
    ):
        with pytest.raises(InvalidRepositoryAddress, match='not a public address'):
            sync(url, clone_path('w-ssh'))
    assert started == []
    monkeypatch.setattr(
        addresses,
        '_getaddrinfo',
        lambda host, port, **_: [(socket.AF_INET, socket.SOCK_STREAM, 6, '', ('140.82.121.4', port))],
    )
    endpoint = addresses.check_host(parse_address('git@github.com:org/repo.git'))
    assert endpoint == addresses.Endpoint('ssh', 'github.com', 22, ('140.82.121.4',))
    for url, host in (
        ('git@[2606:50c0:8000::154]:org/repo.git', '2606:50c0:8000::154'),
        ('ssh://git@github.com:2222/org/repo.git', 'github.com'),
    ):
        assert addresses._endpoint(parse_address(url)).host == host
    env_of_git = runner.git_environment(
        home=Path('/nonexistent'),
        ceiling=Path('/'),
        repo=None,
        protocols=('ssh',),
        ssh=True,
        endpoint=endpoint,
        guarded=True,
    )
    assert env_of_git['GIT_SSH_COMMAND'].endswith(' -oHostName=140.82.121.4 -oHostKeyAlias=github.com')


def test_a_private_address_written_as_such_is_refused_at_submission(env):
    for url in (
        'https://10.0.0.7:3000/org/repo',
        'https://[fe80::1]/org/repo',
        'https://localhost/org/repo',
        'https://git.localhost/org/repo',
    ):
        with pytest.raises(InvalidRepositoryAddress, match='not a public address'):
            parse_address(url)
    env.setenv('GIT_ALLOW_PRIVATE_HOSTS', 'true')
    settings_module.reset()
    assert parse_address('https://10.0.0.7:3000/org/repo').url == 'https://10.0.0.7:3000/org/repo.git'


# An internal IPv4 address (the metadata service, loopback, a private network) carried by each standard IPv6
# embedding: a NAT64 translator, 6to4 or Teredo relay or ISATAP tunnel on the path leads git to it.
INTERNAL_IN_IPV6 = [
    # IPv4-mapped ::ffff:0:0/96 and SIIT ::ffff:0:0:0/96
    '::ffff:169.254.169.254',
    '::ffff:7f00:1',
    '::ffff:0:a00:1',
    '::ffff:0:c0a8:101',
    # IPv4-compatible ::/96
    '::a9fe:a9fe',
    '::127.0.0.1',
    '::10.1.2.3',
    # NAT64 well-known prefix 64:ff9b::/96
    '64:ff9b::a9fe:a9fe',
    '64:ff9b::127.0.0.1',
    '64:ff9b::10.0.0.1',
    '64:ff9b::192.168.1.1',
    '64:ff9b::100.64.0.1',
    # NAT64 local-use 64:ff9b:1::/48, at the place of each prefix length (/96, /64, /56, /48)
    '64:ff9b:1::a9fe:a9fe',
    '64:ff9b:1:0:a9:fea9:fe00:0',
    '64:ff9b:1:a9:fe:a9fe::',
    '64:ff9b:1:a9fe:a9:fe00::',
    # 6to4 2002::/16
    '2002:a9fe:a9fe::1',
    '2002:7f00:1::',
    '2002:a00:1:1::1',
    '2002:c0a8:101::1',
    # Teredo 2001::/32: the server, and the client (stored inverted)
    '2001:0:a9fe:a9fe::f7f7:f7f7',
    '2001:0:808:808:0:0:f5ff:fffe',
    '2001:0:808:808::80ff:fffe',
    # ISATAP interface ids ::5efe:a.b.c.d and ::200:5efe:a.b.c.d under any /64
    '2a00:1450:4001:81c::5efe:a9fe:a9fe',
    '2606:4700::200:5efe:7f00:1',
    '2a00:1450:4001:81c::5efe:10.0.0.1',
    '2606:4700::300:5efe:192.168.0.1',
]
PUBLIC_IN_IPV6 = ['64:ff9b::808:808', '2002:808:808::1', '2606:4700::5efe:808:808', '2606:50c0:8000::154']


@pytest.mark.parametrize('ip', INTERNAL_IN_IPV6)
def test_an_ipv6_address_carrying_an_internal_ipv4_address_is_refused(env, started, monkeypatch, ip):
    env.setenv('GIT_ALLOW_SSH', 'true')
    settings_module.reset()
    url = f'https://[{ip}]/org/repo.git'
    for given in (url, f'https://[{ip}]:8443/org/repo', f'ssh://git@[{ip}]/org/repo.git', f'git@[{ip}]:org/repo.git'):
        with pytest.raises(InvalidRepositoryAddress, match='not a public address'):
            parse_address(given)
    with pytest.raises(InvalidRepositoryAddress, match='not a public address'):
        addresses.check_host(RepoAddress(url=url, organization='org', name='repo'))
    # The same address given by a name's DNS answer.
    monkeypatch.setattr(
        addresses,
        '_getaddrinfo',
        lambda host, port, **_: [(socket.AF_INET6, socket.SOCK_STREAM, 6, '', (ip, port, 0, 0))],
    )
    with pytest.raises(InvalidRepositoryAddress, match='not a public address'):
        sync('https://git.example.com/org/repo.git', clone_path('w-embedded'))
    assert started == []


@pytest.mark.parametrize('ip', PUBLIC_IN_IPV6)
def test_an_ipv6_address_carrying_a_public_ipv4_address_passes(env, monkeypatch, ip):
    address = parse_address(f'https://[{ip}]/org/repo')
    assert addresses.check_host(address).host == ip
    monkeypatch.setattr(
        addresses,
        '_getaddrinfo',
        lambda host, port, **_: [(socket.AF_INET6, socket.SOCK_STREAM, 6, '', (ip, port, 0, 0))],
    )
    assert addresses.check_host(parse_address('https://git.example.com/org/repo')).addresses == (ip,)


@pytest.mark.parametrize(
    'host, meant',
    [
        ('2852039166', '169.254.169.254'),  # one decimal number
        ('0251.0376.0251.0376', '169.254.169.254'),  # octal
        ('0xa9fea9fe', '169.254.169.254'),  # hexadecimal
        ('0xA9.0xFE.0xA9.0xFE', '169.254.169.254'),
        ('169.254.43518', '169.254.169.254'),  # three parts, the last one 16 bits
        ('169.16689662', '169.254.169.254'),  # two parts
        ('0177.1', '127.0.0.1'),
        ('0x7f.0.0.1', '127.0.0.1'),
        ('012.0.0.1', '10.0.0.1'),
        ('0', '0.0.0.0'),
    ],
)
def test_an_ipv4_address_spelled_oddly_is_judged_by_the_address_it_means(env, started, host, meant):
    env.setenv('GIT_ALLOW_SSH', 'true')
    settings_module.reset()
    for url in (
        f'https://{host}/org/repo.git',
        f'https://{host}:8443/org/repo.git',
        f'ssh://git@{host}/org/repo.git',
        f'git@{host}:org/repo.git',
    ):
        with pytest.raises(InvalidRepositoryAddress, match=rf'(?i){host} is {meant}, not a public address'):
            parse_address(url)
        with pytest.raises(InvalidRepositoryAddress, match='not a public address'):
            sync(RepoAddress(url=url, organization='org', name='repo'), clone_path('w-odd'))
    # Asked without parsing first, the host is still read as the resolver would read it.
    with pytest.raises(InvalidRepositoryAddress, match=rf'is {meant}, not a public address'):
        addresses.check_host(RepoAddress(url=f'https://{host}/org/repo.git', organization='org', name='repo'))
    assert started == []
    # A private network allowed, the spelling is still refused: other tools read these digits otherwise.
    env.setenv('GIT_ALLOW_PRIVATE_HOSTS', 'true')
    settings_module.reset()
    with pytest.raises(InvalidRepositoryAddress, match=rf'spells the IPv4 address {meant}.*write it as {meant}'):
        parse_address(f'https://{host}/org/repo.git')


@pytest.mark.parametrize(
    'host, reason',
    [
        ('0x08080808', 'spells the IPv4 address 8.8.8.8'),
        ('134744072', 'spells the IPv4 address 8.8.8.8'),
        ('08.8.8.8', 'is not a valid IPv4 address'),  # 8 is no octal digit
        ('1.2.3.256', 'is not a valid IPv4 address'),
        ('1.2.3.4.5', 'is not a valid IPv4 address'),
        ('1.16777216', 'is not a valid IPv4 address'),
    ],
)
def test_a_public_ipv4_address_is_only_accepted_as_a_dotted_quad(env, host, reason):
    with pytest.raises(InvalidRepositoryAddress, match=reason):
        parse_address(f'https://{host}/org/repo.git')
    assert parse_address('https://8.8.8.8/org/repo').url == 'https://8.8.8.8/org/repo.git'
    # Names that only look numeric in part stay names.
    for name in ('1e100.net', '0x1.example.com', 'cafe.example.com', '123.example'):
        assert parse_address(f'https://{name}/org/repo').url == f'https://{name}/org/repo.git'
