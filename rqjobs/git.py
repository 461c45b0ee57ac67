"""Safe git: check untrusted repository addresses, clone and fetch them in a hardened git, read their history.

Repositories and their addresses come from users. An address is checked before git sees it. Every git process runs
with a minimal environment and a fixed configuration that turn off hooks, filters, LFS, submodules, symlinks, stored
credentials and prompts. A clone or fetch runs in its own process group under a time cap and caps on the disk and
the files it takes, and is killed whole when it passes one; what it wrote is removed in the background. Credentials
reach git only through the environment of an askpass helper: never argv, the URL given to git, `.git/config`, logs
or exception messages.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import ipaddress
import logging
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unicodedata
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import SplitResult, unquote, urlsplit

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from rqjobs import limits
from rqjobs.exceptions import (
    CloneTimeout,
    GitError,
    InvalidRepositoryAddress,
    RepositoryNotFound,
    RepositoryTooLarge,
    RepositoryUnauthorized,
    SecretKeyMissing,
)
from rqjobs.settings import Settings, get_settings

if TYPE_CHECKING:
    import git as gitpython

logger = logging.getLogger(__name__)

MAX_ADDRESS_LENGTH = 2048
# A lone `token@` in an https address is a token; git hosts accept a token with any username, GitLab wants this one.
LONE_TOKEN_USERNAME = 'oauth2'
ENCRYPTED_PREFIX = 'fernet:'
# How often a running clone or fetch has its disk usage measured against GIT_MAX_REPO_SIZE and GIT_MAX_REPO_FILES,
# in seconds at least; a measure that takes long (many files) is spaced out to keep the measuring under a fifth.
SIZE_POLL_INTERVAL = 0.5
SIZE_POLL_SHARE = 5
MEGABYTE = 1024 * 1024
STDERR_LINES_KEPT = 50
PARTIAL_SUFFIX = '.partial'  # a clone in progress; a warehouse id never holds a dot
TRASH_DIR = '.trash'  # REPO_ROOT/.trash: what is being removed in the background
# Removes the trees named in argv; run apart from the worker, so that removing a million files blocks no job.
_removers: list[subprocess.Popen] = []  # the removals started by this process that may still run
_REMOVER = 'import shutil, sys\nfor path in sys.argv[1:]:\n    shutil.rmtree(path, ignore_errors=True)\n'
USERNAME_VARIABLE = 'RQJOBS_GIT_USERNAME'
PASSWORD_VARIABLE = 'RQJOBS_GIT_PASSWORD'
HOST_VARIABLE = 'RQJOBS_GIT_HOST'

_HKDF_INFO = b'rqjobs git credentials v1'
_EXAMPLE = 'https://github.com/org/repo.git'
_SEGMENT = re.compile(r'[A-Za-z0-9_][A-Za-z0-9._-]*')
_HOST_LABEL = re.compile(r'(?!-)[A-Za-z0-9-]{1,63}(?<!-)')
# A part of an IPv4 address as inet_aton reads it: decimal, octal (leading 0) or hexadecimal (0x).
_IPV4_PART = re.compile(r'0[xX][0-9A-Fa-f]*|[0-9]+')
_SSH_USER = re.compile(r'[A-Za-z0-9_][A-Za-z0-9._-]{0,63}')
_SCP_LIKE = re.compile(r'(?:(?P<user>[^@/:\[\]]+)@)?(?P<host>\[[^\]/@]*\]|[^:/@\[\]]+):(?P<path>.+)')
# An IPv6 host like [::1] is the one place "::" may appear.
_BRACKETED_HOST = re.compile(r'(?:(?<=://)|(?<=@))\[[0-9A-Fa-f:.]+\](?=[:/]|$)')
_BAD_ESCAPE = re.compile(r'%(?![0-9A-Fa-f]{2})')
_WAREHOUSE_ID = re.compile(r'[A-Za-z0-9-]{1,64}')
_SHA = re.compile(r'[0-9a-fA-F]{4,64}')
_BRANCH = re.compile(r'[A-Za-z0-9_][A-Za-z0-9._/-]{0,254}')
_PROGRESS = re.compile(r'(?:remote: *)?(?P<stage>[A-Za-z][A-Za-z ]*?): +(?P<percent>\d{1,3})%')
_CONTROL_NAMES = {'\0': 'NUL', '\t': 'tab', '\n': 'newline', '\r': 'carriage return', '\x7f': 'DEL'}
_REDIRECT = re.compile(r'returned error: (30[1278])\b')
_USERINFO = re.compile(r'(?<=://)[^/\s]*@')
# Scheme names that, followed by one colon, mean a mistyped URL rather than an scp-like `host:path`.
_URL_SCHEMES = frozenset({'http', 'https', 'git', 'ssh', 'file', 'ftp', 'ftps', 'rsync'})
# Outside variables a clone may need (a proxy, the ssh agent); every other one, GIT_* included, is dropped.
_PASSED_THROUGH = ('http_proxy', 'https_proxy', 'HTTPS_PROXY', 'no_proxy', 'NO_PROXY', 'all_proxy', 'ALL_PROXY')
_PASSED_THROUGH_SSH = ('SSH_AUTH_SOCK',)
_NOT_FOUND_MARKERS = (
    'not found', 'does not appear to be a git repository', 'does not exist', "couldn't find remote ref",
    'could not find remote branch', 'no such repository', 'returned error: 404', 'returned error: 410',
)
_UNAUTHORIZED_MARKERS = (
    'authentication failed', 'could not read username', 'could not read password', 'terminal prompts disabled',
    'returned error: 401', 'returned error: 403', 'permission denied (', 'permission to ', 'invalid username or password',
    'host key verification failed', 'unable to read askpass response',
)
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


@dataclass(frozen=True)
class RepoAddress:
    """A checked repository address: the URL git is given (never with credentials) and the credentials apart."""

    url: str
    organization: str
    name: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    is_local: bool = False


# ---------------------------------------------------------------------------------------------------------------------
# Addresses
# ---------------------------------------------------------------------------------------------------------------------

def parse_address(address: str, settings: Settings | None = None) -> RepoAddress:
    """Check an untrusted repository address and split it into a credential-free URL and credentials.

    Accepted: `https://[user:token@]host[:port]/org/.../name[.git]`; with GIT_ALLOW_SSH `ssh://user@host/org/name`
    and `user@host:org/name`; with ALLOW_LOCAL_REPOSITORIES an absolute path or `file://` URL. A lone `token@` is
    the token, sent with the username `oauth2`. Raises `InvalidRepositoryAddress` naming what is wrong.
    """
    return _parse(address, settings or get_settings(), allow_http=False)


def _parse(address: str, settings: Settings, *, allow_http: bool) -> RepoAddress:
    if not isinstance(address, str):
        raise InvalidRepositoryAddress(f'A repository address must be a string, not {type(address).__name__}; '
                                       f'for example {_example(settings)}.')
    # Only spaces are forgiven at the ends: a newline or tab in an address is a sign of a pasted or crafted value.
    text = address.strip(' ')
    if not text:
        _refuse(text, 'it is empty', settings)
    if len(text) > MAX_ADDRESS_LENGTH:
        _refuse(text, f'it is {len(text)} characters long, over the limit of {MAX_ADDRESS_LENGTH}', settings)
    if text.startswith('-'):
        _refuse(text, 'it starts with "-", which git would read as an option', settings)
    if '::' in _BRACKETED_HOST.sub('', text, count=1):
        _refuse(text, '"::" selects a git remote helper (such as ext:: or fd::), which can run commands', settings)
    bad = _first_unsafe_character(text)
    if bad is not None:
        _refuse(text, f'it contains a whitespace or control character ({_describe(bad)})', settings)
    if '\\' in text:
        _refuse(text, 'it contains a backslash', settings)
    if '://' in text:
        scheme = text.partition('://')[0].lower()
        if scheme == 'https' or (scheme == 'http' and allow_http):
            return _parse_http(text, scheme, settings)
        if scheme == 'http':
            _refuse(text, 'http:// sends credentials and code in clear text; use https://', settings)
        if scheme == 'git':
            _refuse(text, 'git:// is neither authenticated nor encrypted; use https://', settings)
        if scheme == 'ssh':
            if not settings.git_allow_ssh:
                _refuse(text, 'ssh addresses are turned off (GIT_ALLOW_SSH=false)', settings)
            return _parse_ssh_url(text, settings)
        if scheme == 'file':
            if not settings.allow_local_repositories:
                _refuse(text, 'local repositories are turned off (ALLOW_LOCAL_REPOSITORIES=false)', settings)
            return _parse_file_url(text, settings)
        _refuse(text, f'the scheme {scheme[:20]}:// is not supported; only https:// is', settings)
    if text.startswith('/'):
        if not settings.allow_local_repositories:
            _refuse(text, 'local paths are turned off (ALLOW_LOCAL_REPOSITORIES=false)', settings)
        return _parse_local(text, text, settings)
    scp = _SCP_LIKE.fullmatch(text)
    if scp and scp['host'].lower() not in _URL_SCHEMES:
        if not settings.git_allow_ssh:
            _refuse(text, 'ssh addresses (user@host:org/repo) are turned off (GIT_ALLOW_SSH=false)', settings)
        return _parse_scp(text, scp, settings)
    if scp:
        _refuse(text, 'a "/" is missing after the scheme (write https://host/org/repo)', settings)
    if settings.allow_local_repositories:
        _refuse(text, 'it is neither an https:// address nor an absolute local path (starting with "/")', settings)
    _refuse(text, 'it is not an https:// address', settings)


def _parse_http(text: str, scheme: str, settings: Settings) -> RepoAddress:
    parts = _split(text, settings)
    userinfo, at, hostport = parts.netloc.rpartition('@')
    if '@' in userinfo:
        _refuse(text, 'it has more than one "@" before the host (encode an "@" in a token as %40)', settings)
    host = _host(text, hostport, settings, allow_port=True)
    segments, org, name = _path(text, parts.path, settings)
    username, password = _credentials(text, userinfo, settings) if at else (None, None)
    return RepoAddress(url=f'{scheme}://{host}/{"/".join(segments)}', organization=org, name=name,
                       username=username, password=password, is_local=False)


def _parse_ssh_url(text: str, settings: Settings) -> RepoAddress:
    parts = _split(text, settings)
    user, at, hostport = parts.netloc.rpartition('@')
    if at:
        _check_ssh_user(text, user, settings)
    host = _host(text, hostport, settings, allow_port=True)
    segments, org, name = _path(text, parts.path, settings)
    return RepoAddress(url=f'ssh://{user}{at}{host}/{"/".join(segments)}', organization=org, name=name,
                       username=None, password=None, is_local=False)


def _parse_scp(text: str, match: re.Match, settings: Settings) -> RepoAddress:
    user = match['user']
    if user is not None:
        _check_ssh_user(text, user, settings)
    host = _host(text, match['host'], settings, allow_port=False)
    raw_path = match['path']
    segments, org, name = _path(text, raw_path if raw_path.startswith('/') else '/' + raw_path, settings)
    path = ('/' if raw_path.startswith('/') else '') + '/'.join(segments)
    return RepoAddress(url=f'{user + "@" if user else ""}{host}:{path}', organization=org, name=name,
                       username=None, password=None, is_local=False)


def _parse_file_url(text: str, settings: Settings) -> RepoAddress:
    parts = _split(text, settings)
    if parts.netloc not in ('', 'localhost'):
        _refuse(text, 'a file:// address names no host (file:///path/to/repo)', settings)
    return _parse_local(text, parts.path, settings, decode=True)


def _parse_local(text: str, raw_path: str, settings: Settings, *, decode: bool = False) -> RepoAddress:
    if not raw_path.startswith('/'):
        _refuse(text, 'a local path must be absolute (start with "/")', settings)
    _check_segments(text, raw_path.rstrip('/').split('/')[1:], settings)
    path = Path(unquote(raw_path) if decode else raw_path).resolve()
    if str(path).startswith('-') or len(path.parts) < 3:
        _refuse(text, 'a local path needs a parent directory and a repository directory', settings)
    org, name = path.parent.name.lower(), _strip_git(path.name).lower()
    for label, value in (('organization (parent directory)', org), ('repository name', name)):
        if not _SEGMENT.fullmatch(value):
            _refuse(text, f'the {label} {value!r} may only hold letters, digits, ".", "_" and "-" and not start '
                          f'with "." or "-"', settings)
    return RepoAddress(url=str(path), organization=org, name=name, username=None, password=None, is_local=True)


def _split(text: str, settings: Settings) -> SplitResult:
    try:
        parts = urlsplit(text)
    except ValueError as exc:
        _refuse(text, f'it is not a well-formed URL ({exc})', settings)
    if parts.query or parts.fragment or '?' in text or '#' in text:
        _refuse(text, 'it has a query (?) or fragment (#)', settings)
    return parts


def _host(text: str, hostport: str, settings: Settings, *, allow_port: bool) -> str:
    if hostport.startswith('['):
        literal, bracket, port = hostport[1:].partition(']')
        if not bracket:
            _refuse(text, 'its IPv6 host has no closing "]"', settings)
        try:
            host = f'[{ipaddress.IPv6Address(literal).compressed}]'
        except ValueError:
            _refuse(text, f'[{literal[:60]}] is not an IPv6 address', settings)
        if port and not port.startswith(':'):
            _refuse(text, 'text follows the IPv6 host', settings)
        port = port[1:] if port else None
    else:
        host, colon, port = hostport.partition(':')
        port = port if colon else None
        host = host.lower()
        labels = host.split('.')
        if not host or len(host) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
            _refuse(text, f'{host[:60]!r} is not a valid host name (letters, digits, "-" and ".")', settings)
        if labels[-1].isdigit() or all(_IPV4_PART.fullmatch(label) for label in labels):
            host = _ipv4_host(text, host, settings)
    if not settings.git_allow_private_hosts:
        _check_literal_host(text, host, settings)
    if port is None:
        return host
    if not allow_port:
        _refuse(text, 'an scp-like address (user@host:path) has no port; use ssh://user@host:port/path', settings)
    if not port.isascii() or not port.isdigit() or not 1 <= int(port) <= 65535:
        _refuse(text, f'the port {port[:10]!r} is not a number from 1 to 65535', settings)
    return f'{host}:{int(port)}'


def _ipv4_host(text: str, host: str, settings: Settings) -> str:
    """Return a host that is all numbers as its dotted-quad IPv4 address, or refuse it.

    The C resolver, curl and git read `2852039166`, `0251.0376.0251.0376`, `0xa9fea9fe` and `169.254.43518` as
    169.254.169.254 (inet_aton), where `ipaddress` sees no address at all: any other spelling than a.b.c.d is refused,
    and named by the address it means.
    """
    ip = _inet_aton(host)
    if ip is None:
        _refuse(text, f'{host[:60]!r} is not a valid IPv4 address', settings)
    if str(ip) == host:
        return host
    if not settings.git_allow_private_hosts and not _is_public(ip):
        _refuse(text, f'{host[:60]} is {ip}, not a public address; set GIT_ALLOW_PRIVATE_HOSTS=true to clone from '
                      f'hosts on your own network', settings)
    _refuse(text, f'{host[:60]} spells the IPv4 address {ip} in octal, hexadecimal or fewer than four parts; write it '
                  f'as {ip}', settings)


def _inet_aton(host: str) -> ipaddress.IPv4Address | None:
    """Read `host` as inet_aton does (1 to 4 parts, each decimal, 0-octal or 0x-hex); None if it is no address."""
    # Written out rather than socket.inet_aton, whose answer depends on the C library of the machine.
    parts = host.split('.')
    if not 1 <= len(parts) <= 4 or not all(_IPV4_PART.fullmatch(part) for part in parts):
        return None
    try:
        numbers = [int(part, 16) if part[:2] in ('0x', '0X') else int(part, 8) if part[0] == '0' else int(part)
                   for part in parts]
    except ValueError:  # an 8 or 9 in an octal part
        return None
    *leading, last = numbers
    if any(number > 255 for number in leading) or last >= 256 ** (4 - len(leading)):
        return None
    value = last
    for index, number in enumerate(leading):
        value |= number << (8 * (3 - index))
    return ipaddress.IPv4Address(value)


def _ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """Return the address a host spells, in any spelling git's resolver reads as one; None for a name."""
    try:
        return ipaddress.ip_address(host.strip('[]'))
    except ValueError:
        return _inet_aton(host)


def _check_literal_host(text: str, host: str, settings: Settings) -> None:
    # Named hosts are resolved and checked before each clone or fetch (check_host); these need no lookup.
    ip = _ip_literal(host)
    if ip is None and (host == 'localhost' or host.endswith('.localhost')):
        ip = ipaddress.ip_address('127.0.0.1')
    if ip is not None and not _is_public(ip):
        _refuse(text, f'{host} is not a public address; set GIT_ALLOW_PRIVATE_HOSTS=true to clone from hosts on '
                      f'your own network', settings)


def _path(text: str, raw_path: str, settings: Settings) -> tuple[list[str], str, str]:
    """Return the path's segments (as given, `.git` added to the last), the organization and the name."""
    trimmed = raw_path.rstrip('/')
    if not trimmed.startswith('/'):
        _refuse(text, 'it has no path; the path must name an organization and a repository, like /org/repo', settings)
    segments = trimmed[1:].split('/')
    _check_segments(text, segments, settings)
    if len(segments) < 2:
        _refuse(text, 'its path must have at least two segments, an organization and a repository (/org/repo)',
                settings)
    org, name = unquote(segments[-2]), _strip_git(unquote(segments[-1]))
    for label, value in (('organization', org), ('repository name', name)):
        if not _SEGMENT.fullmatch(value):
            _refuse(text, f'the {label} {value[:60]!r} may only hold letters, digits, ".", "_" and "-" and not start '
                          f'with "." or "-"', settings)
    if not unquote(segments[-1]).lower().endswith('.git'):
        segments = [*segments[:-1], segments[-1] + '.git']
    return segments, org.lower(), name.lower()


def _check_segments(text: str, segments: Sequence[str], settings: Settings) -> None:
    for segment in segments:
        if _BAD_ESCAPE.search(segment):
            _refuse(text, 'a "%" in its path is not followed by two hex digits', settings)
        decoded = unquote(segment)
        if decoded == '':
            _refuse(text, 'its path has an empty segment ("//")', settings)
        if decoded in ('.', '..'):
            _refuse(text, f'its path has a {decoded!r} segment (also refused percent-encoded, as %2e%2e)', settings)
        if _first_unsafe_character(decoded) is not None:
            _refuse(text, 'its path percent-encodes a whitespace or control character', settings)
        if '/' in decoded or '\\' in decoded:
            _refuse(text, 'its path percent-encodes a slash or backslash', settings)


def _credentials(text: str, userinfo: str, settings: Settings) -> tuple[str | None, str | None]:
    if not userinfo:
        return None, None
    user, colon, secret = userinfo.partition(':')
    if _BAD_ESCAPE.search(userinfo):
        _refuse(text, 'a "%" in its credentials is not followed by two hex digits', settings)
    username, password = unquote(user), unquote(secret)
    if _looks_like_host(username) and (not colon or password.isdigit()):
        _refuse(text, 'the part before "@" looks like a host name, but the host is the part after it '
                      '(github.com@evil.com goes to evil.com)', settings)
    if not colon:
        username, password = LONE_TOKEN_USERNAME, username
    if any(_first_unsafe_character(value) is not None for value in (username, password)):
        _refuse(text, 'its credentials percent-encode a whitespace or control character', settings)
    return username or (LONE_TOKEN_USERNAME if password else None), password or None


def _looks_like_host(value: str) -> bool:
    labels = value.split('.')
    return len(labels) > 1 and labels[-1].isalpha() and all(_HOST_LABEL.fullmatch(label) for label in labels)


def _check_ssh_user(text: str, user: str, settings: Settings) -> None:
    if ':' in user:
        _refuse(text, 'an ssh address may not carry a password; the server must accept an ssh key', settings)
    if not _SSH_USER.fullmatch(user):
        _refuse(text, 'its ssh user may only hold letters, digits, ".", "_" and "-"', settings)


def _strip_git(name: str) -> str:
    return name[:-4] if name.lower().endswith('.git') else name


def _first_unsafe_character(text: str) -> str | None:
    # Categories C* (control, format, surrogate, private, unassigned) and Z* (separators), plus the ASCII ones.
    return next((ch for ch in text if ch.isspace() or unicodedata.category(ch)[0] in 'CZ'), None)


def _describe(ch: str) -> str:
    name = _CONTROL_NAMES.get(ch) or unicodedata.name(ch, '').lower() or f'category {unicodedata.category(ch)}'
    return f'U+{ord(ch):04X}, {name}'


def _example(settings: Settings) -> str:
    examples = [_EXAMPLE]
    if settings.git_allow_ssh:
        examples.append('git@github.com:org/repo.git')
    if settings.allow_local_repositories:
        examples.append('/srv/git/org/repo')
    return ' or '.join(examples)


def _refuse(text: str, reason: str, settings: Settings) -> NoReturn:
    raise InvalidRepositoryAddress(f'Repository address {_shown(text)} is refused: {reason}. '
                                   f'Use an address like {_example(settings)}.')


def _shown(text: str, limit: int = 100) -> str:
    """Return `text` safe for a message: anything before an "@" hidden, control characters escaped, shortened."""
    scheme, sep, rest = text.partition('://')
    if not sep:
        scheme, rest = '', text
    if '@' in rest:
        rest = '***@' + rest.rpartition('@')[2]
    shown = f'{scheme}{sep}{rest}'
    return repr(shown if len(shown) <= limit else shown[:limit] + '...')


# ---------------------------------------------------------------------------------------------------------------------
# Stored credentials
# ---------------------------------------------------------------------------------------------------------------------

def encrypt_secret(plain: str, settings: Settings | None = None) -> str:
    """Encrypt a git credential for storage with a key derived from JOBS_SECRET_KEY; returns `fernet:...`."""
    if not isinstance(plain, str):
        raise TypeError(f'encrypt_secret takes a string, not {type(plain).__name__}')
    return ENCRYPTED_PREFIX + _fernet(settings or get_settings()).encrypt(plain.encode('utf-8')).decode('ascii')


def decrypt_secret(token: str, settings: Settings | None = None) -> str:
    """Decrypt a credential made by `encrypt_secret`; a wrong key or a tampered value is `RepositoryUnauthorized`."""
    fernet = _fernet(settings or get_settings())
    if not isinstance(token, str) or not token.startswith(ENCRYPTED_PREFIX):
        raise RepositoryUnauthorized(f'stored credential is not an encrypted value (no {ENCRYPTED_PREFIX} prefix)')
    try:
        return fernet.decrypt(token[len(ENCRYPTED_PREFIX):].encode('ascii')).decode('utf-8')
    except (InvalidToken, UnicodeError):
        raise RepositoryUnauthorized('stored credential cannot be decrypted with JOBS_SECRET_KEY '
                                     '(was the key changed?)') from None


def _fernet(settings: Settings) -> Fernet:
    if not settings.secret_key:
        raise SecretKeyMissing('JOBS_SECRET_KEY is not set, so git credentials cannot be stored or read; set it to a '
                               'long random value, for example JOBS_SECRET_KEY=$(python3 -c "import secrets; '
                               'print(secrets.token_urlsafe(32))").')
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO).derive(settings.secret_key.encode())
    return Fernet(base64.urlsafe_b64encode(key))


# ---------------------------------------------------------------------------------------------------------------------
# Paths under REPO_ROOT
# ---------------------------------------------------------------------------------------------------------------------

def clone_path(warehouse_id: str, settings: Settings | None = None) -> Path:
    """Return where the warehouse's clone lives: REPO_ROOT/<warehouse_id>."""
    settings = settings or get_settings()
    if not isinstance(warehouse_id, str) or not _WAREHOUSE_ID.fullmatch(warehouse_id):
        raise ValueError(f'Warehouse id {str(warehouse_id)[:80]!r} must be 1 to 64 letters, digits or "-", '
                         f'for example 3f6c2a9e-0d4b-4c1e-9a8f-2b7d5e1c0a11.')
    return _inside_root(Path(settings.repo_root).resolve() / warehouse_id, settings)


def partial_path(dest: Path) -> Path:
    """Return where a new clone of `dest` is written before it is complete: a sibling named <id>.partial."""
    return dest.with_name(dest.name + PARTIAL_SUFFIX)


def remove_clone(dest: Path, settings: Settings | None = None) -> bool:
    """Remove a clone and any unfinished clone beside it (only ever inside REPO_ROOT); True if something went.

    They leave their place at once; their files are removed in the background (see `discard`).
    """
    settings = settings or get_settings()
    removed = _remove_inside(Path(dest), settings, 'clone removed')
    return remove_partial(dest, settings) or removed


def remove_partial(dest: Path, settings: Settings | None = None) -> bool:
    """Remove what an interrupted clone into `dest` left behind; True if something was removed."""
    return _remove_inside(partial_path(Path(dest)), settings or get_settings(), 'unfinished clone removed')


def _remove_inside(path: Path, settings: Settings, what: str) -> bool:
    path = _inside_root(path, settings)
    if not os.path.lexists(path):
        return False
    discard(path, settings)
    logger.info('%s: %s', path.name, what)
    return True


def discard(path: Path, settings: Settings | None = None) -> subprocess.Popen | None:
    """Move a tree inside REPO_ROOT into REPO_ROOT/.trash at once, and remove the trash in the background.

    A rename takes no time however many files there are; their removal can take minutes, and runs in a process of its
    own, which outlives the job. What a killed removal leaves in the trash is taken by the next one (`empty_trash`).
    Returns that process, or None when there was nothing to move or it was removed here (it could not be moved).
    """
    settings = settings or get_settings()
    path = _inside_root(path, settings)
    trash = Path(settings.repo_root).resolve() / TRASH_DIR
    try:
        trash.mkdir(exist_ok=True)
        os.rename(path, _inside_root(trash, settings) / f'{path.name}.{os.urandom(6).hex()}')
    except FileNotFoundError:
        return None
    except OSError as exc:  # another file system (a mount inside REPO_ROOT): removed here, the slow way
        logger.warning('%s: cannot be moved to %s (%s); removing it in place', path, trash, exc.strerror)
        _remove_tree(path)
        return None
    return empty_trash(settings)


def empty_trash(settings: Settings | None = None) -> subprocess.Popen | None:
    """Remove everything in REPO_ROOT/.trash in a background process; return it, or None if the trash is empty."""
    settings = settings or get_settings()
    trash = Path(settings.repo_root).resolve() / TRASH_DIR
    if not os.path.lexists(trash):
        return None
    entries = [os.fspath(entry) for entry in _inside_root(trash, settings).iterdir()]
    if not entries:
        return None
    try:
        # Its own session: neither a cap killing a git process group nor a killed work horse takes it down. Two
        # removers working on one tree is harmless (ignore_errors), so every call hands it all there is.
        remover = subprocess.Popen([sys.executable, '-c', _REMOVER, *entries], stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    except OSError as exc:
        logger.warning('%s: the removal cannot be started (%s); the next removal takes it', trash, exc.strerror)
        return None
    # Held until it has ended, then reaped: a long-lived process (a worker) collects no zombies.
    _removers[:] = [process for process in _removers if process.poll() is None]
    _removers.append(remover)
    return remover


def _inside_root(dest: Path | str, settings: Settings) -> Path:
    """Return `dest` resolved, or raise ValueError unless it lies strictly inside REPO_ROOT and is no symlink."""
    root = Path(settings.repo_root).resolve()
    path = Path(dest)
    if not path.is_absolute():
        raise ValueError(f'{path} is not an absolute path inside REPO_ROOT ({root})')
    resolved = path.resolve()
    if path.is_symlink() or resolved == root or not resolved.is_relative_to(root):
        raise ValueError(f'{path} is not a directory inside REPO_ROOT ({root}); refusing to touch it')
    return resolved


def _remove_tree(path: Path) -> None:
    # rmtree never follows symlinks found inside the tree, so a checked-out link cannot redirect the removal.
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _disk_usage(path: Path, max_bytes: int | None = None, max_files: int | None = None) -> tuple[int, int]:
    """Return the bytes allocated on disk under `path` and its number of files and directories.

    Allocated blocks (as `du` counts them), not lengths: a million files of 100 bytes take 4 GB, not 100 MB. Symlinks
    are not followed; counting stops once past either limit.
    """
    allocated, files, pending = 0, 0, [os.fspath(path)]
    while pending:
        try:
            with os.scandir(pending.pop()) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            pending.append(entry.path)
                        allocated += entry.stat(follow_symlinks=False).st_blocks * 512
                        files += 1
                    except FileNotFoundError:
                        continue  # git removes temporary files while we count
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        if (max_bytes is not None and allocated > max_bytes) or (max_files is not None and files > max_files):
            break
    return allocated, files


# ---------------------------------------------------------------------------------------------------------------------
# The hardened git environment
# ---------------------------------------------------------------------------------------------------------------------

def _environment(*, home: Path, ceiling: Path, repo: Path | None, protocols: Sequence[str],
                 askpass: Path | None = None, ssh: bool = False, endpoint: Endpoint | None = None,
                 guarded: bool = False) -> dict[str, str]:
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


@contextlib.contextmanager
def _private_home() -> Iterator[tuple[Path, Path]]:
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
            env = _environment(home=repo.parent, ceiling=repo.parent, repo=repo, protocols=())
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


def _clone_dir(dest: Path | str) -> Path:
    path = Path(dest).absolute()
    if not (path / '.git').is_dir():
        raise RepositoryNotFound(f'There is no git clone at {path}.')
    return path


@contextlib.contextmanager
def _open_repo(dest: Path | str) -> Iterator[gitpython.Repo]:
    import git

    path = _clone_dir(dest)
    try:
        repo = _gitpython()[1](path)
    except (git.NoSuchPathError, git.InvalidGitRepositoryError):
        raise RepositoryNotFound(f'There is no git clone at {path}.') from None
    try:
        # GitPython's Repo reads GIT_WORK_TREE and GIT_COMMON_DIR from os.environ: never read another repository.
        if (Path(repo.working_tree_dir or '/').resolve() != path.resolve()
                or Path(repo.common_dir).resolve() != (path / '.git').resolve()):
            raise GitError(f'The clone at {path} resolves to another repository; unset GIT_WORK_TREE and '
                           f'GIT_COMMON_DIR in the worker environment.')
        yield repo
    finally:
        repo.close()


def read(dest: Path | str, *args: str, binary: bool = False, timeout: float | None = None) -> str | bytes:
    """Run one reading git command in the clone, in the hardened environment, and return its output.

    Every git command on a clone or an untrusted checkout goes through here (or `_run` for clone and fetch), so one
    policy decides what git may read: nothing of the worker's environment or configuration, no hook, no transport.
    """
    import git

    try:
        return _gitpython()[0](_clone_dir(dest)).execute(['git', *args], stdout_as_string=not binary,
                                                          kill_after_timeout=timeout)
    except git.GitCommandError as exc:
        stderr = exc.stderr.decode('utf-8', 'replace') if isinstance(exc.stderr, bytes) else str(exc.stderr or '')
        if timeout is not None and 'did not complete in' in stderr:
            raise GitError(f'git {args[0]} ran past {timeout:g} s in {dest}') from None
        stderr = re.sub(r"^\s*stderr: '|'\s*$", '', stderr)
        raise GitError(f'git {args[0]} failed in {dest}: {_last_line(stderr.splitlines(), ())}') from None


def _succeeds(dest: Path | str, *args: str) -> bool:
    """Run one git command in the clone that answers by its exit status."""
    try:
        read(dest, *args)
    except RepositoryNotFound:
        raise
    except GitError:
        return False
    return True


# ---------------------------------------------------------------------------------------------------------------------
# The host: public only, and git held to the addresses checked
# ---------------------------------------------------------------------------------------------------------------------

_DEFAULT_PORTS = {'https': 443, 'http': 80, 'ssh': 22, 'git': 9418}
_getaddrinfo = socket.getaddrinfo  # the name lookup, replaceable where there is no DNS to ask (tests)


@dataclass(frozen=True)
class Endpoint:
    """Where a network address leads: its protocol, host and port, and the addresses git is held to."""

    protocol: str
    host: str
    port: int
    addresses: tuple[str, ...] = ()  # empty: git resolves the host itself (an IP literal, or through a proxy)


def check_host(address: RepoAddress, settings: Settings | None = None) -> Endpoint:
    """Resolve the host of a network address and refuse it unless every address it has is public.

    Loopback, private, link-local (cloud metadata services), shared, reserved and multicast addresses are refused,
    unless GIT_ALLOW_PRIVATE_HOSTS is true: an address from a user must not reach the platform's own network. The
    addresses checked are returned, and git is held to them, so a second lookup cannot lead it elsewhere.
    """
    settings = settings or get_settings()
    endpoint = _endpoint(address)
    literal = _ip_literal(endpoint.host)
    proxied = literal is None and _proxied(endpoint)
    if literal is not None:
        found = [literal]
    else:
        try:
            infos = _getaddrinfo(endpoint.host, endpoint.port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            if proxied:
                return endpoint  # only the proxy can resolve it, and it decides where the connection goes
            reason = getattr(exc, 'strerror', None) or str(exc)
            raise GitError(f'The host {endpoint.host} of {address.url} cannot be resolved ({reason}); check the '
                           f'address, or this machine\'s network.') from None
        found = list(dict.fromkeys(ipaddress.ip_address(info[4][0].partition('%')[0]) for info in infos))
    if not settings.git_allow_private_hosts:
        for ip in found:
            if not _is_public(ip):
                raise InvalidRepositoryAddress(
                    f'Repository address {_shown(address.url)} is refused: {endpoint.host} is {ip}, not a public '
                    f'address. Set GIT_ALLOW_PRIVATE_HOSTS=true to clone from hosts on your own network.')
    if literal is not None or proxied:
        return endpoint
    return Endpoint(endpoint.protocol, endpoint.host, endpoint.port, tuple(str(ip) for ip in found))


def _endpoint(address: RepoAddress) -> Endpoint:
    protocol = _protocol(address)
    if '://' in address.url:
        parts = urlsplit(address.url)
        host, port = parts.hostname or '', parts.port
    else:  # scp-like: [user@]host:path
        match = _SCP_LIKE.fullmatch(address.url)
        host, port = (match['host'].strip('[]') if match else ''), None
    return Endpoint(protocol, host, port or _DEFAULT_PORTS.get(protocol, 0))


def _is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Return whether `ip` is public, and so is every IPv4 address it carries (NAT64, 6to4, Teredo, ...)."""
    # ipaddress calls 64:ff9b::a9fe:a9fe or 2002:a9fe:a9fe:: global, yet a translator or relay leads them to
    # 169.254.169.254: an IPv6 address is judged by the IPv4 addresses it embeds as well.
    if isinstance(ip, ipaddress.IPv6Address) and (ip.ipv4_mapped is not None or ip in _IPV4_TRANSLATED):
        return _is_public(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    if not ip.is_global or ip.is_multicast:
        return False
    return isinstance(ip, ipaddress.IPv4Address) or all(_is_public(inner) for inner in _embedded_ipv4(ip))


_IPV4_TRANSLATED = ipaddress.IPv6Network('::ffff:0:0:0/96')  # SIIT (RFC 2765); ::ffff:0:0/96 is ipv4_mapped
_IPV4_COMPATIBLE = ipaddress.IPv6Network('::/96')
_NAT64 = ipaddress.IPv6Network('64:ff9b::/96')
_NAT64_LOCAL = ipaddress.IPv6Network('64:ff9b:1::/48')
_NAT64_LOCAL_LENGTHS = (48, 56, 64, 96)  # the NAT64 prefix lengths (RFC 6052) that a /48 may be divided into


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """Return the IPv4 addresses that `ip` carries by any standard embedding; a tunnel or translator leads there."""
    value = int(ip)
    found = []
    if ip in _IPV4_COMPATIBLE or ip in _NAT64:
        found.append(ipaddress.IPv4Address(value & 0xFFFFFFFF))
    if ip in _NAT64_LOCAL:
        # Local use: the operator picks the prefix length, so the address is judged at every place it may sit.
        found.extend(_rfc6052(value, length) for length in _NAT64_LOCAL_LENGTHS)
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)  # the server and the (de-obfuscated) client
    if (value >> 32) & 0xFCFFFFFF == 0x5EFE:
        # ISATAP (RFC 5214): an interface id of 0000:5efe or 0200:5efe (u and g bits aside) under any /64 prefix.
        found.append(ipaddress.IPv4Address(value & 0xFFFFFFFF))
    return found


def _rfc6052(value: int, prefix_length: int) -> ipaddress.IPv4Address:
    """Return the IPv4 address that follows a NAT64 prefix of `prefix_length` bits (RFC 6052, section 2.2)."""
    bits = f'{value:0128b}'
    bits = bits[:64] + bits[72:]  # bits 64 to 71 (the "u" octet) never hold any of it
    start = prefix_length if prefix_length < 64 else prefix_length - 8
    return ipaddress.IPv4Address(int(bits[start:start + 32], 2))


def _proxied(endpoint: Endpoint) -> bool:
    from urllib.request import getproxies_environment, proxy_bypass_environment  # heavy, and rarely needed

    proxies = getproxies_environment()
    proxy = proxies.get(endpoint.protocol) or proxies.get('all')
    return bool(proxy) and endpoint.protocol in ('http', 'https') and not proxy_bypass_environment(endpoint.host)


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


# ---------------------------------------------------------------------------------------------------------------------
# Clone and fetch
# ---------------------------------------------------------------------------------------------------------------------

def sync(address: RepoAddress | str, dest: Path, branch: str | None = None, *, username: str | None = None,
         password: str | None = None, settings: Settings | None = None,
         progress: Callable[[str, int], None] | None = None) -> str:
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
    dest = _inside_root(dest, settings)
    endpoint = None if target.is_local else check_host(target, settings)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fresh = not (dest / '.git').is_dir()
    if not fresh and branch is None:
        branch = current_branch(dest)
    # A new clone is written beside `dest` and renamed into place once complete: `dest` exists only as a whole
    # clone, whenever the worker is killed. What a killed clone leaves is removed by the next try.
    partial = _inside_root(partial_path(dest), settings)
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
            run.git(['checkout', '--force', '--progress', '--no-track', '-B', branch, f'refs/remotes/origin/{branch}',
                     '--'], cwd=dest, what=f'Checking out {run.label(branch)}')
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
    checked = _parse(address.url, settings, allow_http=True)
    if checked.username or checked.password:
        raise InvalidRepositoryAddress(f'RepoAddress.url {_shown(address.url)} carries credentials; '
                                       f'pass them as username and password instead.')
    return RepoAddress(url=checked.url, organization=checked.organization, name=checked.name,
                       username=address.username, password=address.password, is_local=checked.is_local)


def _check_credentials(username: str | None, password: str | None) -> None:
    for value in (username, password):
        # A space is fine in a password; a newline would end the askpass answer early.
        if value is not None and (not isinstance(value, str) or _first_unsafe_character(value.replace(' ', ''))):
            raise InvalidRepositoryAddress('Git credentials must be strings without control characters or line '
                                           'breaks; check the stored username and token.')


def check_branch(branch: str) -> None:
    """Raise `InvalidRepositoryAddress` unless `branch` is a plain, safe branch name."""
    if (not isinstance(branch, str) or not _BRANCH.fullmatch(branch) or branch == 'HEAD' or '..' in branch
            or '//' in branch or branch.endswith(('.', '/', '.lock'))
            or any(part.startswith('.') for part in branch.split('/'))):
        raise InvalidRepositoryAddress(f'Branch name {str(branch)[:100]!r} is refused: use letters, digits, "/", '
                                       f'".", "_" and "-", for example main or release/2.0.')


def _protocol(address: RepoAddress) -> str:
    if address.is_local:
        return 'file'
    scheme, sep, _ = address.url.partition('://')
    return scheme if sep else 'ssh'


def _clone_args(address: RepoAddress, dest: Path, branch: str | None) -> list[str]:
    args = ['clone', '--no-recurse-submodules', '--single-branch', '--no-tags', '--progress', '--template=']
    if address.is_local:
        args.append('--no-local')  # go through upload-pack: never hard-link or copy the source's files directly
    if branch is not None:
        args += ['--branch', branch]
    return [*args, '--', address.url, str(dest)]


def _fetch_args(address: RepoAddress, branch: str) -> list[str]:
    # The checked URL, not the clone's configured remote: the address is the truth, whatever .git/config says.
    return ['fetch', '--no-recurse-submodules', '--no-tags', '--prune', '--progress', '--no-write-fetch-head', '--',
            address.url, f'+refs/heads/{branch}:refs/remotes/origin/{branch}']


class _Run:
    """The git processes of one sync: one deadline, one size cap, one private HOME with the askpass helper."""

    def __init__(self, address: RepoAddress, dest: Path, settings: Settings, username: str | None,
                 password: str | None, progress: Callable[[str, int], None] | None, endpoint: Endpoint | None):
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
        with _private_home() as (home, askpass):
            protocol = _protocol(self.address)
            env = _environment(home=home, ceiling=home.parent if cwd is None else self.dest.parent,
                               repo=None if cwd is None else self.dest, protocols=(protocol,), askpass=askpass,
                               ssh=protocol == 'ssh', endpoint=self.endpoint, guarded=self.guarded)
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
            process = subprocess.Popen(['git', *args], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                                       preexec_fn=limits.parent_death_signal())  # noqa: PLW1509
        except OSError as exc:
            raise GitError(f'{what} failed: git cannot be started ({exc.strerror}); is git installed?') from None
        # Known to the work horse's hard time limit, which kills this group along with itself.
        limits.child_groups.add(process.pid)
        reader = threading.Thread(target=_drain, args=(process.stderr, received), daemon=True,
                                  name=f'git-stderr-{process.pid}')
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
                    raise CloneTimeout(f'{what} took longer than GIT_CLONE_TIMEOUT ({self.timeout} s) and was '
                                       f'stopped; the clone was removed.')
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
                lines.append(_redact(line.strip(), self.secrets))
            try:
                line = received.get_nowait()
            except queue.Empty:
                return False

    def _check_size(self, process: subprocess.Popen | None, what: str) -> None:
        allocated, files = _disk_usage(self.dest, self.max_bytes, self.max_files)
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
    last = _last_line(lines, secrets)
    text = '\n'.join(lines).lower()
    if any(marker in text for marker in _UNAUTHORIZED_MARKERS):
        return RepositoryUnauthorized(f'{what} failed: the remote refused the credentials, or asked for some and '
                                      f'none were given (a private or missing repository): {last}')
    if any(marker in text for marker in _NOT_FOUND_MARKERS):
        return RepositoryNotFound(f'{what} failed: the repository or branch was not found: {last}')
    redirect = _REDIRECT.search(text)
    if redirect:
        return InvalidRepositoryAddress(
            f'{what} failed: the server redirects (HTTP {redirect[1]}) to another address, and redirects are not '
            f'followed, since nothing checked where they lead. Submit the address the repository has now (was it '
            f'renamed or moved?), or set GIT_ALLOW_PRIVATE_HOSTS=true on a private network.')
    return GitError(f'{what} failed (git exit status {status}): {last}')


def _last_line(lines: Sequence[str], secrets: Sequence[str]) -> str:
    """Return the line that best says what went wrong: the last fatal, else the last error, else the last line."""
    for prefix in ('fatal:', 'error:', ''):
        for line in reversed(lines):
            if line.lower().startswith(prefix) and line.strip():
                return _redact(line.strip(), secrets)[:500]
    return 'git gave no message'


def _redact(line: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        line = line.replace(secret, '***')
    return _USERINFO.sub('***@', line)


# ---------------------------------------------------------------------------------------------------------------------
# Reading a clone
# ---------------------------------------------------------------------------------------------------------------------

def head_commit(dest: Path) -> str:
    """Return the sha (40 hex digits) of the clone's HEAD commit."""
    return read(dest, 'rev-parse', '--verify', '--quiet', 'HEAD^{commit}').strip()


def current_branch(dest: Path) -> str:
    """Return the name of the branch checked out in the clone."""
    _clone_dir(dest)
    try:
        return read(dest, 'symbolic-ref', '--quiet', '--short', 'HEAD').strip()
    except GitError:
        raise GitError(f'The clone at {dest} has no branch checked out (a detached HEAD).') from None


def has_commit(dest: Path, sha: str) -> bool:
    """Return whether the clone holds the commit `sha`; False for anything that is not a sha."""
    _clone_dir(dest)
    sha = _sha(sha)
    return sha is not None and _succeeds(dest, 'cat-file', '-e', f'{sha}^{{commit}}')


def is_ancestor(dest: Path, old: str, new: str) -> bool:
    """Return whether `old` is an ancestor of (or equal to) `new`; False when either is unknown."""
    _clone_dir(dest)
    old, new = _sha(old), _sha(new)
    return old is not None and new is not None and _succeeds(dest, 'merge-base', '--is-ancestor', old, new)


def changed_paths(dest: Path, old: str, new: str) -> dict[str, str] | None:
    """Return {path: A/M/D/T} from `old` to `new` (a rename is D + A), or None when history was rewritten.

    None means `old` is unknown or not an ancestor of `new` (a force-push): the caller regenerates everything.
    """
    if not has_commit(dest, old) or not is_ancestor(dest, old, new):
        return None
    fields = read(dest, 'diff-tree', '-r', '-z', '--no-renames', '--name-status', _sha(old), _sha(new)).split('\0')
    changes: dict[str, str] = {}
    index = 0
    while index + 1 < len(fields) and fields[index]:
        status = fields[index][0]
        if status in 'RC':  # not with --no-renames, but a rename or copy would carry two paths
            if status == 'R':
                changes[fields[index + 1]] = 'D'
            changes[fields[index + 2]] = 'A'
            index += 3
        else:
            changes[fields[index + 1]] = status
            index += 2
    return changes


def recent_commits(dest: Path, limit: int = 20, since: str | None = None) -> list[dict]:
    """Return the newest commits of HEAD, newest first; with a known `since`, only those after it.

    Each is {'sha', 'title', 'description', 'author' (name only), 'committed_at' (naive UTC datetime)}.
    """
    if limit <= 0:
        return []
    revision = f'{_sha(since)}..HEAD' if since is not None and has_commit(dest, since) else 'HEAD'
    with _open_repo(dest) as repo:
        commits = []
        for commit in repo.iter_commits(revision, max_count=limit):
            message = commit.message if isinstance(commit.message, str) else commit.message.decode('utf-8', 'replace')
            title, _, description = message.strip().partition('\n')
            commits.append({
                'sha': commit.hexsha,
                'title': title.strip(),
                'description': description.strip(),
                'author': commit.author.name or '',
                'committed_at': datetime.fromtimestamp(commit.committed_date, timezone.utc).replace(tzinfo=None),
            })
        return commits


def _sha(value: str | None) -> str | None:
    """Return `value` as a lower-case sha, or None when it is not one; only such strings ever reach git."""
    return value.lower() if isinstance(value, str) and _SHA.fullmatch(value) else None
