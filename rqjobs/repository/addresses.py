"""Repository addresses from users: parse and check them, and hold git to the public addresses their host has.

An address is checked before git sees it: its form, its characters, its credentials apart from the URL, and its host,
which must resolve to public addresses only (no loopback, private network or cloud metadata service).
"""

from __future__ import annotations

import ipaddress
import re
import socket
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn
from urllib.parse import SplitResult, unquote, urlsplit

from rqjobs.exceptions import GitError, InvalidRepositoryAddress
from rqjobs.settings import Settings, get_settings

MAX_ADDRESS_LENGTH = 2048
# A lone `token@` in an https address is a token; git hosts accept a token with any username, GitLab wants this one.
LONE_TOKEN_USERNAME = 'oauth2'
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
_CONTROL_NAMES = {'\0': 'NUL', '\t': 'tab', '\n': 'newline', '\r': 'carriage return', '\x7f': 'DEL'}
# Scheme names that, followed by one colon, mean a mistyped URL rather than an scp-like `host:path`.
_URL_SCHEMES = frozenset({'http', 'https', 'git', 'ssh', 'file', 'ftp', 'ftps', 'rsync'})


@dataclass(frozen=True)
class RepoAddress:
    """A checked repository address: the URL git is given (never with credentials) and the credentials apart."""

    url: str
    organization: str
    name: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    is_local: bool = False


def parse_address(address: str, settings: Settings | None = None, *, allow_http: bool = False) -> RepoAddress:
    """Check an untrusted repository address and split it into a credential-free URL and credentials.

    Accepted: `https://[user:token@]host[:port]/org/.../name[.git]`; with GIT_ALLOW_SSH `ssh://user@host/org/name`
    and `user@host:org/name`; with ALLOW_LOCAL_REPOSITORIES an absolute path or `file://` URL. A lone `token@` is
    the token, sent with the username `oauth2`. Raises `InvalidRepositoryAddress` naming what is wrong. `allow_http`
    also accepts `http://`, for an address already stored (a local test server).
    """
    return _parse(address, settings or get_settings(), allow_http=allow_http)


def _parse(address: str, settings: Settings, *, allow_http: bool) -> RepoAddress:
    if not isinstance(address, str):
        raise InvalidRepositoryAddress(
            f'A repository address must be a string, not {type(address).__name__}; for example {_example(settings)}.'
        )
    # Only spaces are forgiven at the ends: a newline or tab in an address is a sign of a pasted or crafted value.
    text = address.strip(' ')
    _check_text(text, settings)
    if '://' in text:
        return _parse_url(text, settings, allow_http=allow_http)
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


def _check_text(text: str, settings: Settings) -> None:
    # What refuses an address whatever its form.
    if not text:
        _refuse(text, 'it is empty', settings)
    if len(text) > MAX_ADDRESS_LENGTH:
        _refuse(text, f'it is {len(text)} characters long, over the limit of {MAX_ADDRESS_LENGTH}', settings)
    if text.startswith('-'):
        _refuse(text, 'it starts with "-", which git would read as an option', settings)
    if '::' in _BRACKETED_HOST.sub('', text, count=1):
        _refuse(text, '"::" selects a git remote helper (such as ext:: or fd::), which can run commands', settings)
    bad = first_unsafe_character(text)
    if bad is not None:
        _refuse(text, f'it contains a whitespace or control character ({_describe(bad)})', settings)
    if '\\' in text:
        _refuse(text, 'it contains a backslash', settings)


def _parse_url(text: str, settings: Settings, *, allow_http: bool) -> RepoAddress:
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


def _parse_http(text: str, scheme: str, settings: Settings) -> RepoAddress:
    parts = _split(text, settings)
    userinfo, at, hostport = parts.netloc.rpartition('@')
    if '@' in userinfo:
        _refuse(text, 'it has more than one "@" before the host (encode an "@" in a token as %40)', settings)
    host = _host(text, hostport, settings, allow_port=True)
    segments, org, name = _path(text, parts.path, settings)
    username, password = _credentials(text, userinfo, settings) if at else (None, None)
    return RepoAddress(
        url=f'{scheme}://{host}/{"/".join(segments)}',
        organization=org,
        name=name,
        username=username,
        password=password,
        is_local=False,
    )


def _parse_ssh_url(text: str, settings: Settings) -> RepoAddress:
    parts = _split(text, settings)
    user, at, hostport = parts.netloc.rpartition('@')
    if at:
        _check_ssh_user(text, user, settings)
    host = _host(text, hostport, settings, allow_port=True)
    segments, org, name = _path(text, parts.path, settings)
    return RepoAddress(
        url=f'ssh://{user}{at}{host}/{"/".join(segments)}',
        organization=org,
        name=name,
        username=None,
        password=None,
        is_local=False,
    )


def _parse_scp(text: str, match: re.Match, settings: Settings) -> RepoAddress:
    user = match['user']
    if user is not None:
        _check_ssh_user(text, user, settings)
    host = _host(text, match['host'], settings, allow_port=False)
    raw_path = match['path']
    segments, org, name = _path(text, raw_path if raw_path.startswith('/') else '/' + raw_path, settings)
    path = ('/' if raw_path.startswith('/') else '') + '/'.join(segments)
    return RepoAddress(
        url=f'{user + "@" if user else ""}{host}:{path}',
        organization=org,
        name=name,
        username=None,
        password=None,
        is_local=False,
    )


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
            _refuse(
                text,
                f'the {label} {value!r} may only hold letters, digits, ".", "_" and "-" and not start with "." or "-"',
                settings,
            )
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
        _refuse(
            text,
            f'{host[:60]} is {ip}, not a public address; set GIT_ALLOW_PRIVATE_HOSTS=true to clone from '
            f'hosts on your own network',
            settings,
        )
    _refuse(
        text,
        f'{host[:60]} spells the IPv4 address {ip} in octal, hexadecimal or fewer than four parts; write it as {ip}',
        settings,
    )


def _inet_aton(host: str) -> ipaddress.IPv4Address | None:
    """Read `host` as inet_aton does (1 to 4 parts, each decimal, 0-octal or 0x-hex); None if it is no address."""
    # Written out rather than socket.inet_aton, whose answer depends on the C library of the machine.
    parts = host.split('.')
    if not 1 <= len(parts) <= 4 or not all(_IPV4_PART.fullmatch(part) for part in parts):
        return None
    try:
        numbers = [
            int(part, 16) if part[:2] in ('0x', '0X') else int(part, 8) if part[0] == '0' else int(part)
            for part in parts
        ]
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
        _refuse(
            text,
            f'{host} is not a public address; set GIT_ALLOW_PRIVATE_HOSTS=true to clone from hosts on your own network',
            settings,
        )


def _path(text: str, raw_path: str, settings: Settings) -> tuple[list[str], str, str]:
    """Return the path's segments (as given, `.git` added to the last), the organization and the name."""
    trimmed = raw_path.rstrip('/')
    if not trimmed.startswith('/'):
        _refuse(text, 'it has no path; the path must name an organization and a repository, like /org/repo', settings)
    segments = trimmed[1:].split('/')
    _check_segments(text, segments, settings)
    if len(segments) < 2:
        _refuse(
            text, 'its path must have at least two segments, an organization and a repository (/org/repo)', settings
        )
    org, name = unquote(segments[-2]), _strip_git(unquote(segments[-1]))
    for label, value in (('organization', org), ('repository name', name)):
        if not _SEGMENT.fullmatch(value):
            _refuse(
                text,
                f'the {label} {value[:60]!r} may only hold letters, digits, ".", "_" and "-" and not start '
                f'with "." or "-"',
                settings,
            )
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
        if first_unsafe_character(decoded) is not None:
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
        _refuse(
            text,
            'the part before "@" looks like a host name, but the host is the part after it '
            '(github.com@evil.com goes to evil.com)',
            settings,
        )
    if not colon:
        username, password = LONE_TOKEN_USERNAME, username
    if any(first_unsafe_character(value) is not None for value in (username, password)):
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


def first_unsafe_character(text: str) -> str | None:
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
    raise InvalidRepositoryAddress(
        f'Repository address {shown_text(text)} is refused: {reason}. Use an address like {_example(settings)}.'
    )


def shown_text(text: str, limit: int = 100) -> str:
    """Return `text` safe for a message: anything before an "@" hidden, control characters escaped, shortened."""
    scheme, sep, rest = text.partition('://')
    if not sep:
        scheme, rest = '', text
    if '@' in rest:
        rest = '***@' + rest.rpartition('@')[2]
    shown = f'{scheme}{sep}{rest}'
    return repr(shown if len(shown) <= limit else shown[:limit] + '...')


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
            raise GitError(
                f'The host {endpoint.host} of {address.url} cannot be resolved ({reason}); check the '
                f"address, or this machine's network."
            ) from None
        found = list(dict.fromkeys(ipaddress.ip_address(info[4][0].partition('%')[0]) for info in infos))
    if not settings.git_allow_private_hosts:
        for ip in found:
            if not _is_public(ip):
                raise InvalidRepositoryAddress(
                    f'Repository address {shown_text(address.url)} is refused: {endpoint.host} is {ip}, not a public '
                    f'address. Set GIT_ALLOW_PRIVATE_HOSTS=true to clone from hosts on your own network.'
                )
    if literal is not None or proxied:
        return endpoint
    return Endpoint(endpoint.protocol, endpoint.host, endpoint.port, tuple(str(ip) for ip in found))


def _endpoint(address: RepoAddress) -> Endpoint:
    protocol = protocol_of(address)
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
    return ipaddress.IPv4Address(int(bits[start : start + 32], 2))


def _proxied(endpoint: Endpoint) -> bool:
    from urllib.request import getproxies_environment, proxy_bypass_environment  # heavy, and rarely needed

    proxies = getproxies_environment()
    proxy = proxies.get(endpoint.protocol) or proxies.get('all')
    return bool(proxy) and endpoint.protocol in ('http', 'https') and not proxy_bypass_environment(endpoint.host)


def protocol_of(address: RepoAddress) -> str:
    if address.is_local:
        return 'file'
    scheme, sep, _ = address.url.partition('://')
    return scheme if sep else 'ssh'
