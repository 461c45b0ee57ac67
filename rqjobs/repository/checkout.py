"""Reading an untrusted checkout: git's tracked entries, then each file opened without following a symlink."""

from __future__ import annotations

import errno
import logging
import os
import stat
from pathlib import Path
from typing import Self

from rqjobs.exceptions import PermanentJobError
from rqjobs.repository import runner

logger = logging.getLogger(__name__)

MAX_FILE_SIZE = 1_000_000  # bytes; larger files are skipped as 'too_large' without being read
MAX_DEPTH = 128  # path components; deeper files are 'unreadable' (each level holds a directory descriptor)
BINARY_SAMPLE = 8192  # bytes looked at to tell binary from text
GIT_TIMEOUT = 300  # seconds `git ls-files` may take


def tracked_files(checkout: Path) -> list[tuple[bytes, str]]:
    """Return git's tracked entries of a checkout as (raw path bytes, mode), in git's (byte) order."""
    checkout = Path(checkout).absolute()
    if not os.path.lexists(checkout / '.git'):
        raise PermanentJobError(f'{checkout} is not a git checkout (it has no .git); clone the repository first.')
    # The same hardened runner as the clone's: the checkout is as untrusted as the repository it came from.
    # With -z, paths come verbatim (core.quotepath does not apply), and --stage never looks at untracked files.
    output = runner.read(checkout, 'ls-files', '-z', '--stage', binary=True, timeout=GIT_TIMEOUT)
    entries, seen = [], set()
    for record in output.split(b'\0'):
        head, tab, path = record.partition(b'\t')
        if not tab:
            continue
        if path in seen:  # a merge conflict lists one path once per stage
            continue
        seen.add(path)
        entries.append((path, head.split(b' ', 1)[0].decode('ascii', 'replace')))
    return entries


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO planted in the working tree must not hang the job (it is then refused as not a regular file).
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_BAD_COMPONENTS = frozenset((b'', b'.', b'..'))


def _maybe_bad(raw_path: bytes) -> bool:
    """Cheap test that may hold a bad component: an empty one, or one starting with "." (".", "..", ".git")."""
    return not raw_path or raw_path[0] in b'/.' or raw_path.endswith(b'/') or b'//' in raw_path or b'/.' in raw_path


class CheckoutReader:
    """Reads tracked files of a checkout, never following a symlink nor leaving it; use it as a context manager.

    Directories are opened component by component relative to the checkout with O_NOFOLLOW and kept open while
    consecutive paths share them (git lists paths sorted, so each directory is opened once per visit).
    """

    def __init__(self, checkout: Path) -> None:
        self._root = os.open(checkout, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._names: list[bytes] = []
        self._fds: list[int] = []

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._drop(0)
        if self._root >= 0:
            os.close(self._root)
            self._root = -1

    def _drop(self, keep: int) -> None:
        while len(self._fds) > keep:
            os.close(self._fds.pop())
            self._names.pop()

    def read(self, raw_path: bytes, limit: int = MAX_FILE_SIZE) -> tuple[bytes | None, str | None]:
        """Return (content, None), or (None, reason) with reason 'symlink', 'too_large' or 'unreadable'."""
        parts = raw_path.split(b'/')
        if len(parts) > MAX_DEPTH or (
            _maybe_bad(raw_path) and any(part in _BAD_COMPONENTS or part.lower() == b'.git' for part in parts)
        ):
            return None, 'unreadable'
        directories, names = parts[:-1], self._names
        keep = 0
        while keep < len(names) and keep < len(directories) and names[keep] == directories[keep]:
            keep += 1
        self._drop(keep)
        parent = self._fds[-1] if self._fds else self._root
        for name in directories[keep:]:
            try:
                opened = os.open(name, _DIR_FLAGS, dir_fd=parent)
            except OSError as exc:
                return None, 'symlink' if _is_symlink(name, parent) else _open_failure(raw_path, exc)
            parent = opened
            self._fds.append(parent)
            names.append(name)
        try:
            fd = os.open(parts[-1], _FILE_FLAGS, dir_fd=parent)
        except OSError as exc:
            return None, _open_failure(raw_path, exc)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                return None, 'unreadable'
            if info.st_size > limit:
                return None, 'too_large'
            data = os.read(fd, info.st_size + 1)
            if len(data) < info.st_size:  # a short read (rare on regular files): read on up to the limit
                chunks, total = [data], len(data)
                while total <= limit:
                    chunk = os.read(fd, 1 << 16)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    total += len(chunk)
                data = b''.join(chunks)
            if len(data) > limit:
                return None, 'too_large'
            return data, None
        except OSError as exc:
            return None, _open_failure(raw_path, exc)
        finally:
            os.close(fd)


def _is_symlink(name: bytes, directory: int) -> bool:
    # O_DIRECTORY | O_NOFOLLOW on a symlink fails with ENOTDIR on Linux, as for a file: look without following.
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=directory, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _open_failure(raw_path: bytes, exc: OSError) -> str:
    if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a symlink where git's index has a file or directory
        return 'symlink'
    logger.debug('%s: not readable (%s)', raw_path.decode('utf-8', 'replace'), exc.strerror)
    return 'unreadable'


# Bytes that occur in text: printable ASCII, common whitespace and control (\b \t \n \f \r ESC), and all high bytes.
_TEXT_BYTES = bytes(range(0x20, 0x7F)) + b'\b\t\n\f\r\x1b' + bytes(range(0x80, 0x100))


def decode_text(data: bytes) -> str | None:
    """Return the text of a file's bytes, or None when they look binary."""
    if data.find(b'\0', 0, BINARY_SAMPLE) != -1:
        return None
    try:
        return data.decode('utf-8')
    except UnicodeDecodeError:
        sample = data[:BINARY_SAMPLE]
        if len(sample.translate(None, _TEXT_BYTES)) * 10 > len(sample) * 3:
            return None
        return data.decode('utf-8', 'replace')


def count_lines(data: bytes) -> int:
    """Return the number of lines of a file, a last line without its newline included."""
    return data.count(b'\n') + (1 if data and not data.endswith(b'\n') else 0)
