"""The one way git runs on a clone or an untrusted checkout: a hardened environment and configuration.

Every git process runs with a minimal environment (nothing inherited, no GIT_* variable) and a fixed configuration
that turns off hooks, filters, LFS, submodules, symlinks, stored credentials and prompts, with a protocol allowlist
(none at all for reading commands). Credentials reach git only through the environment of an askpass helper.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rqjobs.exceptions import GitError, RepositoryNotFound

if TYPE_CHECKING:
    import git as gitpython

    from rqjobs.repository.addresses import Endpoint


USERNAME_VARIABLE = 'RQJOBS_GIT_USERNAME'
PASSWORD_VARIABLE = 'RQJOBS_GIT_PASSWORD'
HOST_VARIABLE = 'RQJOBS_GIT_HOST'
_USERINFO = re.compile(r'(?<=://)[^/\s]*@')
# Outside variables a clone may need (a proxy, the ssh agent); every other one, GIT_* included, is dropped.
_PASSED_THROUGH = ('http_proxy', 'https_proxy', 'HTTPS_PROXY', 'no_proxy', 'NO_PROXY', 'all_proxy', 'ALL_PROXY')
_PASSED_THROUGH_SSH = ('SSH_AUTH_SOCK',)
_ASKPASS_SCRIPT = f"""#!/bin/sh
# Answers git's credential prompts from its environment, only for the address's own host; this file holds no secret.
case "$1" in
  *"://${HOST_VARIABLE}'"* | *"@${HOST_VARIABLE}'"*) ;;
  *) exit 1 ;;
esac
case "$1" in
  Username*) value=${USERNAME_VARIABLE} ;;
  *) value=${PASSWORD_VARIABLE} ;;
esac
[ -n "$value" ] || exit 1
printf '%s\\n' "$value"
"""


def git_environment(
    *,
    home: Path,
    ceiling: Path,
    repo: Path | None,
    protocols: Sequence[str],
    askpass: Path | None = None,
    ssh: bool = False,
    endpoint: Endpoint | None = None,
    guarded: bool = False,
) -> dict[str, str]:
    """Return the complete environment of a git process; nothing else is inherited (no GIT_* variable)."""
    env = {
        'PATH': os.environ.get('PATH') or os.defpath,
        'HOME': str(home),
        'LANG': 'C',
        'LC_ALL': 'C',
        'LANGUAGE': 'C',
        'GIT_TERMINAL_PROMPT': '0',
        'GIT_CONFIG_NOSYSTEM': '1',
        'GIT_CONFIG_SYSTEM': os.devnull,
        'GIT_CONFIG_GLOBAL': os.devnull,
        'GIT_LFS_SKIP_SMUDGE': '1',
        'GIT_PROTOCOL_FROM_USER': '0',
        # Empty allows no transport at all: reading commands never need one.
        'GIT_ALLOW_PROTOCOL': ':'.join(protocols),
        'GIT_NO_REPLACE_OBJECTS': '1',
        'GIT_CEILING_DIRECTORIES': str(ceiling),
    }
    env.update({name: os.environ[name] for name in _PASSED_THROUGH if name in os.environ})
    if repo is not None:
        # Explicit, so that git never discovers some other repository above a damaged clone.
        env['GIT_DIR'] = str(repo / '.git')
        env['GIT_WORK_TREE'] = str(repo)
    if askpass is not None:
        env['GIT_ASKPASS'] = env['SSH_ASKPASS'] = str(askpass)
    if ssh:
        env['GIT_SSH_COMMAND'] = 'ssh -oBatchMode=yes -oStrictHostKeyChecking=yes'
        if endpoint is not None and endpoint.addresses:
            # Connect to the address checked; the host key is still looked up under the host's name.
            env['GIT_SSH_COMMAND'] += f' -oHostName={endpoint.addresses[0]} -oHostKeyAlias={endpoint.host}'
        env.update({name: os.environ[name] for name in _PASSED_THROUGH_SSH if name in os.environ})
    config = _config(repo, protocols, askpass) + _pin_config(endpoint, guarded)
    env['GIT_CONFIG_COUNT'] = str(len(config))
    for index, (key, value) in enumerate(config):
        env[f'GIT_CONFIG_KEY_{index}'] = key
        env[f'GIT_CONFIG_VALUE_{index}'] = value
    return env


def _config(repo: Path | None, protocols: Sequence[str], askpass: Path | None) -> list[tuple[str, str]]:
    """Return the configuration every git process runs with, passed in the environment to keep it out of argv."""
    config = [
        ('core.hooksPath', os.devnull),
        ('core.symlinks', 'false'),
        ('core.fsmonitor', 'false'),
        ('core.askPass', str(askpass) if askpass else ''),
        ('credential.helper', ''),
        ('submodule.recurse', 'false'),
        ('fetch.recurseSubmodules', 'false'),
        ('protocol.allow', 'never'),
        ('protocol.ext.allow', 'never'),
        ('protocol.file.allow', 'always' if 'file' in protocols else 'never'),
        *[(f'protocol.{name}.allow', 'always') for name in protocols if name != 'file'],
        ('http.lowSpeedLimit', '1000'),
        ('http.lowSpeedTime', '60'),
        ('filter.lfs.smudge', ''),
        ('filter.lfs.clean', ''),
        ('filter.lfs.process', ''),
        ('filter.lfs.required', 'false'),
        ('transfer.fsckObjects', 'true'),
        ('fetch.fsckObjects', 'true'),
        ('advice.detachedHead', 'false'),
        ('init.templateDir', ''),
        # A detached `gc --auto` would call setsid() and outlive the process group that the caps kill.
        ('gc.auto', '0'),
        ('gc.autoDetach', 'false'),
        ('maintenance.auto', 'false'),
    ]
    if repo is not None:
        config.append(('safe.directory', str(repo)))
    return config


def _pin_config(endpoint: Endpoint | None, guarded: bool) -> list[tuple[str, str]]:
    """Return the configuration that holds git's HTTP connections to the checked addresses."""
    config = []
    if endpoint is not None and endpoint.addresses and endpoint.protocol in ('http', 'https'):
        shown = ','.join(f'[{ip}]' if ':' in ip else ip for ip in endpoint.addresses)
        config.append(('http.curloptResolve', f'{endpoint.host}:{endpoint.port}:{shown}'))
    if guarded:
        # A redirect names another host, which nothing checked: refused, as the address would be.
        config.append(('http.followRedirects', 'false'))
    return config


@contextlib.contextmanager
def private_home() -> Iterator[tuple[Path, Path]]:
    """Yield a private empty HOME and the askpass helper in it; both are removed afterwards."""
    home = Path(tempfile.mkdtemp(prefix='rqjobs-git-'))
    try:
        askpass = home / 'askpass'
        fd = os.open(askpass, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o700)
        with os.fdopen(fd, 'w') as script:
            script.write(_ASKPASS_SCRIPT)
        yield home, askpass
    finally:
        shutil.rmtree(home, ignore_errors=True)


@functools.cache
def _gitpython() -> tuple[type[gitpython.Git], type[gitpython.Repo]]:
    """Return GitPython `Git` and `Repo` classes whose every git command runs in the hardened environment."""
    # GitPython runs `git version` when imported, so it is imported on first use rather than with this module.
    import git

    class HardenedGit(git.Git):
        """GitPython's command runner, with the environment replaced rather than merged into os.environ."""

        def execute(self, command: Any, *args: Any, **kwargs: Any) -> Any:
            if isinstance(command, str) or self._working_dir is None:
                raise TypeError('hardened git runs argument lists inside a clone only')
            kwargs.pop('env', None)
            repo = Path(self._working_dir)
            env = git_environment(home=repo.parent, ceiling=repo.parent, repo=repo, protocols=())
            # GitPython copies os.environ into every child; `env -i` starts git from exactly our environment.
            # The assignments are public configuration: nothing secret ever reaches these reading commands.
            prefix = [_env_program(), '-i', *(f'{key}={value}' for key, value in env.items())]
            return super().execute([*prefix, *command], *args, **kwargs)

    class HardenedRepo(git.Repo):
        GitCommandWrapperType = HardenedGit

    return HardenedGit, HardenedRepo


@functools.cache
def _env_program() -> str:
    return shutil.which('env') or '/usr/bin/env'


def clone_dir(dest: Path | str) -> Path:
    path = Path(dest).absolute()
    if not (path / '.git').is_dir():
        raise RepositoryNotFound(f'There is no git clone at {path}.')
    return path


@contextlib.contextmanager
def open_repo(dest: Path | str) -> Iterator[gitpython.Repo]:
    import git

    path = clone_dir(dest)
    try:
        repo = _gitpython()[1](path)
    except (git.NoSuchPathError, git.InvalidGitRepositoryError):
        raise RepositoryNotFound(f'There is no git clone at {path}.') from None
    try:
        # GitPython's Repo reads GIT_WORK_TREE and GIT_COMMON_DIR from os.environ: never read another repository.
        if (
            Path(repo.working_tree_dir or '/').resolve() != path.resolve()
            or Path(repo.common_dir).resolve() != (path / '.git').resolve()
        ):
            raise GitError(
                f'The clone at {path} resolves to another repository; unset GIT_WORK_TREE and '
                f'GIT_COMMON_DIR in the worker environment.'
            )
        yield repo
    finally:
        repo.close()


def read(dest: Path | str, *args: str, binary: bool = False, timeout: float | None = None) -> str | bytes:
    """Run one reading git command in the clone, in the hardened environment, and return its output.

    Every reading git command on a clone or an untrusted checkout goes through here, and clone and fetch run in
    `git_environment` too, so one policy decides what git may read: nothing of the worker's environment or
    configuration, no hook, and no transport but the one a clone or fetch is given.
    """
    path = clone_dir(dest)
    env = git_environment(home=path.parent, ceiling=path.parent, repo=path, protocols=())
    # A plain subprocess rather than GitPython's runner: importing GitPython runs `git version` in the worker's own
    # environment, and a reading command needs nothing GitPython adds.
    try:
        result = subprocess.run(
            ['git', *args],
            cwd=path,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise GitError(f'git {args[0]} ran past {timeout:g} s in {dest}') from None
    if result.returncode != 0:
        stderr = result.stderr.decode('utf-8', 'replace').splitlines()
        raise GitError(f'git {args[0]} failed in {dest}: {last_line(stderr, ())}')
    output = result.stdout.removesuffix(b'\n')  # as GitPython gave it
    return output if binary else output.decode('utf-8', 'replace')


def succeeds(dest: Path | str, *args: str) -> bool:
    """Run one git command in the clone that answers by its exit status."""
    try:
        read(dest, *args)
    except RepositoryNotFound:
        raise
    except GitError:
        return False
    return True


def last_line(lines: Sequence[str], secrets: Sequence[str]) -> str:
    """Return the line that best says what went wrong: the last fatal, else the last error, else the last line."""
    for prefix in ('fatal:', 'error:', ''):
        for line in reversed(lines):
            if line.lower().startswith(prefix) and line.strip():
                return redact(line.strip(), secrets)[:500]
    return 'git gave no message'


def redact(line: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        line = line.replace(secret, '***')
    return _USERINFO.sub('***@', line)
